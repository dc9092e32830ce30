"""The training step: one batch's forward and backward, and the optimiser step that closes a
gradient-accumulation window; run eagerly, or replayed from CUDA graphs.

Why graphs: on a GPU the coursework CNN's step is ~100 small kernels, and launching them
from Python takes longer than running them. A CUDA graph records the whole step once and
replays it with one launch. What that asks of the step, and why the code looks as it does:

- Every input lives at a fixed address: the batch indices are copied into a static buffer,
  the accumulation divisor is a device scalar, the loss comes back in a static tensor.
- Nothing in it waits for the host: no ``.item()``, no CPU generators (the default CUDA
  generator is graph-safe: each replay draws fresh numbers, as an eager step would).
- The optimiser is fused and capturable with a tensor learning rate: ReduceLROnPlateau
  then updates that tensor in place and the captured kernel reads it (a float lr would be
  baked into the graph and every later change silently ignored).
- Gradients persist between replays and are zeroed in place (``set_to_none`` would free
  the memory the graph writes to).
- Gradient accumulation needs two graphs: "accumulate" (forward + backward) and "step"
  (forward + backward + clip + optimiser + EMA). The last, shorter window of an epoch
  changes only the divisor.
- Capture needs warm-up iterations (lazy optimiser state, cuBLAS workspaces). They run on a
  side stream and everything they touched (weights, gradients, optimiser moments, EMA, RNG)
  is put back afterwards, so every real step of a run is a replay: a resumed run takes the
  same path as an uninterrupted one.

The mode is chosen by a fixed rule (``resolve_mode``), never by a timing, recorded in every
checkpoint and reused on resume where it still applies.
"""

from __future__ import annotations

import enum
import logging
import warnings
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from hpcdiff.data import to_model_range
from hpcdiff.science.graphs import CaptureError, capture

log = logging.getLogger(__name__)


class Execution(str, enum.Enum):
    """How the training step runs. The values are train.compile's spellings, and what
    checkpoints and archives have recorded since the step could be graphed."""

    EAGER = "none"  # op by op, as PyTorch runs it
    GRAPH = "graph"  # the whole step replayed from a captured CUDA graph

    def __str__(self) -> str:
        return self.value


EAGER, GRAPH = Execution.EAGER, Execution.GRAPH
# Uncaptured iterations before a capture: the optimiser creates its state in the first one,
# the second runs with everything allocated, as the captured one will.
WARMUP_ITERATIONS = 2


@dataclass(frozen=True)
class StepMode:
    mode: Execution
    reason: str  # why, for the log and the archive

    @property
    def graph(self) -> bool:
        return self.mode == GRAPH


def graph_blocker(device: torch.device, world: int, precision: str) -> str | None:
    """Why CUDA graphs cannot capture this run's step, or None when they can."""
    if device.type != "cuda":
        return f"CUDA graphs need a CUDA device (this run trains on {device.type})"
    if world > 1:
        # DDP's gradient hooks and NCCL calls inside a capture need care this loop does not take.
        return f"CUDA graphs are used for single-process runs (this run has {world} processes)"
    if precision == "fp16":
        # GradScaler reads its inf check on the host between backward and step.
        return "fp16's gradient scaler checks for overflow on the host (use bf16 or no mixed precision)"
    return None


def resolve_mode(
    requested: str, *, device: torch.device, world: int, precision: str, recorded: str | None = None
) -> StepMode:
    """The fixed rule. ``requested``: train.compile; ``recorded``: the mode in the checkpoint
    being resumed ("auto" then keeps it, so a resumed run runs as it started)."""
    blocker = graph_blocker(device, world, precision)
    want = recorded if requested == "auto" and recorded in (EAGER, GRAPH) else requested
    want = Execution(want) if want in (EAGER, GRAPH) else want  # "auto" stays a wish
    if want == EAGER:
        return StepMode(
            EAGER, 'train.compile = "none"' if requested == EAGER else "eager, as recorded in the checkpoint resumed"
        )
    if blocker is None:
        return StepMode(GRAPH, "one CUDA process: the whole step is replayed from a CUDA graph")
    if want == GRAPH and requested == GRAPH:
        log.warning('train.compile = "graph" does not apply here: %s; training eagerly', blocker)
    return StepMode(EAGER, blocker)


