"""Where a run executes: its Accelerator, its log file, and how its end is recorded."""

from __future__ import annotations

import contextvars
import datetime
import logging
import os
import socket
import sys
from contextlib import contextmanager

import torch

from hpcdiff.storage.rundir import RunDir
from hpcdiff.training.distributed import local_cuda_index

# The other processes wait in the next collective while the main one computes metrics,
# writes the archive and checkpoints; t-SNE or Inception features on a big sample set can
# outlast NCCL's default 10-minute watchdog.
PROCESS_GROUP_TIMEOUT_S = 1800

log = logging.getLogger(__name__)


class NoGpuError(RuntimeError):
    """train.device = "cuda" on a machine where torch sees no GPU."""


def resolve_precision(requested: str, *, use_cpu: bool, bf16_supported: bool) -> str:
    """The mixed precision a run trains with. "auto": fp32 ("no") on the CPU, where bf16
    convolutions are very slow, bf16 on a GPU that has it, and fp32 on one that does not
    (a V100 or T4 would emulate bf16 slowly). "auto" never picks fp16: its dynamic loss
    scale (checkpoints keep it) checks for overflow on the host, so its step cannot be
    replayed from a CUDA graph, and its narrow range overflows where bf16's does not."""
    if requested != "auto":
        return requested
    return "bf16" if not use_cpu and bf16_supported else "no"


def make_accelerator(spec, trackers: list | None = None):
    """The run's Accelerator; ``trackers``: Accelerate tracker objects (training.trackers)."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    cuda = torch.cuda.is_available()
    if spec.train.device == "cuda" and not cuda:
        # Not a silent fallback to the CPU: a job that forgot to ask for a GPU (no --gres) would
        # otherwise train for its whole time limit at a fraction of the speed.
        raise NoGpuError(
            f'train.device = "cuda" but torch sees no GPU on {socket.gethostname()} '
            f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '<unset>')}, torch "
            f"{torch.__version__}, built for CUDA {torch.version.cuda or 'none'}). Ask the scheduler for a GPU "
            f'(e.g. [slurm] gpus_per_node), or set train.device = "auto" or "cpu".'
        )
    use_cpu = spec.train.device == "cpu" or not cuda
    precision = resolve_precision(
        spec.train.mixed_precision, use_cpu=use_cpu, bf16_supported=not use_cpu and gpu_has_bf16(local_cuda_index())
    )
    timeout = InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=PROCESS_GROUP_TIMEOUT_S))
    # Gradient accumulation is done in the training loop, not by Accelerate: its windows
    # would run across epoch ends, and a checkpoint written there would lose the gradients.
    accelerator = Accelerator(
        cpu=use_cpu, mixed_precision=precision, kwargs_handlers=[timeout], log_with=trackers or None
    )
    log.info(
        "device %s (process %d of %d), mixed precision %s",
        device_name(accelerator.device),
        accelerator.process_index,
        accelerator.num_processes,
        accelerator.mixed_precision,
    )
    return accelerator


def gpu_has_bf16(index: int) -> bool:
    """Whether GPU ``index`` computes in bf16 natively (compute capability 8.0 on: A100,
    H100, H200...). Not torch.cuda.is_bf16_supported(): by default it also says yes for GPUs
    that only emulate bf16, and it asks the current device, which before Accelerate has set
    it is cuda:0 for every rank."""
    if torch.version.hip:
        return True
    return torch.cuda.get_device_capability(index)[0] >= 8


def device_name(device) -> str:
    """ "cuda:1", "cpu": a CUDA device with its index (Accelerate's single-process device is a
    bare "cuda", the current device), so that logs say which GPU a task trained on."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return f"cuda:{torch.cuda.current_device()}"
    return str(device)


def slurm_job_id() -> str | None:
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def record_state(rd: RunDir, **fields) -> None:
    """status.json, or, when it cannot be written (the disk that failed the run is full), a
    line on stderr: the job's .err file under SLURM, the terminal or stdout.txt locally."""
    try:
        rd.write_status(**fields)
    except OSError as err:
        print(
            f"hpcdiff: run {rd.run_id} ended {fields.get('state')!r} but status.json could not record it "
            f"({err}); reason: {fields.get('error') or '-'}",
            file=sys.stderr,
            flush=True,
        )


def fold_archive(rd: RunDir) -> None:
    """However training ended, its epoch files are folded into archive.h5 for readers that
    open it with h5py; where that fails (a full disk) they stay, and hpcdiff reads them."""
    from hpcdiff.storage import archive

    try:
        archive.consolidate(rd.archive)
    except OSError as err:  # StorageError is one
        print(
            f"hpcdiff: run {rd.run_id}: the epoch files stay beside {rd.archive} ({err}); "
            f"hpcdiff reads them as they are",
            file=sys.stderr,
            flush=True,
        )


class _RunLogHandler(logging.FileHandler):
    """log.txt; a write that fails (a full disk) is reported once on stderr, not as a
    logging traceback per line."""

    _warned = False

    def handleError(self, record):
        if not self._warned:
            self._warned = True
            err = sys.exc_info()[1]
            print(
                f"hpcdiff: cannot write {self.baseFilename}: {err}; log lines go to stderr only",
                file=sys.stderr,
                flush=True,
            )
        print(self.format(record), file=sys.stderr, flush=True)


# The run the process is working on right now: in a fused group, what one member does
# (its epoch's end, its divergence) goes to its own log.txt only; what the group does, to all.
_CURRENT_RUN: contextvars.ContextVar[str | None] = contextvars.ContextVar("hpcdiff_current_run", default=None)


@contextmanager
def logging_for(run_id: str):
    """Log lines of the block go to ``run_id``'s log.txt only (and to no other run's)."""
    token = _CURRENT_RUN.set(run_id)
    try:
        yield
    finally:
        _CURRENT_RUN.reset(token)


def attach_log(rd: RunDir) -> logging.Handler:
    handler = _RunLogHandler(rd.log)
    run_id = rd.run_id
    handler.addFilter(lambda record: _CURRENT_RUN.get() in (None, run_id))
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("hpcdiff")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    return handler


def detach_log(handler: logging.Handler) -> None:
    logging.getLogger("hpcdiff").removeHandler(handler)
    handler.close()
