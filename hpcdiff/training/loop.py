"""train(run_dir) / train_group(run_dirs): the training loop, for one run or for the members
of a fused group, each resumable from its latest checkpoint.

Read it top to bottom: ``train_group`` owns the run directories (locks, logs, the state each
run ends in). ``_train_locked`` starts a Session per run (config, data, evaluator, TrainState
resumed from its checkpoint), puts each in a Member with the step that moves them
(``SoloStep`` for a run alone, ``GroupStep`` for a fused group: training/members.py) and runs
rounds: every live member opens its next epoch when it has none open (its own batch order),
all take one batch, the interval checks look at each, and a member whose batches are done
closes its epoch (training/epoch_end.py: validation, schedulers, metrics,
samples, archive row, checkpoint, status; members closing in one round draw their samples
together). A member ends when its epochs are done, early
stopping or a budget ends it, or, in a group, when it diverges: the others go on. Members
may be at different epochs and batches (one resumed from an older checkpoint than another).
Everything a restarted process needs is in each run's checkpoint (training/state.py).
"""

from __future__ import annotations

import logging
import time
import traceback
from pathlib import Path

from hpcdiff.config.spec import RunSpec
from hpcdiff.resolve import validate_spec
from hpcdiff.storage import archive, checkpoint
from hpcdiff.storage.atomic import StorageError
from hpcdiff.storage.rundir import RunDir
from hpcdiff.storage.runstate import RunState
from hpcdiff.training.distributed import env_from_slurm, process_rank
from hpcdiff.training.environment import NoGpuError, attach_log, detach_log, fold_archive, logging_for, record_state
from hpcdiff.training.epoch_end import EpochEnd, begin_epoch_end, draw_together, due, finish_epoch_end
from hpcdiff.training.members import FusionError, GroupStep, Member, SoloStep, member_noise, spec_blocker
from hpcdiff.training.monitor import Diverged, divergence_hints
from hpcdiff.training.session import Session, start_session
from hpcdiff.training.signals import StopRequested, hand_on_to_submitit, stop_on_signals

log = logging.getLogger(__name__)

# Seconds between the live progress writes of a training process to status.json (optimiser
# steps and training time, at an interval check, which has just waited for the device), so
# `hpcdiff status` shows a long epoch moving without one status write per check.
STATUS_EVERY = 30.0

__all__ = ["due", "run_epoch", "train", "train_group"]


def train(run_dir: str | Path, *, show_progress: bool = False) -> RunState:
    """Train or resume the run in ``run_dir``. Returns the final state (done or timeout).

    Raises ``Diverged`` (state diverged) when the loss or the weights stop being finite, and
    ``StorageError`` (state failed) when a run file cannot be written, e.g. on a full disk;
    both leave the last complete checkpoint and archive as they were."""
    return train_group([run_dir], show_progress=show_progress)[0]


def train_group(run_dirs: list, *, show_progress: bool = False) -> list[RunState]:
    """Train or resume the runs in ``run_dirs``: one run alone, or several as one fused group
    in this process. Returns each run's final state, in order.

    In a group, a member that diverges is recorded as diverged and masked out, and the others
    go on (its state in the result says so); a run alone raises as ``train`` says. Runs that
    cannot train together raise ``FusionError`` before any is touched."""
    rds = [RunDir(Path(d)) for d in run_dirs]
    if len({rd.path.resolve() for rd in rds}) != len(rds):
        raise FusionError("a run directory is named twice")
    # Resolved again: a config written by an older hpcdiff (or edited by hand) may still say
    # "auto" for a setting that later versions resolve when the sweep is expanded.
    specs = [validate_spec(rd.load_spec()) for rd in rds]
    env_from_slurm()
    if len(rds) > 1:
        problem = spec_blocker(specs, [rd.run_id for rd in rds])
        if problem:
            raise FusionError(f"these runs cannot train as one fused group: {problem}")
    # Only the main process owns the run directories: lock, log, status, archive, checkpoints.
    main = process_rank() == 0
    locks, handlers, ended = [], [], {}
    try:
        for rd in rds if main else ():
            locks.append(rd.lock())
    except BaseException:
        for lock in locks:
            lock.close()
        raise
    try:
        handlers = [attach_log(rd) for rd in rds] if main else []
        todo = []
        for rd, spec in zip(rds, specs):
            if rd.state == RunState.DONE:
                log.info("run %s is already done; nothing to do", rd.run_id)
                ended[rd.path] = RunState.DONE
            else:
                todo.append((rd, spec))
        if todo:
            _train_locked(todo, ended, show_progress)
        return [ended[rd.path] for rd in rds]
    except StopRequested as stop:
        _record_open(rds, ended, main, state=RunState.TIMEOUT)
        if main:
            log.warning("%s: checkpoint written, stopping", stop)
        hand_on_to_submitit(stop.signum)
        return [ended.get(rd.path, RunState.TIMEOUT) for rd in rds]
    except SystemExit:
        # e.g. submitit's requeue handler exiting before training installed its own
        _record_open(rds, ended, main, state=RunState.TIMEOUT)
        raise
    except (Diverged, StorageError, NoGpuError, FusionError) as err:
        # Not bugs: no traceback, the message names what happened and where.
        state = RunState.DIVERGED if isinstance(err, Diverged) else RunState.FAILED
        _record_open(rds, ended, main, state=state, error=str(err), traceback=None)
        if main:
            log.error("%s", err)
        raise
    except BaseException as err:
        _record_open(
            rds,
            ended,
            main,
            state=RunState.FAILED,
            error=f"{type(err).__name__}: {err}",
            traceback=traceback.format_exc()[-4000:],
        )
        if main:
            log.error("run failed: %s", traceback.format_exc())
        raise
    finally:
        if main:
            for rd in rds:
                fold_archive(rd)
        for handler in handlers:
            detach_log(handler)
        for lock in locks:
            lock.close()