def make_optimizer(spec_train, params, *, device: torch.device, mode: StepMode) -> torch.optim.Optimizer:
    """Adam(W) as the run asks. On CUDA the fused kernel (one launch for every tensor); for
    graphs also capturable, with the learning rate as a device tensor. On the CPU exactly
    torch's default, as before."""
    opt_cls = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}[spec_train.optimizer]
    kwargs: dict = {"lr": spec_train.lr, "weight_decay": spec_train.weight_decay}
    if device.type == "cuda":
        kwargs["fused"] = True
        if mode.graph:
            kwargs["capturable"] = True
            kwargs["lr"] = torch.tensor(spec_train.lr, dtype=torch.float32, device=device)
    return opt_cls(params, **kwargs)


def current_lr(optimizer) -> float:
    """The first group's learning rate as a float (a tensor in graph mode: one host read)."""
    return float(optimizer.param_groups[0]["lr"])


def portable_optimizer_state(optimizer) -> dict:
    """The optimiser's state dict with float learning rates, loadable on any device and by
    either mode (a CUDA tensor lr would not load on a CPU-only machine)."""
    state = optimizer.state_dict()
    for group in state["param_groups"]:
        if isinstance(group.get("lr"), torch.Tensor):
            group["lr"] = float(group["lr"])
    return state


def load_optimizer_state(optimizer, saved: dict) -> None:
    """Load ``saved`` keeping this optimiser's own implementation (fused, capturable,
    foreach) and learning-rate type: the checkpoint may come from the other device or mode.
    A tensor lr stays the same tensor object (load_state_dict copies the groups it is given):
    a graph captured later reads it."""
    groups, lr_tensors = [], []
    for current, old in zip(optimizer.param_groups, saved["param_groups"]):
        old = dict(old)
        for key in ("fused", "capturable", "foreach"):
            if key in current:
                old[key] = current[key]
        old["lr"] = float(old["lr"])
        lr_tensors.append(current["lr"] if isinstance(current["lr"], torch.Tensor) else None)
        groups.append(old)
    optimizer.load_state_dict({**saved, "param_groups": groups})
    for group, tensor in zip(optimizer.param_groups, lr_tensors):
        if tensor is not None:
            tensor.fill_(group["lr"])
            group["lr"] = tensor


def raw_optimizer(optimizer):
    """Accelerate's wrapper -> the torch optimiser."""
    return getattr(optimizer, "optimizer", optimizer)


class TrainStep:
    """``step(idx, window, sync)``: forward + backward of the images at ``idx`` (a device
    tensor of indices into ``images``), the loss divided by ``window`` (the accumulation
    window's length), then, when ``sync``, the optimiser step that ends the window. Returns
    the batch's loss as a device tensor (no host sync).

    In graph mode a step that cannot be captured (a process that reads values back to the
    host mid-step; none of the registered ones does) is trained eagerly from then on, with a
    warning, and ``state.mode`` says so (recorded in the next checkpoint and archive row)."""

    def __init__(self, state, accelerator, images: torch.Tensor, *, grad_clip: float, mode: StepMode):
        self.state, self.acc, self.images = state, accelerator, images
        self.grad_clip = grad_clip
        self._graphed = (
            _GraphedStep(
                state.core,
                raw_optimizer(state.optimizer),
                state.ema,
                images,
                grad_clip=grad_clip,
                precision=str(accelerator.mixed_precision),
            )
            if mode.graph
            else None
        )

    def __call__(self, idx: torch.Tensor, window: int, sync: bool) -> torch.Tensor:
        if self._graphed is not None:
            try:
                return self._graphed(idx, window, sync)
            except CaptureFailed as failed:
                log.warning("%s; training this run eagerly from here on", failed)
                self.state.mode = StepMode(EAGER, str(failed))
                self._graphed = None
        s, acc = self.state, self.acc
        with nullcontext() if sync else acc.no_sync(s.diffusion):
            loss = s.diffusion(to_model_range(self.images[idx]))
            acc.backward(loss / window if window > 1 else loss)
        if sync:
            if self.grad_clip:
                acc.clip_grad_norm_(s.diffusion.parameters(), self.grad_clip)
            s.optimizer.step()
            s.optimizer.zero_grad(set_to_none=True)
            if s.ema is not None:
                s.ema.update(s.core.denoiser)
        return loss.detach()


