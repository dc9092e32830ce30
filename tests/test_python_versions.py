"""requires-python says 3.10: the oldest supported Python compiles every module, imports the
package and its stdlib-only config layer, and reads and checks every shipped sweep file.

The suite itself runs on one Python (CI's); this is the cheap check on the oldest one, without
torch (a 3.10 torch is gigabytes): what it proves is that nothing newer than 3.10 is used in
the syntax and in the layer that reads sweeps (tomllib came in 3.11: tomli stands in)."""

import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _oldest_supported() -> str:
    text = (ROOT / "pyproject.toml").read_text()
    return re.search(r'requires-python\s*=\s*">=\s*(\d+\.\d+)"', text).group(1)


def _interpreter(version: str) -> str | None:
    """A Python of that version that runs (a pyenv shim may exist for a version it will not
    select)."""
    pyenv_root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    candidates = sorted(glob.glob(os.path.join(pyenv_root, "versions", f"{version}.*", "bin", "python")))[::-1]
    candidates += [p for p in [shutil.which(f"python{version}")] if p]
    for python in candidates:
        if subprocess.run([python, "-c", "pass"], capture_output=True).returncode == 0:
            return python
    return None


CHECK = r"""
import sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
assert sys.version_info[:2] == tuple(map(int, sys.argv[2].split("."))), sys.version
for path in sorted(Path("hpcdiff").rglob("*.py")):
    compile(path.read_text(), str(path), "exec", dont_inherit=True)
import hpcdiff
from hpcdiff.config import tomlio
from hpcdiff.config.spec import RunSpec
from hpcdiff.config.sweep import load_sweep
assert "torch" not in sys.modules
counts = {}
for job in sorted(Path("jobs").glob("*.toml")):
    counts[job.stem] = len(load_sweep(job, resolve=lambda spec: spec).runs)
print(counts)
"""


def test_oldest_supported_python_imports_and_reads_every_sweep(tmp_path):
    version = _oldest_supported()
    assert version == "3.10"  # the control below is written for 3.10's missing tomllib
    python = _interpreter(version)
    if python is None:
        pytest.skip(f"no Python {version} on this machine (looked on PATH and in pyenv)")
    site = tmp_path / "site"
    # The dependencies the stdlib-only layer has on 3.10, as pyproject.toml states them.
    pip = subprocess.run(
        [python, "-m", "pip", "install", "--quiet", "--target", str(site), "tomli>=1.1"], capture_output=True, text=True
    )
    assert pip.returncode == 0, pip.stderr
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1"}
    env.pop("PYTHONPATH", None)
    run = subprocess.run([python, "-c", CHECK, str(site), version], cwd=ROOT, capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    counts = eval(run.stdout.strip().splitlines()[-1])  # a dict literal printed by CHECK
    assert counts["quick"] >= 1 and counts["part2"] >= 1 and len(counts) == len(list((ROOT / "jobs").glob("*.toml")))
    # The control: without tomli, 3.10 has no TOML parser and the package's config layer fails.
    bare = subprocess.run(
        [python, "-c", CHECK, str(tmp_path / "empty"), version], cwd=ROOT, capture_output=True, text=True, env=env
    )
    assert bare.returncode != 0 and "tomli" in bare.stderr
    assert sys.version_info[:2] >= (3, 10)