def _record_open(rds: list[RunDir], ended: dict, main: bool, **fields) -> None:
    """The state of every run that had not ended when training stopped."""
    for rd in rds:
        if rd.path not in ended and main:
            record_state(rd, **fields)


def _train_locked(todo: list[tuple[RunDir, RunSpec]], ended: dict, show_progress: bool) -> None:
    members, splits = [], None
    for slot, (rd, spec) in enumerate(todo):
        with logging_for(rd.run_id):
            # Members share their data (config/fusion.py): it is read once.
            session = start_session(rd, spec, show_progress and slot == 0, splits=splits)
        splits = session.splits
        if len(todo) > 1:
            session.noise = member_noise(session.accelerator.device)
        members.append(Member(session, slot))
    step = GroupStep(members) if len(members) > 1 else SoloStep(members[0])
    if len(members) > 1:
        log.info(
            "training %d runs as one fused group: %s", len(members), ", ".join(m.session.rd.run_id for m in members)
        )
    # One monitor: the stop signal is the process's, whichever member it is read for.
    monitor = members[0].session.monitor
    for m in members:
        m.session.monitor = monitor
    try:
        with stop_on_signals(monitor), members[0].session.progress:
            for m in members:
                _begin(m, step, ended)
            while live := [m for m in members if not m.ended]:
                for m in live:
                    _open_next(m, step, ended)
                live = [m for m in live if not m.ended]
                if not live:
                    break
                _round(live, step, ended, alone=len(members) == 1)
                # Members whose epochs end in this round end them at one instant: one member's
                # validation and metrics are not another's training time.
                closing = [m for m in live if not m.ended and m.batch >= m.last]
                if closing:
                    _close_epochs(closing, step, ended, time.perf_counter())
    finally:
        for m in members:
            if not m.ended:
                m.session.trackers.finish()


def _begin(m: Member, step, ended: dict) -> None:
    """A run resumed after its budget was spent trains no more: spent at an epoch's end
    (killed before it could say it was done), there is nothing left to do; spent mid-epoch
    (a stop signal's checkpoint at that very step), the epoch is closed without another batch."""
    session, s = m.session, m.session.state
    budget = session.budget
    session.stopped_by = budget.spent(budget.optimizer_steps(s.epoch_done + 1, s.start_batch), s.elapsed)
    if (session.stopped_by is not None and not s.start_batch) or s.epoch_done >= session.spec.train.epochs:
        _finish(m, step, ended)


def _open_next(m: Member, step, ended: dict) -> None:
    if m.open:
        return
    s = m.session.state
    epoch, first = (m.epoch + 1, 0) if m.epoch else (s.epoch_done + 1, s.start_batch)
    if epoch > m.session.spec.train.epochs:
        _finish(m, step, ended)
        return
    m.open_epoch(epoch, first)
    if m.batch >= m.last:
        _close_epochs([m], step, ended)


def _round(live: list[Member], step, ended: dict, *, alone: bool) -> None:
    """One batch of every live member, then the interval check when one is due."""
    synced = step.synced(live)  # whether this batch ends an accumulation window
    losses = step(live)
    for m, loss in zip(live, losses):
        m.loss_sum += loss
        m.session.state.step += 1
        m.session.progress.advance()
        m.batch += 1
    monitor = live[0].session.monitor
    # Checks only after an optimiser step (gradients accumulated in between are not
    # checkpointed), every few steps, at an epoch's end and at a step budget's last step:
    # each waits for the device.
    if synced and monitor.optimizer_step_taken(
        epoch_end=any(m.batch == m.session.steps_per_epoch for m in live),
        budget_step=any(m.session.budget.is_last_step(m.optimizer_steps()) for m in live),
    ):
        _check(live, step, ended, alone=alone)


