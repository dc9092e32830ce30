"""Plain sbatch templates: shipped examples stay in step, values are validated or quoted,
and a rendered script is accepted by the real test cluster."""

import subprocess
from pathlib import Path

import pytest

from hpcdiff.launch.sbatch import TEMPLATES, check_csd3, example, render, write_for_sweep
from hpcdiff.config.spec import RunSpec, SlurmSpec, SpecError

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("template", TEMPLATES)
def test_shipped_templates_are_the_rendered_examples(template):
    text = (ROOT / "slurm" / f"{template}.sbatch").read_text()
    assert text == example(template)
    assert subprocess.run(["bash", "-n", str(ROOT / "slurm" / f"{template}.sbatch")]).returncode == 0


def test_csd3_rules():
    ok = SlurmSpec(account="P-SL3-GPU", gpus_per_node=4, nodes=2, time_min=600)
    check_csd3(ok)
    for bad, key in [(SlurmSpec(account="P-SL3-GPU", gpus_per_node=5), "gpus_per_node"),
                     (SlurmSpec(account="P-SL3-GPU", gpus_per_node=2, nodes=2), "gpus_per_node"),
                     (SlurmSpec(account="P-SL3-GPU", gpus_per_node=1, time_min=13 * 60), "time_min"),
                     (SlurmSpec(account="P-SL2-GPU", gpus_per_node=1, time_min=37 * 60), "time_min"),
                     (SlurmSpec(gpus_per_node=1), "account")]:
        with pytest.raises(SpecError, match=key):
            check_csd3(bad)
    check_csd3(SlurmSpec(account="P-SL2-GPU", gpus_per_node=1, time_min=36 * 60))


def test_run_dir_with_metacharacters_is_quoted(tmp_path):
    marker = tmp_path / "pwned"
    weird = f"/tmp/runs $(touch {marker})/abc"
    script = render("cpu", SlurmSpec(), job_name="x", run_dirs=[weird], log_dir=weird)
    # Run the script's assignment lines in bash: the value must arrive verbatim.
    line = next(l for l in script.splitlines() if l.startswith("RUN_DIR="))
    out = subprocess.run(["bash", "-c", f'{line}\nprintf %s "$RUN_DIR"'], capture_output=True, text=True)
    assert out.stdout == weird and not marker.exists()


@pytest.mark.slurm
def test_rendered_sweep_script_passes_sbatch_test_only(slurm_env, tmp_path, fashion_dir):
    sweep = tmp_path / "hand.toml"
    sweep.write_text(f'[sweep]\nname = "hand"\n[sweep.product]\ntrain.lr = [1e-3, 2e-3]\n'
                     f'[data]\nname = "idx"\nroot = "{fashion_dir}"\nsubset = 200\n[train]\nepochs = 1\n'
                     f'[slurm]\ncpus_per_task = 1\ntime_min = 5\n')
    (path,) = write_for_sweep(sweep, template="cpu", output=tmp_path / "runs")
    text = path.read_text()
    assert "#SBATCH --array=0-1%2" in text and text.count("/runs/hand/") >= 2
    out = subprocess.run(["sbatch", "--test-only", str(path)], capture_output=True, text=True)
    assert out.returncode == 0 and "to start at" in (out.stdout + out.stderr)


def test_runs_with_different_slurm_sections_get_one_script_each(tmp_path, fashion_dir):
    """Cases with their own time limits (a slow and a fast model) x two learning rates."""
    sweep = tmp_path / "mixed.toml"
    sweep.write_text(f'[sweep]\nname = "mixed"\n[sweep.product]\ntrain.lr = [1e-3, 2e-3]\n'
                     f'[[sweep.cases]]\nlabel = "wide"\nmodel = {{ hidden = [32, 32] }}\nslurm = {{ time_min = 90 }}\n'
                     f'[[sweep.cases]]\nlabel = "narrow"\nmodel = {{ hidden = [8, 8] }}\nslurm = {{ time_min = 30 }}\n'
                     f'[data]\nname = "idx"\nroot = "{fashion_dir}"\n[slurm]\ncpus_per_task = 1\n')
    paths = write_for_sweep(sweep, template="cpu", output=tmp_path / "runs")
    assert [p.name for p in paths] == ["cpu-1.sbatch", "cpu-2.sbatch"]
    times = sorted(next(l for l in p.read_text().splitlines() if l.startswith("#SBATCH --time=")) for p in paths)
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
