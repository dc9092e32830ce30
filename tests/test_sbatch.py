"""Plain sbatch templates: shipped examples stay in step, values are validated or quoted,
and a rendered script is accepted by the real test cluster."""

import subprocess
import time
from pathlib import Path

import pytest

from hpcdiff.config.spec import SlurmSpec, SpecError
from hpcdiff.launch.sbatch import EXAMPLES, check_csd3, example, render, write_for_sweep

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("template", EXAMPLES)
def test_shipped_templates_are_the_rendered_examples(template):
    text = (ROOT / "slurm" / f"{template}.sbatch").read_text()
    assert text == example(template)
    assert subprocess.run(["bash", "-n", str(ROOT / "slurm" / f"{template}.sbatch")]).returncode == 0


def test_csd3_rules():
    ok = SlurmSpec(account="P-SL3-GPU", gpus_per_node=4, nodes=2, time_min=600)
    check_csd3(ok)
    for bad, key in [
        (SlurmSpec(account="P-SL3-GPU", gpus_per_node=5), "gpus_per_node"),
        (SlurmSpec(account="P-SL3-GPU", gpus_per_node=2, nodes=2), "gpus_per_node"),
        (SlurmSpec(account="P-SL3-GPU", gpus_per_node=1, time_min=13 * 60), "time_min"),
        (SlurmSpec(account="P-SL2-GPU", gpus_per_node=1, time_min=37 * 60), "time_min"),
        (SlurmSpec(gpus_per_node=1), "account"),
    ]:
        with pytest.raises(SpecError, match=key):
            check_csd3(bad)
    check_csd3(SlurmSpec(account="P-SL2-GPU", gpus_per_node=1, time_min=36 * 60))


def test_run_dir_with_metacharacters_is_quoted(tmp_path):
    marker = tmp_path / "pwned"
    weird = f"/tmp/runs $(touch {marker})/abc"
    script = render("cpu", SlurmSpec(), job_name="x", run_dirs=[weird], log_dir=weird)
    # Run the script's assignment lines in bash: the value must arrive verbatim.
    line = next(ln for ln in script.splitlines() if ln.startswith("RUN_DIR="))
    out = subprocess.run(["bash", "-c", f'{line}\nprintf %s "$RUN_DIR"'], capture_output=True, text=True)
    assert out.stdout == weird and not marker.exists()


@pytest.mark.slurm
def test_rendered_sweep_script_passes_sbatch_test_only(slurm_env, tmp_path, fashion_dir):
    sweep = tmp_path / "hand.toml"
    sweep.write_text(
        f'[sweep]\nname = "hand"\n[sweep.product]\ntrain.lr = [1e-3, 2e-3]\n'
        f'[data]\nname = "idx"\nroot = "{fashion_dir}"\nsubset = 200\n[train]\nepochs = 1\n'
        f"[slurm]\ncpus_per_task = 1\ntime_min = 5\n"
    )
    (path,) = write_for_sweep(sweep, template="cpu", output=tmp_path / "runs")
    text = path.read_text()
    assert "#SBATCH --array=0-1%2" in text and text.count("/runs/hand/") >= 2
    out = subprocess.run(["sbatch", "--test-only", str(path)], capture_output=True, text=True)
    assert out.returncode == 0 and "to start at" in (out.stdout + out.stderr)


def test_runs_with_different_slurm_sections_get_one_script_each(tmp_path, fashion_dir):
    """Cases with their own time limits (a slow and a fast model) x two learning rates."""
    sweep = tmp_path / "mixed.toml"
    sweep.write_text(
        f'[sweep]\nname = "mixed"\n[sweep.product]\ntrain.lr = [1e-3, 2e-3]\n'
        f'[[sweep.cases]]\nlabel = "wide"\nmodel = {{ hidden = [32, 32] }}\nslurm = {{ time_min = 90 }}\n'
        f'[[sweep.cases]]\nlabel = "narrow"\nmodel = {{ hidden = [8, 8] }}\nslurm = {{ time_min = 30 }}\n'
        f'[data]\nname = "idx"\nroot = "{fashion_dir}"\n[slurm]\ncpus_per_task = 1\n'
    )
    paths = write_for_sweep(sweep, template="cpu", output=tmp_path / "runs")
    assert [p.name for p in paths] == ["cpu-1.sbatch", "cpu-2.sbatch"]
    times = sorted(next(ln for ln in p.read_text().splitlines() if ln.startswith("#SBATCH --time=")) for p in paths)
    assert times == ["#SBATCH --time=00:30:00", "#SBATCH --time=01:30:00"]
    for p in paths:  # each array holds the two learning rates of its case
        assert "#SBATCH --array=0-1%" in p.read_text()


