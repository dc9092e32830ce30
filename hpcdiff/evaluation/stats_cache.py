"""Real-data statistics computed once and kept (in memory, and on disk with a directory):
the metrics' cache of feature means and covariances, keyed by what produced them."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch

from hpcdiff.evaluation.classifier import hash_key
from hpcdiff.storage.checkpoint import save_object


class StatsCache:
    """Real-data statistics keyed by a description of what produced them.

    ``get(info, compute)`` hashes the JSON of ``info`` (e.g. classifier key + real-set identity
    + n); tensors are kept in memory and, with a ``directory``, in ``stats-<hash>.pt`` files
    that also hold ``info`` (checked on load). ``memo(info, build)`` keeps arbitrary objects
    (e.g. a torchmetrics FID holding the real Inception features) in memory only."""

    def __init__(self, directory=None):
        self.directory = Path(directory).expanduser() if directory is not None else None
        self._mem: dict[str, object] = {}
        self.computed = 0  # how many times a value had to be computed (tests, logs)

    def get(self, info: dict, compute: Callable[[], dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        info_json = json.dumps(info, sort_keys=True)
        key = hash_key(info, 16)
        if key in self._mem:
            return self._mem[key]  # type: ignore[return-value]
        path = self.directory / f"stats-{key}.pt" if self.directory is not None else None
        if path is not None and path.is_file():
            blob = torch.load(path, map_location="cpu", weights_only=True)
            if blob.get("info_json") == info_json:
                self._mem[key] = blob["tensors"]
                return blob["tensors"]
        value = {k: v.detach().cpu() for k, v in compute().items()}
        self.computed += 1
        self._mem[key] = value
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_object({"info_json": info_json, "tensors": value}, path)
        return value

    def memo(self, info: dict, build: Callable[[], object]) -> object:
        key = "obj-" + hash_key(info, 16)
        if key not in self._mem:
            self._mem[key] = build()
            self.computed += 1
        return self._mem[key]
