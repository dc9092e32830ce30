"""The per-epoch progress bar of `hpcdiff train` on a terminal (silent otherwise)."""

from __future__ import annotations

import time


class Progress:
    """A rich progress bar per epoch (loss, it/s, ETA) when enabled. The loss shown is the
    one the interval checks already brought to the host: the bar never waits for the GPU."""

    def __init__(self, enabled: bool, *, total_epochs: int, steps: int, run_id: str):
        self.enabled = enabled
        self.total_epochs, self.steps, self.run_id = total_epochs, steps, run_id
        self._progress = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
            from rich.progress import Progress as RichProgress

            self._progress = RichProgress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("loss {task.fields[loss]}"),
                TextColumn("{task.fields[speed]}"),
                TimeRemainingColumn(),
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def start_epoch(self, epoch, first_batch=0):
        if self._progress is not None:
            self._task = self._progress.add_task(
                f"{self.run_id} epoch {epoch}/{self.total_epochs}",
                total=self.steps,
                loss="-",
                speed="",
                completed=first_batch,
            )
            self._tic = time.perf_counter()
            self._n, self._done = first_batch, 0

    def advance(self):
        if self._progress is not None:
            self._n += 1
            self._done += 1

    def show_loss(self, loss: float):
        if self._progress is not None:
            rate = self._done / max(time.perf_counter() - self._tic, 1e-9)
            self._progress.update(self._task, completed=self._n, loss=f"{loss:.4f}", speed=f"{rate:.1f} it/s")

    def end_epoch(self, epoch, train_loss, val_loss):
        if self._progress is not None:
            self._progress.update(self._task, completed=self.steps, loss=f"{train_loss:.4f} (val {val_loss:.4f})")
