"""Plain sbatch scripts for users who submit by hand (`hpcdiff sbatch`).

The same job as the submitit backend, written out: each task runs `hpcdiff train RUN_DIR`;
SLURM's USR2 warning makes it checkpoint and stop, and the script then requeues itself
(bounded by max_requeues). With ``slurm.runs_per_gpu = K`` each task trains K runs at
once (with ``[sweep] fuse``, K fused groups, each one `hpcdiff train DIR1 DIR2 ...`; a fused
group alone is a task of one such process) as background processes of the batch shell, which takes the warning itself
(``--signal=B:USR2``), passes it on, waits for all and requeues when any stopped in state
"timeout" (hpcdiff.launch.packed does the same for the submitit backend). The files in
slurm/ are these templates rendered with placeholder values (a test keeps them in step).

Every value that reaches a script is either validated by SlurmSpec (no shell
metacharacters) or quoted with shlex.quote.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from hpcdiff.config.catalog import SBATCH_TEMPLATES
from hpcdiff.config.registry import Registry
from hpcdiff.config.spec import SlurmSpec, SpecError
from hpcdiff.launch.child import SHELL_PRIVATE_DIR, shell_command, shell_prelude
from hpcdiff.storage.runstate import RunState

TEMPLATES = SBATCH_TEMPLATES
# The shell's view of the states it acts on (storage/runstate.py owns them).
STATE_NAMES = {s.value: s.value for s in (RunState.TIMEOUT, RunState.FAILED, RunState.DIVERGED)}

_REQUEUE = """\
# Stopped by the time-limit warning (state "timeout")? Requeue: the next start resumes
# from the checkpoint written before stopping.
state=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["state"])' "$RUN_DIR/status.json")
if [ "$state" = "{timeout}" ] && [ "${{SLURM_RESTART_COUNT:-0}}" -lt {max_requeues} ]; then
    scontrol requeue "$SLURM_JOB_ID"
