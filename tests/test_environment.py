"""The test set-up itself: missing dependencies skip (never a collection error), and the
README's test command is the one CI runs. Imports nothing outside the stdlib and pytest."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deps import missing_modules, skip_reason

ROOT = Path(__file__).resolve().parent.parent

# A sitecustomize.py that makes one module look uninstalled.
BLOCKER = """
import sys

class _Block:
    def find_spec(self, name, path=None, target=None):
        if name == {name!r} or name.startswith({name!r} + "."):
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None

sys.meta_path.insert(0, _Block())
"""


def test_core_dependencies_are_installed():
    missing = missing_modules()
    if missing:
        pytest.skip(skip_reason(missing))


@pytest.mark.parametrize("args", [["tests/test_archive.py"], []], ids=["named-file", "whole-suite"])
def test_a_missing_dependency_skips_with_how_to_install_it(args, tmp_path):
    if missing_modules():  # also what stops this test from running itself again below
        pytest.skip(skip_reason(missing_modules()))
    (tmp_path / "sitecustomize.py").write_text(BLOCKER.format(name="h5py"))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tmp_path)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "ERROR collecting" not in out and "error" not in out.splitlines()[-1], out
    skipped = [line for line in out.splitlines() if line.startswith("SKIPPED")]
    assert skipped and all("missing h5py" in line and "bash tests/run.sh" in line for line in skipped), out
    if args:
        assert out.splitlines()[-1].startswith("1 skipped"), out  # the module, not run


def _readme_test_command() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Running the tests", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", section, re.S)
    assert block, "no fenced block under 'Running the tests'"
    (command,) = [line.strip() for line in block.group(1).splitlines() if line.strip()]
    return command


def test_readme_test_command_is_what_ci_runs():
    lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    last = [line for line in lines if line and not line.startswith("#")][-1]
    assert last == _readme_test_command() == "bash tests/run.sh"
    assert (ROOT / "tests" / "run.sh").stat().st_mode & 0o111  # executable as well
