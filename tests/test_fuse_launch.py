"""The launch side of fused sweeps (`[sweep] fuse`, `hpcdiff sweep --fuse K`): which runs of
a sweep go out together, what the dry run says, the command and the job of a group, and the
sbatch script of one; a local sweep and a SLURM job that train fused groups for real."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from hpcdiff.cli import main
from hpcdiff.config.spec import SlurmSpec, SpecError
from hpcdiff.launch.child import child_command
from hpcdiff.launch.job import PackedTrainJob, TrainJob
from hpcdiff.launch.plan import dry_run_report, plan_sweep
from hpcdiff.launch.sbatch import render, write_for_sweep
from hpcdiff.launch.slurm import pack, task_job
from hpcdiff.storage.rundir import RunDir, sweep_run_dirs, write_run_config

from helpers import TINY_BASE, cli, fabricate_status

WIDTH = 80


def cases(*lrs) -> str:
    """Runs of the narrow network at these learning rates (they fuse)."""
    return "".join(f'[[sweep.cases]]\nlabel = "narrow"\ntrain = {{ lr = {lr} }}\n' for lr in lrs)


AXES = cases(1e-3, 2e-3, 3e-3, 4e-3)
# A wider network cannot join them.
WIDE = '[[sweep.cases]]\nlabel = "wide"\nmodel = { hidden = [16, 16] }\n'


def sweep_file(tmp_path, *, fuse=None, wide=True, slurm="", root="/nonexistent", subset=10, name="f") -> Path:
    path = tmp_path / f"{name}.toml"
    head = f'[sweep]\nname = "{name}"\n' + (f"fuse = {fuse}\n" if fuse is not None else "")
    path.write_text(head + AXES + (WIDE if wide else "") + TINY_BASE.format(root=root, subset=subset, epochs=1) + slurm)
    return path


def dry(path, tmp_path, *extra):
    """`hpcdiff sweep PATH --dry-run` in an 80-column terminal, from ``tmp_path`` (a short
    relative --output keeps the title short)."""
    import os

    here = os.getcwd()
    os.chdir(tmp_path)
    try:
        return CliRunner(env={"COLUMNS": str(WIDTH)}).invoke(
            main, ["sweep", str(path), "--dry-run", "--output", "runs", *map(str, extra)]
        )
    finally:
        os.chdir(here)


def write_dirs(plan) -> dict[str, RunDir]:
    """The plan's run directories written as `hpcdiff sweep` writes them, trained by nobody."""
    dirs = {}
    for run in plan.sweep.runs:
        rd = RunDir(plan.sweep_dir / run.run_id)
        write_run_config(rd, run.spec, run_id=run.run_id, sweep=plan.sweep.name, axes=run.axes, label=run.label)
        dirs[run.run_id] = rd
    return dirs


# ------------------------------------------------------------------ [sweep] fuse and --fuse


@pytest.mark.parametrize("value", ["0", "-2", "2.5", '"4"', "true", "[2]"])
def test_a_bad_fuse_is_refused_naming_key_and_file_with_nothing_written(tmp_path, value):
    path = sweep_file(tmp_path, fuse=value)
    result = CliRunner().invoke(main, ["sweep", str(path), "--executor", "local", "--output", str(tmp_path / "runs")])
    assert result.exit_code == 2, result.output
    assert "sweep.fuse" in result.output and str(path) in result.output and "integer >= 1" in result.output
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("args", [["--fuse", "0"], ["--fuse", "two"], ["--set", "sweep.fuse=0"]])
def test_a_bad_fuse_on_the_command_line_exits_2_and_writes_nothing(tmp_path, args):
    result = CliRunner().invoke(
        main, ["sweep", str(sweep_file(tmp_path)), "--executor", "local", "--output", str(tmp_path / "runs"), *args]
    )
    assert result.exit_code == 2, result.output
    assert "fuse" in result.output
    assert not (tmp_path / "runs").exists()


