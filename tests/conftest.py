import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

# Tests run on 2 cores; keep torch from oversubscribing when pytest spawns trainings.
os.environ.setdefault("OMP_NUM_THREADS", "2")

from deps import missing_modules, skip_reason  # noqa: E402  (stdlib only)

# Without a core dependency every test module would fail to import: skip them instead, with
# a reason that says how to install what is missing. A whole-directory run collects only
# test_environment.py (one skip naming the modules); a test file named on the command line
# (which collect_ignore does not stop) is skipped as a module.
MISSING = missing_modules()
if MISSING:
    collect_ignore_glob = [p.name for p in Path(__file__).parent.glob("test_*.py") if p.name != "test_environment.py"]

    class _Skipped(pytest.Item):
        def runtest(self):
            pass

        def reportinfo(self):
            return self.path, 0, self.name

    class _MissingDependencies(pytest.Module):
        def collect(self):  # one skipped test in place of the module (0 tests would exit 5)
            item = _Skipped.from_parent(self, name="missing_dependencies")
            item.add_marker(pytest.mark.skip(reason=skip_reason(MISSING)))
            yield item

    def pytest_pycollect_makemodule(module_path, parent):
        if module_path.name != "test_environment.py":
            return _MissingDependencies.from_parent(parent, path=module_path)
else:
    from helpers import GPU_SKIP_REASON, TINY_BASE, TINY_DEFAULT_EVAL, gpu_test_device  # noqa: E402  (imports torch: after OMP_NUM_THREADS)

    def pytest_collection_modifyitems(config, items):
        """Tests marked gpu skip, saying why, where there is no CUDA (and no
        HPCDIFF_TEST_GPU_AS_CPU=1 to run them on the CPU)."""
        if gpu_test_device() is None:
            for item in items:
                if item.get_closest_marker("gpu") is not None:
                    item.add_marker(pytest.mark.skip(reason=GPU_SKIP_REASON))

    @pytest.fixture(scope="session")
    def test_device() -> str:
        """What a `gpu` test runs on: "cuda", or "cpu" under HPCDIFF_TEST_GPU_AS_CPU=1."""
        device = gpu_test_device()
        if device is None:
            pytest.skip(GPU_SKIP_REASON)
        return device


@pytest.fixture(scope="session", autouse=True)
def hpcdiff_cache(tmp_path_factory):
    """Classifiers and real-data statistics go to a per-session cache, not ~/.cache."""
    path = tmp_path_factory.mktemp("hpcdiff-cache")
    old = os.environ.get("HPCDIFF_CACHE")
    os.environ["HPCDIFF_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("HPCDIFF_CACHE", None)
    else:
        os.environ["HPCDIFF_CACHE"] = old


@pytest.fixture
def fashion_dir():
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    return FASHION_DIR


@pytest.fixture(scope="session")
def gpu_data_dir():
    """Real IDX files for the gpu tests: Debian's Fashion-MNIST where it is installed, else the
    full MNIST that the GPU machine's check (.gpu/check.sh) lays out under
    HPCDIFF_TEST_MNIST_ROOT."""
    if (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        return FASHION_DIR
    root = os.environ.get("HPCDIFF_TEST_MNIST_ROOT")
    raw = Path(root) / "MNIST" / "raw" if root else None
    if raw is not None and (raw / "train-images-idx3-ubyte").is_file():
        return raw
    pytest.skip(
        "no real IDX files: apt-get install dataset-fashion-mnist, or HPCDIFF_TEST_MNIST_ROOT=DIR "
        "holding DIR/MNIST/raw/train-images-idx3-ubyte (tests/fetch-full-mnist.sh DIR)"
    )


@pytest.fixture
def gpu_sweep(tmp_path, gpu_data_dir):
    """Write a tiny real sweep for the gpu tests (helpers.gpu_sweep_text) on gpu_data_dir;
    returns a function(name, device, **options) -> its file."""
    from helpers import gpu_sweep_text

    def make(name: str, device: str, **options) -> Path:
        path = tmp_path / f"{name}.toml"
        path.write_text(gpu_sweep_text(name, gpu_data_dir, device, **options))
        return path

    return make


@pytest.fixture(scope="session")
def fashion_classifier(hpcdiff_cache):
    """The Fashion-MNIST feature classifier that the default [eval] metrics of a tiny run need,
    trained once per session into the session's cache (as a run's first evaluation would)."""
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)")
    from hpcdiff.config.spec import DataSpec
    from hpcdiff.evaluation.classifier import get_classifier

    return get_classifier(DataSpec(name="idx", root=str(FASHION_DIR)), hpcdiff_cache, "cpu")


@pytest.fixture
def tiny_sweep(tmp_path, fashion_dir):
    """Write a tiny real sweep on Fashion-MNIST IDX files; returns a function(extra, **fmt).
    ``metrics=True`` keeps the default [eval] section (ask for ``fashion_classifier`` too, so
    that the classifier is trained once per session rather than by the run)."""

    def make(extra: str = "", *, epochs: int = 2, subset: int = 320, name: str = "tiny", metrics: bool = False) -> Path:
        path = tmp_path / f"{name}.toml"
        base = TINY_DEFAULT_EVAL if metrics else TINY_BASE
        path.write_text(base.format(root=fashion_dir, epochs=epochs, subset=subset) + extra)
        return path

    return make


# The real one-node SLURM cluster (slurm/dev-cluster.sh), started once per session by the
# tests that ask for it.
from slurm_cluster import slurm_cluster_fixture  # noqa: E402

slurm_cluster = pytest.fixture(scope="session")(slurm_cluster_fixture)


@pytest.fixture
def slurm_env(slurm_cluster, monkeypatch):
    for key, value in slurm_cluster.items():
        monkeypatch.setenv(key, value)
    return slurm_cluster