fi
"""


def _hhmmss(minutes: int) -> str:
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def check_csd3(s: SlurmSpec) -> None:
    """Wilkes3 (ampere) rules: 1-4 GPUs per node, all 4 when a job spans nodes; 36 h at
    most (12 h on the SL3 service level)."""
    if not 1 <= s.gpus_per_node <= 4:
        raise SpecError(f"CSD3 ampere nodes have 1-4 GPUs, got {s.gpus_per_node}", path="slurm.gpus_per_node")
    if s.nodes > 1 and s.gpus_per_node != 4:
        raise SpecError("a CSD3 job on several nodes must use all 4 GPUs of each", path="slurm.gpus_per_node")
    limit = 12 * 60 if s.account.upper().endswith("-SL3-GPU") else 36 * 60
    if s.time_min > limit:
        raise SpecError(
            f"{s.time_min} min exceeds CSD3's {limit // 60} h limit for account {s.account!r}", path="slurm.time_min"
        )
    if not s.account:
        raise SpecError("CSD3 needs an account such as MYPROJECT-SL3-GPU", path="slurm.account")


def render(
    template: str,
    s: SlurmSpec,
    *,
    job_name: str,
    run_dirs: list[str],
    log_dir: str,
    hpcdiff: str | None = None,
    groups: list[list[str]] | None = None,
) -> str:
    """One script: a single run, or a job array over ``run_dirs`` (one per task, or
    ``slurm.runs_per_gpu`` per task, trained at once). ``groups``: ``run_dirs`` partitioned
    into fused groups (``[sweep] fuse``), each one process of a task, ``slurm.runs_per_gpu``
    groups per task; groups of one each are the plain runs."""
    if template not in TEMPLATES:
        raise SpecError(f"unknown template {template!r}; valid: {', '.join(TEMPLATES)}")
    if template == "csd3-ampere":
        check_csd3(s)
    hpcdiff = hpcdiff or f"{shlex.quote(sys.executable)} -m hpcdiff"
    if groups is not None and all(len(g) == 1 for g in groups):
        groups = None
    if groups is not None:
        run_dirs = [d for g in groups for d in g]
    tasks = -(-(len(run_dirs) if groups is None else len(groups)) // s.runs_per_gpu)
    lines = _directives(template, s, job_name, tasks, log_dir, background=s.packed or groups is not None)
    lines += ["", "set -euo pipefail"]
    if template == "csd3-ampere":
        lines += [". /etc/profile.d/modules.sh", "module purge", "module load rhel8/default-amp"]
    lines += list(s.setup)
    lines.append("")
    if s.packed or groups is not None:
        return "\n".join(lines + _packed_body(s, run_dirs, hpcdiff, groups))
    if len(run_dirs) > 1:
        lines.append("RUN_DIRS=(" + " ".join(shlex.quote(d) for d in run_dirs) + ")")
        lines.append('RUN_DIR="${RUN_DIRS[$SLURM_ARRAY_TASK_ID]}"')
    else:
        lines.append(f"RUN_DIR={shlex.quote(run_dirs[0])}")
    lines += [
        "",
        f'srun --kill-on-bad-exit=1 {hpcdiff} train --no-progress "$RUN_DIR"',
        "",
        _REQUEUE.format(max_requeues=s.max_requeues, **STATE_NAMES),
    ]
    return "\n".join(lines)


def _directives(template: str, s: SlurmSpec, job_name: str, tasks: int, log_dir: str, background: bool) -> list[str]:
    lines = ["#!/bin/bash", f"#SBATCH --job-name={shlex.quote(job_name)}"]
    if s.account:
        lines.append(f"#SBATCH --account={s.account}")
    partition = "ampere" if template == "csd3-ampere" else s.partition
    if partition:
        lines.append(f"#SBATCH --partition={partition}")
    if s.qos:
        lines.append(f"#SBATCH --qos={s.qos}")
    lines += [f"#SBATCH --nodes={s.nodes}", f"#SBATCH --time={_hhmmss(s.time_min)}"]
    if template != "cpu":
        lines.append(f"#SBATCH --gres=gpu:{max(1, s.gpus_per_node)}")
    # One task per GPU unless set otherwise: Accelerate binds rank i to GPU i of its node.
    lines += [f"#SBATCH --ntasks-per-node={s.tasks}", f"#SBATCH --cpus-per-task={s.cpus_per_task}"]
    if s.mem_gb:
        lines.append(f"#SBATCH --mem={s.mem_gb}G")
    if s.constraint:
        lines.append(f"#SBATCH --constraint={shlex.quote(s.constraint)}")
    if s.mail_user:
        lines += [f"#SBATCH --mail-user={s.mail_user}", f"#SBATCH --mail-type={s.mail_type or 'END,FAIL'}"]
    # Packed runs and fused groups are the batch shell's own children (no srun step): it
    # takes the warning (B:) and passes it on.
    lines += [
        f"#SBATCH --signal={'B:' if background else ''}USR2@{s.signal_delay_s}",
        "#SBATCH --requeue",
        f"#SBATCH --output={shlex.quote(log_dir + '/%x-%A_%a.out' if tasks > 1 else log_dir + '/%x-%j.out')}",
    ]
    if tasks > 1:
        lines.append(f"#SBATCH --array=0-{tasks - 1}%{min(s.array_parallelism, tasks)}")
    return lines + [f"#SBATCH {line}" for line in s.extra_sbatch]


# The directory and variables of hpcdiff.launch.mps, in shell.
_MPS = (
    SHELL_PRIVATE_DIR
    + """# NVIDIA MPS, private to this job (mode 0700; the job stops if someone else made the
# directory first): the runs' kernels share the GPU at once.
MPS_DIR="${TMPDIR:-/tmp}/hpcdiff-mps-$SLURM_JOB_ID"
hpcdiff_private_dir "$MPS_DIR"
export CUDA_MPS_PIPE_DIRECTORY="$MPS_DIR/pipe" CUDA_MPS_LOG_DIRECTORY="$MPS_DIR/log"
hpcdiff_private_dir "$CUDA_MPS_PIPE_DIRECTORY"
hpcdiff_private_dir "$CUDA_MPS_LOG_DIRECTORY"
nvidia-cuda-mps-control -d || echo "hpcdiff: MPS did not start; the runs share the GPU without it" >&2
trap 'echo quit | nvidia-cuda-mps-control || true; rm -rf "$MPS_DIR"' EXIT
"""
)

_PACKED = """{select}{prelude}{mps}stop=""
trap '' USR2 TERM
{loop}trap 'stop=USR2; kill -USR2 $(jobs -pr) 2>/dev/null || true' USR2
trap 'stop=${{stop:-TERM}}; kill -TERM $(jobs -pr) 2>/dev/null || true' TERM
while [ -n "$(jobs -pr)" ]; do
    if [ -z "$stop" ]; then wait -n || true; else kill -"$stop" $(jobs -pr) 2>/dev/null || true; sleep 1; fi