def test_the_command_line_overrides_the_file_and_fuse_is_no_part_of_a_run_id(tmp_path):
    path = sweep_file(tmp_path, fuse=4)
    plan = plan_sweep(path, output=tmp_path / "runs", executor="local")
    assert plan.fuse == 4 and [len(g) for g in plan.fusion.groups] == [4, 1]
    off = plan_sweep(path, output=tmp_path / "runs", fuse=1, executor="local")
    assert off.fuse == 1 and off.fusion.fused == []
    assert plan_sweep(path, output=tmp_path / "runs", overrides=["sweep.fuse=2"]).fuse == 2
    ids = [r.run_id for r in plan.sweep.runs]
    assert ids == [r.run_id for r in plan_sweep(sweep_file(tmp_path, fuse=None), output=tmp_path / "runs").sweep.runs]
    with pytest.raises(SpecError, match="--fuse"):
        plan_sweep(path, output=tmp_path / "runs", fuse=0)


# ------------------------------------------------------------------ which runs go together


def test_the_dry_run_shows_the_groups_and_why_a_run_is_alone_in_80_columns(tmp_path):
    result = dry(sweep_file(tmp_path), tmp_path, "--executor", "local", "--fuse", "3")
    assert result.exit_code == 0, result.output
    out = result.output
    assert all(len(line) <= WIDTH for line in out.splitlines()), out
    plan = plan_sweep(sweep_file(tmp_path), output=tmp_path / "runs", fuse=3, executor="local")
    narrow = [r.run_id for r in plan.sweep.runs if r.label == "narrow"]
    (wide,) = [r.run_id for r in plan.sweep.runs if r.label == "wide"]
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line[:10] in {*narrow, wide}}
    assert [rows[rid][-1] for rid in narrow] == ["1", "1", "1", "alone"] and rows[wide][-1] == "alone"
    assert "fuse = 3: 5 runs to train in 3 processes: 1 fused group (3 runs), 2 alone:" in out
    assert "its group filled up (3 members each)" in out
    text = " ".join(out.split())  # the reasons are wrapped to the width
    assert f"{wide} differs from every other run in what members must share (from {narrow[0]} in model.hidden)" in text
    assert not (tmp_path / "runs").exists()
    # Fusion off (the default): the table of before, no group column.
    plain = dry(sweep_file(tmp_path), tmp_path, "--executor", "local").output
    assert "group" not in plain and "fuse" not in plain


def test_runs_asking_for_several_processes_or_gpus_train_alone(tmp_path):
    path = sweep_file(tmp_path, fuse=8, wide=False)
    local = plan_sweep(path, output=tmp_path / "runs", executor="local", processes=2)
    assert local.fusion.fused == [] and set(local.fusion.alone.values()) == {
        "fused groups train in one process (2 processes per run asked)"
    }
    out = dry(path, tmp_path, "--executor", "local", "--processes", "2").output
    assert "(2 processes per run asked)" in out and "no fused group" in out
    gpus = sweep_file(tmp_path, fuse=8, wide=False, slurm="[slurm]\ngpus_per_node = 2\n", name="g")
    on_slurm = plan_sweep(gpus, output=tmp_path / "runs", executor="slurm")
    assert set(on_slurm.fusion.alone.values()) == {"fused groups train in one process (2 processes per run asked)"}
    one_task = sweep_file(tmp_path, fuse=8, wide=False, slurm="[slurm]\ngpus_per_node = 2\ntasks_per_node = 1\n")
    assert set(plan_sweep(one_task, output=tmp_path / "runs", executor="slurm").fusion.alone.values()) == {
        "fused groups train on one device (2 GPUs per run asked)"
    }
    # Locally each run is one process whatever its [slurm] section says: they fuse.
    assert [len(g) for g in plan_sweep(gpus, output=tmp_path / "runs", executor="local").fusion.groups] == [4]
    # Not knowing the executor, every rule applies.
    assert plan_sweep(gpus, output=tmp_path / "runs").fusion.fused == []
    debug = plan_sweep(path, output=tmp_path / "runs", executor="debug")
    assert debug.fusion.fused == [] and "debug executor" in next(iter(debug.fusion.alone.values()))