def _check(live: list[Member], step, ended: dict, *, alone: bool) -> None:
    """The interval check of each member: divergence ends it (a run alone raises), a stop
    signal checkpoints every member and stops, a spent budget makes the open epoch its last."""
    monitor, stop_signal, spent_by = live[0].session.monitor, 0, {}
    for m in live:
        session = m.session
        budget = session.budget
        spent = budget.spent(m.optimizer_steps(), m.seconds())
        verdict = monitor.check(m.loss_sum, step.weights(m), over_budget=spent is not None)
        session.progress.show_loss(verdict.loss_sum / m.batch)  # the epoch's mean so far
        if not verdict.finite:
            epochs = checkpoint.list_epochs(session.rd.checkpoints)
            err = Diverged(
                epoch=m.epoch,
                step=session.state.step,
                what="the training loss is not finite" if not verdict.loss_finite else "the weights are not finite",
                hints=divergence_hints(session.spec.train, str(session.accelerator.mixed_precision)),
                last_good=epochs[-1] if epochs else 0,
            )
            if alone:
                raise err
            _diverge(m, err, step, ended)
            continue
        stop_signal = stop_signal or verdict.stop_signal
        if verdict.over_budget:
            # Another rank's clock may be the one past max_minutes: all stop at this step.
            spent_by[id(m)] = spent or "max_minutes"
    if stop_signal:
        for m in live:
            if m.ended:
                continue
            session = m.session
            session.state.elapsed += time.perf_counter() - m.tic
            if session.main:
                step.sync_out(m)
                partial = {"epoch": m.epoch, "batch": m.batch, "loss_sum": float(m.loss_sum)}
                session.save(m.epoch - 1, partial=partial)
            session.accelerator.wait_for_everyone()
        raise StopRequested(stop_signal)
    for m in live:
        if id(m) in spent_by:
            m.session.stopped_by = spent_by[id(m)]
            m.last = m.batch
    now = time.perf_counter()
    for m in live:
        if not m.ended and m.session.main and now - m.status_written > STATUS_EVERY:
            m.session.rd.write_status(steps=m.optimizer_steps(), elapsed=m.seconds())
            m.status_written = now


def _close_epochs(closing: list[Member], step, ended: dict, toc: float | None = None) -> None:
    """End the open epochs of ``closing`` (their batches up to ``toc``, default now): each
    member's validation and schedulers, then the samples of members that draw together
    (training/epoch_end.draw_together), then each one's metrics, grid, archive row,
    checkpoint and status."""
    toc = time.perf_counter() if toc is None else toc
    ends = []
    for m in closing:
        with logging_for(m.session.rd.run_id):
            ends.append(_begin_close(m, step, toc))
    if len(closing) > 1:
        draw_together([(m.session, end) for m, end in zip(closing, ends)], step.mode)
    for m, end in zip(closing, ends):
        with logging_for(m.session.rd.run_id):
            stop = finish_epoch_end(m.session, end)
            if stop or m.epoch >= m.session.spec.train.epochs:
                _finish(m, step, ended)


def _begin_close(m: Member, step, toc: float) -> EpochEnd:
    session = m.session
    session.batches_done = m.batch
    train_loss = session.accelerator.reduce(m.loss_sum, reduction="mean").item() / m.batch
    seconds = toc - m.tic
    session.state.elapsed += seconds
    m.perm = None
    step.sync_out(m)
    end = begin_epoch_end(session, m.epoch, train_loss, seconds, m.first)
    # The plateau scheduler's learning rate goes back into the group now: another member's
    # end may rebuild the group from the TrainStates before this one finishes its epoch.
    step.sync_in(m)
    return end


def _finish(m: Member, step, ended: dict) -> None:
    """The member's run is done: masked out of the group, its trackers closed, status done."""
    session, rd = m.session, m.session.rd
    m.ended = True
    step.end(m)
    with logging_for(rd.run_id):
        session.trackers.finish()
    session.accelerator.wait_for_everyone()
    if session.main:
        budget = {"stopped_by": session.stopped_by} if session.stopped_by else {}
        rd.write_status(state=RunState.DONE, **budget)
        archive.set_attrs(rd.archive, {"finished": True, "training_seconds": session.state.elapsed, **budget})
    ended[rd.path] = RunState.DONE


def _diverge(m: Member, err: Diverged, step, ended: dict) -> None:
    """A fused member diverged: recorded, masked out; the group goes on without it."""
    session, rd = m.session, m.session.rd
    m.ended = True
    step.end(m)
    with logging_for(rd.run_id):
        session.trackers.finish()
        log.error("run %s: %s", rd.run_id, err)
    if session.main:
        record_state(rd, state=RunState.DIVERGED, error=str(err), traceback=None)
    ended[rd.path] = RunState.DIVERGED


def run_epoch(session: Session, epoch: int, first: int = 0) -> tuple[float, float]:
    """The steps of one epoch of a run alone from batch ``first``, without closing it (the
    training benchmark times the trainer's own rounds with it): (mean loss, seconds)."""
    m = Member(session, 0)
    step = SoloStep(m)
    m.open_epoch(epoch, first)
    while m.batch < m.last:
        _round([m], step, {}, alone=True)
    seconds = time.perf_counter() - m.tic
    return session.accelerator.reduce(m.loss_sum, reduction="mean").item() / m.batch, seconds