class CaptureFailed(RuntimeError):
    """The step could not be recorded in a CUDA graph; nothing of it ran."""


class _GraphedStep:
    """The same step as ``TrainStep``'s eager branch, written for capture (see the module
    docstring); one CUDA graph per (sync, batch length)."""

    def __init__(self, core, optimizer, ema, images, *, grad_clip: float, precision: str):
        self.core, self.optimizer, self.ema, self.images = core, optimizer, ema, images
        self.grad_clip = grad_clip
        self.params = [p for p in core.parameters() if p.requires_grad]
        self.dtype = torch.bfloat16 if precision == "bf16" else None
        device = images.device
        self.window = torch.ones((), device=device)
        self._window_value = 1
        self.idx: dict[int, torch.Tensor] = {}
        self.graphs: dict[tuple[bool, int], tuple[torch.cuda.CUDAGraph, torch.Tensor]] = {}
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)

    def body(self, sync: bool, n: int) -> torch.Tensor:
        """What a graph holds. Calls the process's class forward: Accelerate's wrapper around
        the instance's forward enables autocast's weight cache, which a graph must not use."""
        x = to_model_range(self.images[self.idx[n]])
        autocast = (
            torch.autocast("cuda", dtype=self.dtype, cache_enabled=False) if self.dtype is not None else nullcontext()
        )
        with autocast:
            loss = type(self.core).forward(self.core, x)
        (loss.float() / self.window).backward()
        if sync:
            if self.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.params, self.grad_clip, foreach=True)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=False)
            if self.ema is not None:
                self.ema.update(self.core.denoiser)
        return loss.detach().float()

    def __call__(self, idx: torch.Tensor, window: int, sync: bool) -> torch.Tensor:
        n = len(idx)
        if n not in self.idx:
            self.idx[n] = torch.zeros(n, dtype=torch.long, device=idx.device)
        self.idx[n].copy_(idx)
        if window != self._window_value:
            self.window.fill_(float(window))
            self._window_value = window
        key = (sync, n)
        if key not in self.graphs:
            self.graphs[key] = self._capture(sync, n)
        graph, loss = self.graphs[key]
        graph.replay()
        return loss

    def _capture(self, sync: bool, n: int):
        saved = self._snapshot()
        with warnings.catch_warnings():
            # "capturable=True ... running without CUDA graph capture": the warm-up, by design.
            warnings.filterwarnings("ignore", message=".*capturable.*")
            try:
                graph, loss = capture(
                    lambda: self.body(sync, n), warmup=WARMUP_ITERATIONS, before_capture=lambda: self._restore(saved)
                )
            except CaptureError as err:
                # Nothing recorded ran, and the warm-up was put back: the state is as before.
                torch.cuda.synchronize()
                raise CaptureFailed(
                    f"the training step could not be captured in a CUDA graph ({str(err).splitlines()[0]})"
                ) from err
        log.info("captured the %s step (batch %d) in a CUDA graph", "optimiser" if sync else "accumulation", n)
        return graph, loss

    def _snapshot(self) -> dict:
        return {
            "params": [p.detach().clone() for p in self.params],
            "grads": [p.grad.detach().clone() for p in self.params],
            "optimizer": {
                id(p): {k: v.clone() for k, v in st.items() if isinstance(v, torch.Tensor)}
                for p, st in self.optimizer.state.items()
            },
            "ema": [v.clone() for v in self.ema.shadow.values()] if self.ema is not None else [],
            "rng": torch.cuda.get_rng_state(self.images.device),
        }

    @torch.no_grad()
    def _restore(self, saved: dict) -> None:
        """In place: the tensors keep their addresses, which the graph will read."""
        for p, value, grad in zip(self.params, saved["params"], saved["grads"]):
            p.copy_(value)
            p.grad.copy_(grad)
        for p, st in self.optimizer.state.items():
            before = saved["optimizer"].get(id(p))
            for k, v in st.items():
                if not isinstance(v, torch.Tensor):
                    continue
                if before is None:
                    v.zero_()  # created by the warm-up: back to a fresh optimiser's (step 0, zero moments)
                else:
                    v.copy_(before[k])
        if self.ema is not None:
            for shadow, value in zip(self.ema.shadow.values(), saved["ema"]):
                shadow.copy_(value)
        torch.cuda.set_rng_state(saved["rng"], self.images.device)