done

# Any run stopped by the time-limit warning (state "timeout")? Requeue: the next start
# resumes each from its own checkpoint (finished runs return at once). Any failed: exit 1.
states=$(python3 -c 'import json, sys; print(*(json.load(open(d + "/status.json"))["state"] for d in sys.argv[1:]))' \
    "${{TASK_RUNS[@]}}")
echo "runs of this task: ${{TASK_RUNS[*]}}: $states"
if [[ " $states " == *" {timeout} "* ]] && [ "${{SLURM_RESTART_COUNT:-0}}" -lt {max_requeues} ]; then
    scontrol requeue "$SLURM_JOB_ID"
elif [[ " $states " == *" {failed} "* || " $states " == *" {diverged} "* ]]; then
    exit 1
fi
"""
# Which runs a packed task trains, and how it starts them: one process per run...
_RUNS = """# {k} runs at once, one process each, sharing this task's GPU and CPUs; one failing does not
# stop the others. Stop signals are passed on (again every second: a process that has not
# yet set up its handler ignores them, as it is started ignoring them).
K={k}
TASK_RUNS=("${{RUN_DIRS[@]:$(( ${{SLURM_ARRAY_TASK_ID:-0}} * K )):K}}")
# Each run's environment, as hpcdiff.launch.child.child_env makes it.
"""
_RUNS_LOOP = """for RUN_DIR in "${{TASK_RUNS[@]}}"; do
    {command} &
