"""The ``[model]`` section: which denoiser (``name``) and the keys of that model only.

Each model owns its keys (MODEL_KEYS); ``dropout`` and ``name`` are shared. A key of the
other model is an error, not a silently ignored setting, and ``to_dict`` writes only the
chosen model's keys: a CNN run's config.toml (and therefore its id) is byte for byte what it
was before the UNet existed. Stdlib only, like the rest of config/.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from hpcdiff.config.catalog import MODEL_KEYS
from hpcdiff.config.catalog import MODELS as MODEL_NAMES
from hpcdiff.config.checks import SpecError, check, choice_msg

ACTIVATIONS = ("gelu", "relu", "silu", "leaky_relu", "tanh")
MAX_CHANNELS = 4096  # per layer
MAX_LAYERS = 64
# Every dataset hpcdiff reads holds 28x28 images: a kernel wider than the image sees mostly
# padding and costs (k/28)^2 times a useful one.
MAX_KERNEL_SIZE = 27
# Each UNet level but the last halves the image: 28x28 allows two halvings (three levels).
MAX_LEVELS = 8
MAX_RES_BLOCKS = 16

SHARED_KEYS = frozenset({"name", "dropout"})


@dataclass(frozen=True)
class ModelSpec:
    # "cnn": the coursework starter (the default); "unet": residual blocks over resolutions.
    name: str = "cnn"
    # CNN: channels of each conv block at full resolution.
    hidden: tuple[int, ...] = (16, 32, 32, 16)
    activation: str = "gelu"
    kernel_size: int = 7
    last_kernel_size: int = 3
    # Dropout after each block (CNN: Dropout2d; UNet: inside each residual block); 0 disables it.
    dropout: float = 0.0
    # UNet: channels of the first level; level i has base_channels * channel_mults[i]
    # channels at 1/2**i of the image size (the defaults: 32, 64, 64 at 28, 14, 7).
    base_channels: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 2)
    # Residual blocks per level on the way down (one more on the way up takes the skip).
    res_blocks: int = 1
    # One single-head self-attention block at the lowest resolution.
    attention: bool = False
    # GroupNorm groups: must divide every channel count (base_channels does it).
    groups: int = 8

    @classmethod
    def check_keys(cls, raw: dict, prefix: str) -> None:
        """Called with the keys as written: the other model's keys are rejected by name."""
        name = raw.get("name", "cnn")
        if name not in MODEL_KEYS:
            return  # validate() names the bad model
        for key in raw:
            for other, keys in MODEL_KEYS.items():
                if other != name and key in keys:
                    raise SpecError(
                        f"belongs to model {other!r}, but {prefix}.name = {name!r}: remove it (the "
                        f"{name} model's keys: {', '.join(sorted(MODEL_KEYS[name] | SHARED_KEYS))}); "
                        f"a sweep over {prefix}.name puts each model's keys in its [[sweep.cases]]",
                        path=f"{prefix}.{key}",
                    )

    def to_dict(self) -> dict:
        """The chosen model's keys only (``name`` only when it is not the starter CNN)."""
        keep = MODEL_KEYS.get(self.name, frozenset()) | {"dropout"} | ({"name"} if self.name != "cnn" else set())
        return {f.name: _plain(getattr(self, f.name)) for f in fields(self) if f.name in keep}

    def validate(self, p: str) -> None:
        check(self.name in MODEL_NAMES, f"{p}.name", choice_msg(self.name, MODEL_NAMES))
        check(0.0 <= self.dropout < 1.0, f"{p}.dropout", f"must be in [0, 1), got {self.dropout}")
        if self.name == "cnn":
            self._validate_cnn(p)
        else:
            self._validate_unet(p)

    def _validate_cnn(self, p: str) -> None:
        check(
            len(self.hidden) >= 1 and all(h > 0 for h in self.hidden),
            f"{p}.hidden",
            f"must be a non-empty list of positive channel counts, got {list(self.hidden)}",
        )
        check(
            len(self.hidden) <= MAX_LAYERS,
            f"{p}.hidden",
            f"must have at most {MAX_LAYERS} layers, got {len(self.hidden)}",
        )
        for i, h in enumerate(self.hidden):
            check(h <= MAX_CHANNELS, f"{p}.hidden[{i}]", f"must be <= {MAX_CHANNELS} channels, got {h}")
        check(self.activation in ACTIVATIONS, f"{p}.activation", choice_msg(self.activation, ACTIVATIONS))
        for name in ("kernel_size", "last_kernel_size"):
            k = getattr(self, name)
            check(k > 0 and k % 2 == 1, f"{p}.{name}", f"must be a positive odd integer, got {k}")
            check(k <= MAX_KERNEL_SIZE, f"{p}.{name}", f"must be <= {MAX_KERNEL_SIZE} (the images are 28x28), got {k}")

    def _validate_unet(self, p: str) -> None:
        check(
            1 <= len(self.channel_mults) <= MAX_LEVELS,
            f"{p}.channel_mults",
            f"must be a list of 1 to {MAX_LEVELS} multipliers (one per resolution), got {list(self.channel_mults)}",
        )
        check(1 <= self.groups <= MAX_CHANNELS, f"{p}.groups", f"must be in [1, {MAX_CHANNELS}], got {self.groups}")
        check(
            1 <= self.base_channels <= MAX_CHANNELS,
            f"{p}.base_channels",
            f"must be in [1, {MAX_CHANNELS}], got {self.base_channels}",
        )
        # Every channel count is base_channels x an integer (and sums of those on the way
        # up), so base_channels divisible by groups is what GroupNorm needs everywhere.
        check(
            self.base_channels % self.groups == 0,
            f"{p}.groups",
            f"must divide every channel count, so base_channels ({self.base_channels}) too; got {self.groups}",
        )
        for i, m in enumerate(self.channel_mults):
            check(
                1 <= m and m * self.base_channels <= MAX_CHANNELS,
                f"{p}.channel_mults[{i}]",
                f"must be >= 1 with base_channels x it <= {MAX_CHANNELS}, got {m}",
            )
        check(
            1 <= self.res_blocks <= MAX_RES_BLOCKS,
            f"{p}.res_blocks",
            f"must be in [1, {MAX_RES_BLOCKS}], got {self.res_blocks}",
        )


def _plain(v):
    return list(v) if isinstance(v, tuple) else v
