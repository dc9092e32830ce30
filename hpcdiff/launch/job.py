"""What a SLURM job runs: a picklable, checkpointable call of ``train(run_dir)`` (or, with
``slurm.runs_per_gpu > 1`` or fused groups, of several runs at once: ``PackedTrainJob``).

submitit pickles this object, runs it on the compute node and, when SLURM warns that the
job is about to hit its time limit or is preempted (USR2), asks ``checkpoint()`` for what to
run after the requeue. The answer holds only the run directory: the requeued job resumes
from the latest complete checkpoint found on disk, never from state pickled at submission.
"""

from __future__ import annotations


class TrainJob:
    def __init__(self, run_dir: str):
        self.run_dir = str(run_dir)

    def __call__(self) -> str:
        from hpcdiff.training.loop import train

        return train(self.run_dir)

    def checkpoint(self, *args, **kwargs):
        # train() has already written a checkpoint at a batch boundary before handing the
        # signal on to submitit, which calls this and then requeues the job.
        from submitit.helpers import DelayedSubmission

        return DelayedSubmission(TrainJob(self.run_dir))

    def __repr__(self) -> str:
        return f"TrainJob({self.run_dir!r})"


class PackedTrainJob:
    """Several runs in one task (``slurm.runs_per_gpu``): one `hpcdiff train` process each,
    sharing the task's GPU (hpcdiff.launch.packed). With ``groups`` (fused groups, lists of
    the run directories), one `hpcdiff train DIR1 DIR2 ...` process per group instead."""

    def __init__(self, run_dirs: list[str], mps: bool = False, groups: list[list[str]] | None = None):
        self.run_dirs = [str(d) for d in run_dirs]
        self.mps = mps
        self.groups = [[str(d) for d in g] for g in groups] if groups is not None else None

    def __call__(self) -> dict:
        from hpcdiff.launch.packed import run_packed

        return run_packed(self.run_dirs, mps=self.mps, groups=getattr(self, "groups", None))

    def checkpoint(self, *args, **kwargs):
        # Every process has stopped by now (checkpoint written, state "timeout"); the
        # requeued task restarts the runs that are not over, each from its own checkpoint
        # (a fused group with its unfinished members only).
        from submitit.helpers import DelayedSubmission

        from hpcdiff.launch.packed import unfinished

        groups = getattr(self, "groups", None)  # a job pickled before fused groups has none
        if groups is not None:
            left = [g for g in (unfinished(g) for g in groups) if g]
            if left:
                return DelayedSubmission(PackedTrainJob([d for g in left for d in g], self.mps, left))
            return DelayedSubmission(PackedTrainJob(self.run_dirs, self.mps, groups))
        return DelayedSubmission(PackedTrainJob(unfinished(self.run_dirs) or self.run_dirs, self.mps))

    def __repr__(self) -> str:
        groups = getattr(self, "groups", None)
        return f"PackedTrainJob({self.run_dirs!r}, mps={self.mps}" + (f", groups={groups!r})" if groups else ")")


def analyze_job(sweep_dir: str) -> str:
    """The --then-analyze job: runs after every array of the sweep has ended."""
    from pathlib import Path

    from hpcdiff.analysis.report import analyze

    # Where `hpcdiff analyze` would write when run beside the output folder:
    # <output>/../analysis/<sweep name>/.
    sweep = Path(sweep_dir).absolute()
    result = analyze(sweep, sweep.parent.parent / "analysis" / sweep.name)
    return str(result.out_dir)