def test_finished_and_skipped_runs_never_join_a_group(tmp_path):
    path = sweep_file(tmp_path, fuse=4, wide=False)
    plan = plan_sweep(path, output=tmp_path / "runs", executor="local")
    dirs = write_dirs(plan)
    ids = list(dirs)
    fabricate_status(dirs[ids[0]], state="done")
    fabricate_status(dirs[ids[1]], state="diverged")
    again = plan_sweep(path, output=tmp_path / "runs", executor="local")
    assert [pr.action for pr in again.runs] == ["skip-done", "skip-diverged", "resume", "resume"]
    assert again.fusion.groups == [ids[2:]]
    assert [[rd.run_id for rd in g] for g in again.launch_groups()] == [ids[2:]]
    # --force reruns the finished one (its results moved aside) and resumes the diverged one.
    forced = plan_sweep(path, output=tmp_path / "runs", executor="local", force=True)
    assert forced.fusion.groups == [ids]
    # Everything finished: nothing to group, nothing to say about fusion.
    for rd in dirs.values():
        fabricate_status(rd, state="done")
    done = plan_sweep(path, output=tmp_path / "runs", executor="local")
    assert done.fusion.groups == [] and done.launch_groups() == []
    out = dry(path, tmp_path, "--executor", "local").output
    assert "0 to launch" in out and "fuse =" not in out


def test_fusion_off_launches_every_run_alone_in_sweep_order(tmp_path):
    plan = plan_sweep(sweep_file(tmp_path), output=tmp_path / "runs", executor="local")
    assert [[rd.run_id] for rd in (pr.run_dir for pr in plan.to_launch)] == [
        [rd.run_id for rd in g] for g in plan.launch_groups()
    ]


# ------------------------------------------------------------------ a group's command and job


