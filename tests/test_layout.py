"""The package layout keeps its promises: imports point down the layers of ARCHITECTURE.md,
commands that only read files do not import torch, modules stay small."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hpcdiff"

# ARCHITECTURE.md's layers: a module may import its own layer and the ones below, never above.
LAYERS = {
    "config": 0,
    "data": 1,
    "science": 1,
    "storage": 1,
    "evaluation": 2,
    "resolve": 3,
    "training": 3,
    "launch": 4,
    "analysis": 4,
    "bench": 4,
    "cli": 5,
    "cli_bench": 5,
    "cli_assets": 5,
    "__main__": 5,
}


def _concern(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "hpcdiff" or len(parts) < 2:
        return None
    return parts[1]


def _imports(path: Path):
    """Every hpcdiff module a file imports, at the top or inside functions."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "hpcdiff":
                for alias in node.names:
                    yield f"hpcdiff.{alias.name}", node.lineno
            else:
                yield node.module, node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno


def _modules():
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        yield ".".join(rel.parts).replace(".__init__", ""), path


def test_imports_point_down_the_layers():
    wrong = []
    for module, path in _modules():
        own = _concern(module)
        if own is None:
            continue
        for target, line in _imports(path):
            other = _concern(target)
            if other is None or other == "__version__" or other == own:
                continue
            if LAYERS[other] > LAYERS[own]:
                wrong.append(
                    f"{path.relative_to(PACKAGE.parent)}:{line} ({own}, layer {LAYERS[own]}) "
                    f"imports {target} (layer {LAYERS[other]})"
                )
    assert not wrong, "\n".join(wrong)


def test_every_module_belongs_to_a_layer():
    concerns = {_concern(m) for m, _ in _modules()} - {None}
    assert concerns <= set(LAYERS), concerns - set(LAYERS)


def test_config_is_stdlib_only():
    for path in (PACKAGE / "config").glob("*.py"):
        for target, line in _imports(path):
            root = target.split(".")[0]
            assert root not in ("torch", "numpy", "h5py", "accelerate", "submitit"), f"{path}:{line} {target}"


@pytest.mark.parametrize("args", [["--help"], ["status", "SWEEP"], ["sweep", "--help"]])
def test_file_reading_commands_do_not_import_torch(args, tmp_path):
    """A login node answers `hpcdiff status` in well under a second: no torch import."""
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    args = [str(sweep) if a == "SWEEP" else a for a in args]
    code = (
        "import sys\nfrom hpcdiff.cli import main\n"
        f"try:\n    main({args!r})\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = [m for m in ('torch', 'h5py', 'accelerate', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_modules_stay_small():
    """ARCHITECTURE.md: no module over 400 lines."""
    big = {str(p.relative_to(PACKAGE.parent)): n for _, p in _modules() if (n := len(p.read_text().splitlines())) > 400}
    assert not big, big
