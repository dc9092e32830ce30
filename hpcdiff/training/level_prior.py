"""The level-T prior of a run whose sampling starts from one (``sample_start = "prior"``):
fitted once, saved beside the run's outputs, loaded by every process and every resume."""

from __future__ import annotations

import logging
import time

import torch

from hpcdiff.data import to_model_range
from hpcdiff.science.priors import LevelPrior
from hpcdiff.storage import checkpoint
from hpcdiff.storage.rundir import RunDir

log = logging.getLogger(__name__)


def load_or_fit_prior(rd: RunDir, core, train_images: torch.Tensor, seed: int, accelerator=None) -> LevelPrior:
    """The run's level-T prior: fitted once on its training images by the main process and
    saved in the run directory, so that every process, every resume and every later
    evaluation (``accelerator=None``: one process) draws its starts from the same one."""
    failure = None
    if (accelerator is None or accelerator.is_main_process) and not rd.prior.exists():
        tic = time.perf_counter()
        try:
            prior = core.fit_prior(to_model_range(train_images), seed=seed)
            checkpoint.save_object(prior.state_dict(), rd.prior)
            log.info(
                "sampling starts from a prior fitted on the training images at level T: %s (%.1f s)",
                prior.describe(),
                time.perf_counter() - tic,
            )
        except Exception as err:  # every rank must reach the barrier, or the others wait forever
            failure = err
    if accelerator is not None:
        accelerator.wait_for_everyone()
    if failure is not None:
        raise failure
    if not rd.prior.exists():
        raise RuntimeError(f"the main process could not fit the level-T prior ({rd.prior} is missing): see its log")
    return LevelPrior.from_state_dict(torch.load(rd.prior, weights_only=True))
