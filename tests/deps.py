"""What the tests need installed, checked without importing any of it (stdlib only), so
that conftest.py can skip the tests instead of failing to collect them."""

import importlib.util

# hpcdiff's dependencies (pyproject.toml) as import names, plus PIL, which the analysis
# tests import (matplotlib and torchvision bring it).
CORE_MODULES = (
    "torch",
    "torchvision",
    "h5py",
    "submitit",
    "accelerate",
    "click",
    "rich",
    "numpy",
    "torchmetrics",
    "matplotlib",
    "torch_fidelity",
    "PIL",
    "pandas",
    "tabulate",
    "jinja2",
    "pytorch_msssim",
)
SETUP_HINT = "bash tests/run.sh installs them (or pip install -e '.[test]')"


def missing_modules(names=CORE_MODULES) -> list[str]:
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # a finder that refuses it, a broken package
            found = False
        if not found:
            missing.append(name)
    return missing


def skip_reason(missing) -> str:
    return f"missing {', '.join(missing)}: {SETUP_HINT}"
