"""Where a run executes: its Accelerator, its log file, and how its end is recorded."""

from __future__ import annotations

import datetime
import logging
import os
import sys

import torch

from hpcdiff.storage.rundir import RunDir

# The other processes wait in the next collective while the main one computes metrics,
# writes the archive and checkpoints; t-SNE or Inception features on a big sample set can
# outlast NCCL's default 10-minute watchdog.
PROCESS_GROUP_TIMEOUT_S = 1800


def make_accelerator(spec):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    use_cpu = spec.train.device == "cpu" or not torch.cuda.is_available()
    precision = spec.train.mixed_precision
    if precision == "auto":
        precision = "no" if use_cpu else "bf16"
    timeout = InitProcessGroupKwargs(timeout=datetime.timedelta(seconds=PROCESS_GROUP_TIMEOUT_S))
    # Gradient accumulation is done in the training loop, not by Accelerate: its windows
    # would run across epoch ends, and a checkpoint written there would lose the gradients.
    return Accelerator(cpu=use_cpu, mixed_precision=precision, kwargs_handlers=[timeout])


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
        print(f"hpcdiff: run {rd.run_id} ended {fields.get('state')!r} but status.json could not record it "
              f"({err}); reason: {fields.get('error') or '-'}", file=sys.stderr, flush=True)


class _RunLogHandler(logging.FileHandler):
    """log.txt; a write that fails (a full disk) is reported once on stderr, not as a
    logging traceback per line."""

    _warned = False

    def handleError(self, record):
        if not self._warned:
            self._warned = True
            err = sys.exc_info()[1]
            print(f"hpcdiff: cannot write {self.baseFilename}: {err}; log lines go to stderr only",
                  file=sys.stderr, flush=True)
        print(self.format(record), file=sys.stderr, flush=True)


def attach_log(rd: RunDir) -> logging.Handler:
    handler = _RunLogHandler(rd.log)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger("hpcdiff")
    root.setLevel(logging.INFO)
    root.addHandler(handler)
    return handler


def detach_log(handler: logging.Handler) -> None:
    logging.getLogger("hpcdiff").removeHandler(handler)
    handler.close()