def test_child_command_of_a_group_is_one_train_process_over_its_dirs(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b c"
    assert child_command(a) == [sys.executable, "-m", "hpcdiff", "train", "--no-progress", str(a)]
    assert child_command([a]) == child_command(a)  # a group of one is the plain command
    assert child_command([a, b], hpcdiff=["hpcdiff"]) == ["hpcdiff", "train", "--no-progress", str(a), str(b)]
    with pytest.raises(ValueError, match="one process"):
        child_command([a, b], processes=2)
    with pytest.raises(ValueError):
        child_command([])


def test_slurm_tasks_are_groups_and_a_requeue_keeps_the_unfinished_members(tmp_path):
    s = SlurmSpec(gpus_per_node=1, runs_per_gpu=2)
    a, b, c = (RunDir(tmp_path / n) for n in "abc")
    for rd in (a, b, c):
        rd.path.mkdir()
    assert pack([[a, b], [c]], 2) == [[[a, b], [c]]]
    assert isinstance(task_job([[a]], s), TrainJob) and isinstance(task_job([a], s), TrainJob)
    assert task_job([[a], [b]], s).groups is None  # packed runs, as before
    job = task_job([[a, b], [c]], s)
    assert isinstance(job, PackedTrainJob)
    assert job.run_dirs == [str(a.path), str(b.path), str(c.path)]
    assert job.groups == [[str(a.path), str(b.path)], [str(c.path)]]
    assert "groups=" in repr(job)
    fabricate_status(a, state="done")
    fabricate_status(c, state="diverged")
    fabricate_status(b, state="timeout")
    after = job.checkpoint().function
    assert after.groups == [[str(b.path)]] and after.run_dirs == [str(b.path)]
    single = task_job([[a, b]], SlurmSpec(gpus_per_node=1))  # one group, one task
    assert single.groups == [[str(a.path), str(b.path)]]
    old = PackedTrainJob([str(a.path)])  # pickled before fused groups: no `groups` attribute
    del old.__dict__["groups"]
    assert old.checkpoint().function.groups is None


def test_the_slurm_dry_run_counts_tasks_by_group(tmp_path):
    slurm = "[slurm]\ngpus_per_node = 1\ntime_min = 60\n"
    path = sweep_file(tmp_path, fuse=2, slurm=slurm)
    report = dry_run_report(plan_sweep(path, output=tmp_path / "runs", executor="slurm"))
    assert report.runs == 5 and report.tasks == 3 and report.gpu_hours == 3.0 and report.gpu_hours_unpacked == 5.0
    assert "#SBATCH --array=0-2%" in report.scripts[0]
    assert report.packing == ["fusion: 5 runs -> 3 array tasks (fuse = 2): 3.0 GPU-hours instead of 5.0, 2.0 saved"]
    packed = sweep_file(tmp_path, fuse=2, slurm=slurm + "runs_per_gpu = 2\n", name="p")
    report = dry_run_report(plan_sweep(packed, output=tmp_path / "runs", executor="slurm"))
    assert report.tasks == 2 and report.packing == [
        "fusion and packing: 5 runs -> 3 processes (fuse = 2) -> 2 array tasks of up to 2 processes each "
        "(slurm.runs_per_gpu): 2.0 GPU-hours instead of 5.0, 3.0 saved"
    ]
    shown = dry(path, tmp_path, "--executor", "slurm").output
    assert "GPU-hours requested: 3.0 (3 array tasks" in shown and "fusion: 5 runs -> 3 array tasks" in shown
    assert not (tmp_path / "runs").exists()


# ------------------------------------------------------------------ sbatch scripts of groups

FAKE_TRAIN = """#!/bin/bash
# Stands in for `hpcdiff`: records its arguments, marks each run directory done.
shift 2  # train --no-progress
# One write per call: the processes of a task run at once, and two writes each would interleave.
line=$(printf '%s|' "$@"); echo "$line" >> "{calls}"
for d in "$@"; do echo '{{"state": "done"}}' > "$d/status.json"; done
"""


@pytest.mark.parametrize("runs_per_gpu", [1, 2])
def test_sbatch_script_runs_one_process_per_group(tmp_path, runs_per_gpu):
    """The rendered script run by bash for each array task, with a stand-in `hpcdiff` that
    records how it is called: one call per group, with the group's run directories (a space
    in a path included)."""
    groups = [[str(tmp_path / "r 0"), str(tmp_path / "r1"), str(tmp_path / "r2")], [str(tmp_path / "r3")]]
    groups.append([str(tmp_path / "r4"), str(tmp_path / "r5")])
    for d in (d for g in groups for d in g):
        Path(d).mkdir()
    calls = tmp_path / "calls"
    fake = tmp_path / "fake-hpcdiff"
    fake.write_text(FAKE_TRAIN.format(calls=calls))
    fake.chmod(0o755)
    s = SlurmSpec(gpus_per_node=1, runs_per_gpu=runs_per_gpu, cpus_per_task=6)
    script = render("gpu", s, job_name="j", run_dirs=[], log_dir="l", hpcdiff=str(fake), groups=groups)
    tasks = -(-len(groups) // runs_per_gpu)
    assert f"#SBATCH --array=0-{tasks - 1}%" in script and "#SBATCH --signal=B:USR2@120" in script
    assert "srun" not in script and "GROUP_SIZE=(3 1 2)" in script
    path = tmp_path / "job.sh"
    path.write_text(script)
    for task in range(tasks):
        env = {
            "SLURM_ARRAY_TASK_ID": str(task),
            "SLURM_JOB_ID": "9",
            "SLURM_CPUS_PER_TASK": "6",
            "PATH": "/usr/bin:/bin",
        }
        done = subprocess.run(["bash", str(path)], env=env, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        mine = groups[task * runs_per_gpu : (task + 1) * runs_per_gpu]
        assert f"runs of this task: {' '.join(d for g in mine for d in g)}: " in done.stdout
    got = sorted(line.rstrip("|").split("|") for line in calls.read_text().splitlines())
    assert got == sorted(groups)
    assert all(json.loads((Path(d) / "status.json").read_text())["state"] == "done" for g in groups for d in g)
    # The threads of each process: the task's CPUs shared by its groups.
    head = script[: script.index('stop=""')]
    body = head[head.index("RUN_DIRS=") :]
    out = subprocess.run(
        ["bash", "-c", body + 'echo "$OMP_NUM_THREADS ${#TASK_GROUPS[@]} ${#TASK_RUNS[@]}"'],
        capture_output=True,
        text=True,
        env={"SLURM_ARRAY_TASK_ID": "0", "SLURM_CPUS_PER_TASK": "6", "PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.split() == (["3", "2", "4"] if runs_per_gpu == 2 else ["6", "1", "3"])


def test_sbatch_script_without_fused_groups_is_unchanged(tmp_path):
    s = SlurmSpec(gpus_per_node=1, runs_per_gpu=2)
    dirs = ["/r/0", "/r/1", "/r/2"]
    plain = render("gpu", s, job_name="j", run_dirs=dirs, log_dir="l")
    assert render("gpu", s, job_name="j", run_dirs=dirs, log_dir="l", groups=[[d] for d in dirs]) == plain
    one = SlurmSpec(gpus_per_node=1)
    assert render("gpu", one, job_name="j", run_dirs=dirs, log_dir="l", groups=[[d] for d in dirs]) == render(
        "gpu", one, job_name="j", run_dirs=dirs, log_dir="l"
    )


def test_hpcdiff_sbatch_writes_the_sweep_files_groups(tmp_path):
    path = sweep_file(tmp_path, fuse=4, slurm="[slurm]\ncpus_per_task = 2\n")
    (script,) = write_for_sweep(path, template="cpu", output=tmp_path / "runs")
    text = script.read_text()
    plan = plan_sweep(path, output=tmp_path / "runs", executor="slurm")
    assert "GROUP_SIZE=(4 1)" in text and "#SBATCH --array=0-1%" in text
    first = [str(rd.path.absolute()) for rd in plan.launch_groups()[0]]
    assert text.index(first[0]) < text.index(first[-1])  # a group's runs side by side
    assert subprocess.run(["bash", "-n", str(script)]).returncode == 0


# ------------------------------------------------------------------ training fused groups


@pytest.mark.slow
def test_local_sweep_trains_fused_groups_and_reports_each_run(tiny_sweep, tmp_path):
    """A fused group of three learning rates and a wider network alone, `-j 2`: every run
    ends done in its own directory; rerunning trains nothing."""
    sweep = tiny_sweep('[sweep]\nname = "fused"\nfuse = 3\n' + cases(1e-3, 2e-3, 3e-3) + WIDE, epochs=1)
    out = tmp_path / "runs"
    result = cli("sweep", sweep, "--executor", "local", "--output", out, "-j", "2", COLUMNS="100")
    assert result.exit_code == 0, result.output
    assert "fuse = 3: 4 runs to train in 2 processes: 1 fused group (3 runs), 1 alone:" in result.output
    assert "local: launched 4 runs" in result.output and not re.search(r"[1-9]\d* failed", result.output)
    runs = sweep_run_dirs(out / "fused")
    assert len(runs) == 4 and all(rd.read_status()["state"] == "done" for rd in runs)
    plan = plan_sweep(sweep, output=out, executor="local")
    assert all(pr.action == "skip-done" for pr in plan.runs) and plan.fusion.groups == []
    group = [g for g in plan_sweep(sweep, output=out, executor="local", force=True).fusion.groups if len(g) > 1][0]
    assert "trained in a fused group" in (out / "fused" / group[1] / "stdout.txt").read_text()
    again = cli("sweep", sweep, "--executor", "local", "--output", out)
    assert "Nothing to do" in again.output


@pytest.mark.slurm
def test_slurm_fused_group_is_one_task_and_every_member_records_its_job(slurm_env, tmp_path):
    from test_slurm import wait_until_ended, write_sweep

    sweep = write_sweep(tmp_path, "fusedslurm", axes="fuse = 2\n[sweep.product]\ntrain.lr = [1e-3, 2e-3, 3e-3]\n")
    out = tmp_path / "runs"
    result = cli("sweep", sweep, "--output", out)
    assert result.exit_code == 0, result.output
    assert "slurm: launched 3 runs" in result.output and "(2 tasks: fused groups)" in result.output
    jobs = {rd.run_id: rd.read_status()["job_id"] for rd in sweep_run_dirs(out / "fusedslurm")}
    assert sorted(list(jobs.values()).count(j) for j in set(jobs.values())) == [1, 2]
    rows = wait_until_ended(out / "fusedslurm", 3, timeout=300)
    assert [r.state for r in rows] == ["done"] * 3