done
"""
# ... or one process per fused group: group g is RUN_DIRS[GROUP_START[g]] and the
# GROUP_SIZE[g] - 1 runs after it, trained by one `hpcdiff train DIR1 DIR2 ...`.
_GROUPS = """# Up to {k} fused group(s) at once, one `hpcdiff train DIR1 DIR2 ...` process each (its
# runs trained as one batched model), sharing this task's GPU and CPUs; one failing does not
# stop the others. Stop signals are passed on (again every second: a process that has not
# yet set up its handler ignores them, as it is started ignoring them).
GROUP_START=({starts})
GROUP_SIZE=({sizes})
K={k}
FIRST=$(( ${{SLURM_ARRAY_TASK_ID:-0}} * K ))
TASK_GROUPS=()
TASK_RUNS=()
for (( g = FIRST; g < FIRST + K && g < ${{#GROUP_START[@]}}; g++ )); do
    TASK_GROUPS+=("$g")
    TASK_RUNS+=("${{RUN_DIRS[@]:${{GROUP_START[$g]}}:${{GROUP_SIZE[$g]}}}}")
done
# Each process's environment, as hpcdiff.launch.child.child_env makes it.
"""
_GROUPS_LOOP = """for g in "${{TASK_GROUPS[@]}}"; do
    {command} &
done
"""


def _packed_body(s: SlurmSpec, run_dirs: list[str], hpcdiff: str, groups: list[list[str]] | None = None) -> list[str]:
    """Runs packed ``slurm.runs_per_gpu`` per task, or fused ``groups`` (lists of run
    directories, in the order of ``run_dirs``) packed that many per task."""
    if groups is None:
        select = _RUNS.format(k=s.runs_per_gpu)
        loop = _RUNS_LOOP.format(command=shell_command(hpcdiff))
        prelude = shell_prelude()
    else:
        starts = [sum(len(g) for g in groups[:i]) for i in range(len(groups))]
        select = _GROUPS.format(
            k=s.runs_per_gpu, starts=" ".join(map(str, starts)), sizes=" ".join(str(len(g)) for g in groups)
        )
        members = '"${RUN_DIRS[@]:${GROUP_START[$g]}:${GROUP_SIZE[$g]}}"'
        loop = _GROUPS_LOOP.format(command=shell_command(hpcdiff, members))
        prelude = shell_prelude("TASK_GROUPS")
    return [
        "RUN_DIRS=(" + " ".join(shlex.quote(d) for d in run_dirs) + ")",
        "",
        _PACKED.format(
            **STATE_NAMES,
            select=select,
            loop=loop,
            prelude=prelude,
            max_requeues=s.max_requeues,
            mps=_MPS + "\n" if s.mps else "",
        ),
    ]


# Each template's example [slurm] section (the shipped slurm/<template>.sbatch).
PLACEHOLDERS: Registry[SlurmSpec] = Registry("sbatch template", declared=TEMPLATES)
PLACEHOLDERS.register("csd3-ampere")(
    SlurmSpec(account="MYPROJECT-SL3-GPU", time_min=720, gpus_per_node=4, cpus_per_task=8, array_parallelism=8)
)
PLACEHOLDERS.register("gpu")(SlurmSpec(partition="gpu", time_min=720, gpus_per_node=1, cpus_per_task=8, mem_gb=32))
PLACEHOLDERS.register("cpu")(SlurmSpec(partition="cpu", time_min=720, cpus_per_task=4, mem_gb=8))
PLACEHOLDERS.seal()
# Shipped examples beyond the templates themselves: name -> (template, [slurm] section, runs).
PACKED_EXAMPLES = {
    "gpu-packed": (
        "gpu",
        SlurmSpec(partition="gpu", time_min=720, gpus_per_node=1, cpus_per_task=8, mem_gb=32, runs_per_gpu=4, mps=True),
        8,
    )
}
EXAMPLES = (*TEMPLATES, *PACKED_EXAMPLES)


def example(name: str) -> str:
    """The file shipped as slurm/<name>.sbatch."""
    template, spec, n = PACKED_EXAMPLES[name] if name in PACKED_EXAMPLES else (name, PLACEHOLDERS.get(name), 2)
    return render(
        template,
        spec,
        job_name="hpcdiff-part2",
        run_dirs=[f"runs/part2/RUN_ID_{i}" for i in range(1, n + 1)],
        log_dir="runs/part2/slurm",
        hpcdiff="hpcdiff",
    )


def write_for_sweep(sweep_file: str | Path, *, template: str, output: str | Path = "runs", overrides=()) -> list[Path]:
    """Write the sweep's run directories (as `hpcdiff sweep` would, launching nothing) and
    an array script over the unfinished ones; returns the scripts' paths. Runs whose
    [slurm] sections differ (a sweep axis over slurm.time_min, say) get one script each,
    as the submitit backend gives them one array each."""
    from hpcdiff.launch.plan import plan_sweep
    from hpcdiff.storage.rundir import update_manifest, write_run_config

    if template not in TEMPLATES:
        raise SpecError(f"unknown template {template!r}; valid: {', '.join(TEMPLATES)}")
    plan = plan_sweep(sweep_file, output=output, overrides=overrides, executor="slurm")
    runs = {r.run_id: r for r in plan.sweep.runs}
    if not plan.to_launch:
        raise SpecError("every run of this sweep is finished or queued: nothing to submit")
    # The runs to submit by [slurm] section, fused group by fused group ([sweep] fuse).
    groups: dict[SlurmSpec, list[list[str]]] = {}
    for group in plan.launch_groups():
        dirs = [str(rd.path.absolute()) for rd in group]
        groups.setdefault(runs[group[0].run_id].spec.slurm, []).append(dirs)
    if template == "csd3-ampere":  # before anything is written
        for slurm in groups:
            check_csd3(slurm)
    update_manifest(plan.sweep_dir, plan.sweep, Path(sweep_file).read_text())
    for pr in plan.runs:
        run = runs[pr.run_dir.run_id]
        write_run_config(pr.run_dir, run.spec, run_id=run.run_id, sweep=plan.sweep.name, axes=run.axes, label=run.label)
    # Scripts of an earlier call name runs that may since have been submitted: gone, so
    # that only the current set can be submitted.
    for old in [plan.sweep_dir / f"{template}.sbatch", *plan.sweep_dir.glob(f"{template}-[0-9]*.sbatch")]:
        old.unlink(missing_ok=True)
    log_dir = plan.sweep_dir.absolute() / "slurm"
    log_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, (slurm, section) in enumerate(groups.items(), start=1):
        suffix = f"-{k}" if len(groups) > 1 else ""
        script = render(
            template,
            slurm,
            job_name=f"hpcdiff-{plan.sweep.name}{suffix}",
            run_dirs=[d for g in section for d in g],
            log_dir=str(log_dir),
            groups=section,
        )
        path = plan.sweep_dir / f"{template}{suffix}.sbatch"
        path.write_text(script)
        paths.append(path)
    return paths