@pytest.mark.parametrize("gpus,tasks,expected", [(4, 0, 4), (0, 0, 1), (4, 1, 1), (0, 3, 3)])
def test_one_process_per_gpu_unless_told_otherwise(gpus, tasks, expected):
    """A job asking for 4 GPUs runs 4 ranks, in the submitit backend and the templates alike
    (one process would leave 3 of the GPUs idle)."""
    from hpcdiff.launch.slurm import executor_parameters

    s = SlurmSpec(gpus_per_node=gpus, tasks_per_node=tasks, partition="p")
    assert executor_parameters(s, "j")["ntasks_per_node"] == expected
    template = "gpu" if gpus else "cpu"
    script = render(template, s, job_name="j", run_dirs=["r"], log_dir="l")
    assert f"#SBATCH --ntasks-per-node={expected}" in script


@pytest.mark.parametrize("runs,k,tasks", [(8, 4, 2), (5, 2, 3), (2, 2, 1)])
def test_packed_script_runs_k_per_task(runs, k, tasks, tmp_path):
    s = SlurmSpec(gpus_per_node=1, runs_per_gpu=k, cpus_per_task=8)
    dirs = [f"/r/{i}" for i in range(runs)]
    script = render("gpu", s, job_name="j", run_dirs=dirs, log_dir="l")
    assert (f"#SBATCH --array=0-{tasks - 1}%{min(16, tasks)}" in script) == (tasks > 1)
    assert "#SBATCH --signal=B:USR2@120" in script and "srun" not in script  # the shell passes it on
    assert "nvidia-cuda-mps-control" not in script
    # Each array task's slice of the runs, as bash computes it.
    path = tmp_path / "s.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    head = script[: script.index("stop=")]
    body = head[head.index("RUN_DIRS=") :]
    for task in range(tasks):
        out = subprocess.run(
            ["bash", "-c", body + 'printf "%s\\n" "${TASK_RUNS[@]}"; echo "$OMP_NUM_THREADS"'],
            capture_output=True,
            text=True,
            env={"SLURM_ARRAY_TASK_ID": str(task), "SLURM_CPUS_PER_TASK": "8", "PATH": "/usr/bin:/bin"},
        )
        *got, threads = out.stdout.split()
        assert got == dirs[task * k : (task + 1) * k] and int(threads) == 8 // len(got)
    with_mps = render(
        "gpu", SlurmSpec(gpus_per_node=1, runs_per_gpu=k, mps=True), job_name="j", run_dirs=dirs, log_dir="l"
    )
    assert 'MPS_DIR="${TMPDIR:-/tmp}/hpcdiff-mps-$SLURM_JOB_ID"' in with_mps
    assert 'CUDA_MPS_PIPE_DIRECTORY="$MPS_DIR/pipe"' in with_mps and 'hpcdiff_private_dir "$MPS_DIR"' in with_mps
    assert "echo quit | nvidia-cuda-mps-control" in with_mps


@pytest.mark.slurm
def test_packed_sbatch_script_trains_both_runs_and_isolates_a_failure(slurm_env, tmp_path, fashion_dir):
    """The written script, submitted with plain sbatch on the real cluster: one task, two
    runs at once; the broken one fails, its partner finishes, the task exits 1."""
    sweep = tmp_path / "handpack.toml"
    sweep.write_text(
        f'[sweep]\nname = "handpack"\n'
        f'[[sweep.cases]]\nlabel = "ok"\n[[sweep.cases]]\nlabel = "broken"\n'
        f'data = {{ root = "/nonexistent/fashion" }}\n'
        f'[data]\nname = "idx"\nroot = "{fashion_dir}"\nsubset = 200\n[model]\nhidden = [8, 8]\n'
        f"[diffusion]\nn_T = 20\n[train]\nepochs = 1\nbatch_size = 64\n"
        f"[eval]\nmetrics = []\nreconstruction = false\n"
        f"[slurm]\ncpus_per_task = 1\ntime_min = 5\nruns_per_gpu = 2\n"
    )
    (path,) = write_for_sweep(sweep, template="cpu", output=tmp_path / "runs")
    assert "#SBATCH --array" not in path.read_text()  # 2 runs, one task
    job = subprocess.run(["sbatch", "--parsable", str(path)], capture_output=True, text=True, check=True).stdout.strip()
    deadline = time.monotonic() + 300
    while job in subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split():
        assert time.monotonic() < deadline, "the packed job did not end"
        time.sleep(1)
    from hpcdiff.launch.status import collect_status

    rows = {r.label: r for r in collect_status(tmp_path / "runs" / "handpack")[1]}
    logs = "".join(p.read_text() for p in (tmp_path / "runs" / "handpack" / "slurm").glob("*.out"))
    assert rows["ok"].state == "done", logs
    assert rows["broken"].state == "failed" and "DataError" in rows["broken"].error
    assert rows["ok"].job_id == job  # (the broken run failed before it could record one)
    assert "done failed" in logs or "failed done" in logs
