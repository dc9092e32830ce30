"""hpcdiff: sweeps of diffusion models on HPC clusters.

In a notebook: ``hpcdiff.load_results("runs/part2")`` (one row per run, a pandas DataFrame)
and ``hpcdiff.load_run(run_dir)`` (per-epoch metrics, sample grids, resolved config). They
are imported on first use, and never import torch.
"""

__version__ = "0.1.0"

# The notebook API, imported lazily: `import hpcdiff` (every `hpcdiff` command, every job)
# stays free of pandas and h5py.
_NOTEBOOK_API = {"load_results", "load_run"}


def __getattr__(name):
    if name in _NOTEBOOK_API:
        from hpcdiff.analysis import frames

        return getattr(frames, name)
    raise AttributeError(f"module 'hpcdiff' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_NOTEBOOK_API])
