"""The ``[slurm]`` section: resources for the SLURM backend, and the character sets that keep
its values from executing anything in a submission script. Not part of a run's identity
(``RunSpec.run_identity``). Stdlib only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from hpcdiff.config.checks import check

# Values that end up in a submission script. #SBATCH values are quoted by submitit, but a
# newline would still start a shell line, and setup lines are run by bash: both are held to
# character sets in which nothing can execute (no ; & | $ ` < > ( ) quotes or newlines).
_SBATCH_VALUE = re.compile(r"^[A-Za-z0-9_.,:+@%/=\[\]-]*$")
_CONSTRAINT = re.compile(r"^[A-Za-z0-9_.,:&|!\[\]*+-]*$")  # sbatch's constraint syntax, quoted
_EXTRA_SBATCH = re.compile(r"^--[a-z][a-z0-9-]*(=[A-Za-z0-9_.,:+@%/=\[\]-]+)?$")
_SETUP_LINE = re.compile(r"^[A-Za-z0-9_./:=+@%,~-]+( +[A-Za-z0-9_./:=+@%,~-]+)*$")


MAX_RUNS_PER_GPU = 64


@dataclass(frozen=True)
class SlurmSpec:
    """Resources for the SLURM backend. Not part of a run's identity (see ``run_identity``)."""

    partition: str = ""
    account: str = ""
    qos: str = ""
    time_min: int = 60
    nodes: int = 1
    gpus_per_node: int = 0
    # Processes per node; 0 = one per GPU (1 without GPUs): each rank drives one GPU.
    tasks_per_node: int = 0
    cpus_per_task: int = 2
    mem_gb: int = 0
    constraint: str = ""
    mail_user: str = ""
    mail_type: str = ""
    array_parallelism: int = 16
    # Requeues allowed after hitting the time limit (preemptions do not count).
    max_requeues: int = 3
    # SLURM sends USR2 this long before the time limit: time to finish a batch and checkpoint.
    signal_delay_s: int = 120
    # Partition for the CPU-only --then-analyze job ("" = partition).
    cpu_partition: str = ""
    # Extra sbatch options, each "--option" or "--option=value".
    extra_sbatch: tuple[str, ...] = ()
    # Shell lines run before the job (e.g. "module load rhel8/default-amp"); plain words only.
    setup: tuple[str, ...] = ()
    # Runs trained at once by one array task, as that many processes sharing its GPU (or,
    # without GPUs, its CPUs): for single-GPU runs too small to fill a device.
    runs_per_gpu: int = 1
    # Start an NVIDIA MPS daemon inside each packed job, so that the runs' kernels really
    # run concurrently on the shared GPU (opt-in; needs GPUs).
    mps: bool = False

    @property
    def tasks(self) -> int:
        """Processes per node: tasks_per_node, or one per GPU when it is 0."""
        return self.tasks_per_node or max(1, self.gpus_per_node)

    @property
    def packed(self) -> bool:
        return self.runs_per_gpu > 1

    def validate(self, p: str) -> None:
        self._validate_packing(p)
        for name in ("time_min", "nodes", "cpus_per_task", "array_parallelism"):
            v = getattr(self, name)
            check(v >= 1, f"{p}.{name}", f"must be >= 1, got {v}")
        for name in ("gpus_per_node", "tasks_per_node", "mem_gb", "max_requeues", "signal_delay_s"):
            v = getattr(self, name)
            check(v >= 0, f"{p}.{name}", f"must be >= 0, got {v}")
        for name in ("partition", "account", "qos", "mail_user", "mail_type", "cpu_partition"):
            v = getattr(self, name)
            check(
                bool(_SBATCH_VALUE.fullmatch(v)),
                f"{p}.{name}",
                f"{v!r} contains characters not allowed in an sbatch value",
            )
        check(
            bool(_CONSTRAINT.fullmatch(self.constraint)),
            f"{p}.constraint",
            f"{self.constraint!r} contains characters not allowed in a constraint",
        )
        for i, line in enumerate(self.extra_sbatch):
            check(
                bool(_EXTRA_SBATCH.fullmatch(line)),
                f"{p}.extra_sbatch[{i}]",
                f"{line!r} is not a plain sbatch option like '--exclusive' or '--gpu-bind=closest'",
            )
        for i, line in enumerate(self.setup):
            check(
                bool(_SETUP_LINE.fullmatch(line)),
                f"{p}.setup[{i}]",
                f"{line!r} may only hold words of letters, digits and ._/:=+@%,~- "
                f"(no ; & | $ ` < > ( ) quotes or newlines)",
            )

    def _validate_packing(self, p: str) -> None:
        k = self.runs_per_gpu
        check(1 <= k <= MAX_RUNS_PER_GPU, f"{p}.runs_per_gpu", f"must be in [1, {MAX_RUNS_PER_GPU}], got {k}")
        if k > 1:
            several = [
                f"{name} = {getattr(self, name)}"
                for name in ("gpus_per_node", "nodes", "tasks_per_node")
                if getattr(self, name) > 1
            ]
            check(
                not several,
                f"{p}.runs_per_gpu",
                f"runs_per_gpu = {k} packs single-GPU runs onto one device; it cannot be combined with "
                f"{', '.join(several)} (packing is for single-GPU runs: use runs_per_gpu = 1 for "
                f"runs that span several GPUs, nodes or tasks)",
            )
        check(
            not self.mps or self.gpus_per_node >= 1,
            f"{p}.mps",
            "mps = true needs a GPU (gpus_per_node >= 1): NVIDIA MPS shares a GPU between processes",
        )
