"""Metrics on real data (mnist-5k shipped with hpcdiff, Fashion-MNIST IDX files): the classifier,
its cache, classifier-FID/KID/IS/histogram, diversity, SSIM/MSE tables, Inception FID's
offline behaviour and ``prepare``. The mnist-5k classifier is trained once per session
(through ``prepare``) into a temporary cache."""

import os

import pytest
import torch

from hpcdiff.config.spec import DataSpec
from hpcdiff.data import load_splits, to_model_range
from hpcdiff.evaluation import classifier as clf_mod
from hpcdiff.evaluation.assets import prepare
from hpcdiff.evaluation.classifier import (
    MissingAssetError,
    classifier_key,
    get_classifier,
    random_shift,
    train_classifier,
)
from hpcdiff.evaluation.metrics import (
    DEFAULT_METRICS,
    INCEPTION_WEIGHTS_FILE,
    METRICS,
    MetricContext,
    StatsCache,
    compute_metrics,
    frechet_distance,
    gaussian_fit,
    reconstruction_metrics,
    to_inception_input,
)

MNIST = DataSpec(name="mnist-5k")
CLF_EPOCHS = 6  # enough for >= 0.97 on mnist-5k's 500 held-out digits (the default is 40)
MNIST_MIN_ACCURACY = 0.95
FASHION_SUBSET, FASHION_EPOCHS, FASHION_MIN_ACCURACY = 8000, 4, 0.82  # full data, 5 epochs: 0.917


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("hpcdiff-cache")


@pytest.fixture(scope="session")
def prepared(cache_dir):
    """A classifier trained on mnist-5k (eval.classifier = "trained"): what these tests score
    with, and what runs scored before hpcdiff shipped its reference."""
    return prepare(
        [MNIST], cache_dir, inception=False, device="cpu", classifier_epochs=CLF_EPOCHS, trained=frozenset({"mnist-5k"})
    )


@pytest.fixture(scope="session")
def clf(prepared, cache_dir):
    return get_classifier(MNIST, cache_dir, "cpu", train_if_missing=False, epochs=CLF_EPOCHS)


@pytest.fixture(scope="session")
def mnist():
    """Held-out test digits (500, sorted by class) and 1,000 training digits, model range."""
    s = load_splits(DataSpec(name="mnist-5k", val_fraction=0.0))
    return {
        "test": to_model_range(s.test.images),
        "test_labels": s.test.labels,
        "train": to_model_range(s.train.images[:1000]),
        "train_labels": s.train.labels[:1000],
    }


@pytest.fixture(scope="session")
def stats():
    return StatsCache()


def ctx(samples, real, clf, stats=None, **kw):
    return MetricContext(samples=samples, real=real, classifier=clf, stats_cache=stats or StatsCache(), **kw)


# ----------------------------------------------------------------------------- classifier


def test_prepare_trains_and_caches_the_mnist_classifier(prepared, cache_dir, monkeypatch):
    (entry,) = prepared["datasets"]
    assert entry["name"] == "mnist-5k" and entry["test_accuracy"] >= MNIST_MIN_ACCURACY
    assert os.path.isfile(entry["classifier_path"])
    assert entry["classifier_path"].endswith(f"classifier-{entry['classifier_key']}.pt")
    assert prepared["inception"] is None
    # Idempotent: a second prepare finds the cached classifier and trains nothing.
    monkeypatch.setattr(clf_mod, "train_classifier", _no_training)
    again = prepare(
        [MNIST], cache_dir, inception=False, device="cpu", classifier_epochs=CLF_EPOCHS, trained=frozenset({"mnist-5k"})
    )
    assert again["datasets"][0]["classifier_key"] == entry["classifier_key"]


def test_prepare_trains_nothing_where_a_reference_ships(tmp_path, monkeypatch):
    monkeypatch.setattr(clf_mod, "train_classifier", _no_training)
    (entry,) = prepare([MNIST], tmp_path, inception=False, device="cpu")["datasets"]
    assert entry["classifier_key"] == "mnist-reference-v1" and entry["test_accuracy"] >= 0.99
    assert entry["classifier_path"].endswith("classifier-mnist-reference-v1.pt") and list(tmp_path.iterdir()) == []


def _no_training(*args, **kwargs):
    raise AssertionError("the classifier was trained again instead of loaded from the cache")


def test_mnist_classifier_accuracy_on_held_out_digits(clf, mnist):
    assert clf.test_accuracy >= MNIST_MIN_ACCURACY
    _, logits = clf.outputs(mnist["test"])
    acc = (logits.argmax(1) == mnist["test_labels"]).float().mean().item()
    assert acc == pytest.approx(clf.test_accuracy, abs=1e-6)
    feats, _ = clf.outputs(mnist["test"][:7])
    assert feats.shape == (7, 128) and logits.shape == (500, 10)


def test_fashion_classifier_accuracy_on_held_out_test_set(fashion_dir):
    spec = DataSpec(name="idx", root=str(fashion_dir), subset=FASHION_SUBSET)
    model, acc = train_classifier(spec, epochs=FASHION_EPOCHS, batch_size=128, device="cpu", seed=0)
    # Measured on all 10,000 held-out test images.
    assert acc >= FASHION_MIN_ACCURACY, acc


def test_default_classifier_reaches_99_percent_on_full_mnist(tmp_path):
    """The issue's aim, on the real 60,000 + 10,000 digits through torchvision's MNIST loader,
    with hpcdiff's default recipe (5 epochs of 60k images, about 2 minutes on 2 cores)."""
    root = os.environ.get("HPCDIFF_TEST_MNIST_ROOT")
    if not root or not os.path.isfile(os.path.join(root, "MNIST", "raw", "train-images-idx3-ubyte")):
        pytest.skip("full MNIST not present: tests/fetch-full-mnist.sh DIR and HPCDIFF_TEST_MNIST_ROOT=DIR")
    model = get_classifier(DataSpec(name="mnist", root=root), tmp_path, "cpu", train_if_missing=True)
    assert model.test_accuracy >= 0.99, model.test_accuracy


def test_second_get_classifier_loads_instead_of_training(clf, cache_dir, monkeypatch):
    path = cache_dir / f"classifier-{clf.cache_key}.pt"
    mtime = path.stat().st_mtime_ns
    monkeypatch.setattr(clf_mod, "train_classifier", _no_training)
    again = get_classifier(MNIST, cache_dir, "cpu", train_if_missing=True, epochs=CLF_EPOCHS)
    assert again.cache_key == clf.cache_key and again.test_accuracy == clf.test_accuracy
    for (k, a), (_, b) in zip(clf.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    assert path.stat().st_mtime_ns == mtime
    # The run's subset/val split do not matter: the classifier belongs to the dataset.
    assert (
        get_classifier(DataSpec(name="mnist-5k", subset=300, val_fraction=0.5), cache_dir, epochs=CLF_EPOCHS).cache_key
        == clf.cache_key
    )


def test_cache_key_names_what_produced_the_classifier(fashion_dir, clf):
    fashion = DataSpec(name="idx", root=str(fashion_dir))
    assert classifier_key(MNIST, epochs=CLF_EPOCHS) == clf.cache_key
    assert classifier_key(fashion, epochs=CLF_EPOCHS) != clf.cache_key
    assert classifier_key(MNIST, epochs=CLF_EPOCHS + 1) != clf.cache_key
    assert classifier_key(MNIST, epochs=CLF_EPOCHS, seed=1) != clf.cache_key


def test_missing_classifier_names_hpcdiff_prepare(tmp_path, monkeypatch):
    monkeypatch.setattr(clf_mod, "train_classifier", _no_training)
    with pytest.raises(MissingAssetError, match="hpcdiff prepare"):
        get_classifier(MNIST, tmp_path, "cpu", train_if_missing=False)
    assert list(tmp_path.iterdir()) == []


def test_missing_dataset_for_classifier_names_hpcdiff_prepare(tmp_path):
    with pytest.raises(MissingAssetError, match="hpcdiff prepare"):
        get_classifier(DataSpec(name="mnist", root=str(tmp_path / "nothing")), tmp_path, "cpu")


def test_random_shift_moves_whole_images():
    x = torch.full((4, 1, 28, 28), -0.5)
    x[:, :, 10:18, 10:18] = 0.5
    g = torch.Generator().manual_seed(0)
    y = random_shift(x, 2, g)
    assert y.shape == x.shape
    assert torch.equal((y > 0).sum((1, 2, 3)), torch.full((4,), 64))  # moved, never cut or wrapped


# ---------------------------------------------------------------------------------- FID


def test_fid_of_a_set_against_itself_is_zero(clf, mnist, stats):
    out = compute_metrics(["fid_classifier"], ctx(mnist["train"], mnist["train"], clf, stats))
    assert abs(out["fid_classifier"]) < 1e-3
    f = torch.randn(400, 16, dtype=torch.float64)
    mu, s = gaussian_fit(f)
    assert frechet_distance(mu, s, mu + 1.0, s) == pytest.approx(16.0, rel=1e-9)


def test_fid_grows_monotonically_with_added_noise(clf, mnist, stats):
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(mnist["train"].shape, generator=g)
    fids = []
    for sigma in (0.0, 0.05, 0.1, 0.2, 0.4):
        noisy = (mnist["train"] + sigma * noise).clamp(-0.5, 0.5)
        fids.append(compute_metrics(["fid_classifier"], ctx(noisy, mnist["test"], clf, stats))["fid_classifier"])
    assert all(a < b for a, b in zip(fids, fids[1:])), fids
    assert fids[0] < 0.05 * fids[-1]  # another draw of real digits is close to the test digits


def test_real_statistics_are_cached_by_what_produced_them(clf, mnist, tmp_path):
    cache = StatsCache(tmp_path)
    compute_metrics(["fid_classifier"], ctx(mnist["train"], mnist["test"], clf, cache))
    compute_metrics(["fid_classifier", "kid_classifier"], ctx(mnist["train"][:500], mnist["test"], clf, cache))
    assert cache.computed == 1
    # Another real set (same size) is another entry, never a stale hit.
    compute_metrics(["fid_classifier"], ctx(mnist["train"], mnist["train"][:500], clf, cache))
    assert cache.computed == 2
    # On disk, keyed by the content description: a fresh cache on the same folder loads.
    fresh = StatsCache(tmp_path)
    compute_metrics(["fid_classifier"], ctx(mnist["train"], mnist["test"], clf, fresh))
    assert fresh.computed == 0 and len(list(tmp_path.glob("stats-*.pt"))) == 2


def test_kid_is_small_for_real_digits_and_large_for_noisy_ones(clf, mnist, stats):
    noisy = (mnist["train"] + 0.4 * torch.randn(mnist["train"].shape)).clamp(-0.5, 0.5)
    real = compute_metrics(["kid_classifier"], ctx(mnist["train"], mnist["test"], clf, stats))
    bad = compute_metrics(["kid_classifier"], ctx(noisy, mnist["test"], clf, stats))
    assert bad["kid_classifier"] > 10 * abs(real["kid_classifier"])


# ------------------------------------------------------------------------ IS, histogram


def test_inception_score_in_range_and_higher_for_real_than_noise(clf, mnist, stats):
    real = compute_metrics(["inception_score"], ctx(mnist["test"], None, clf, stats))
    noise = torch.rand(500, 1, 28, 28, generator=torch.Generator().manual_seed(1)) - 0.5
    fake = compute_metrics(["inception_score"], ctx(noise, None, clf, stats))
    for r in (real, fake):
        assert 1.0 - 1e-9 <= r["inception_score"] <= 10.0 + 1e-9
    assert real["inception_score"] > 7.0 > 2.0 > fake["inception_score"]
    assert real["inception_score_std"] >= 0


def test_class_histogram_sums_to_one_and_concentrates_on_a_single_class(clf, mnist, stats):
    threes = mnist["test"][mnist["test_labels"] == 3]
    h = compute_metrics(["class_histogram"], ctx(threes, None, clf, stats))
    fractions = [h[f"class_{c}"] for c in range(10)]
    assert sum(fractions) == pytest.approx(1.0)
    assert h["class_3"] >= 0.9 and h["class_entropy"] < 0.3
    mixed = compute_metrics(["class_histogram"], ctx(mnist["test"], None, clf, stats))
    assert sum(mixed[f"class_{c}"] for c in range(10)) == pytest.approx(1.0)
    assert mixed["class_entropy"] > 0.95  # 50 of each digit


def test_diversity_of_real_digits_exceeds_copies_of_one(mnist):
    real = compute_metrics(["diversity"], MetricContext(samples=mnist["test"]))["diversity_trace"]
    copies = compute_metrics(["diversity"], MetricContext(samples=mnist["test"][:1].repeat(100, 1, 1, 1)))
    assert copies["diversity_trace"] == pytest.approx(0.0, abs=1e-12)
    # Report B's traces (56.7, 69.9, 49.1, 41.5) are on this scale: intensity range = 1.
    assert 30.0 < real < 80.0


def test_default_metric_set_runs_on_a_classifier_context(clf, mnist, stats):
    out = compute_metrics(DEFAULT_METRICS, ctx(mnist["train"], mnist["test"], clf, stats))
    assert {"fid_classifier", "inception_score", "class_entropy", "diversity_trace"} <= set(out)
    assert all(isinstance(v, float) for v in out.values())
    # Every series a metric writes is declared in the catalog as that metric's, with its direction.
    from hpcdiff.config.catalog import series_facts

    assert {k: series_facts(k).metric for k in out} == {
        k: next(m for m in DEFAULT_METRICS if k.startswith(m[:5])) for k in out
    }
    with pytest.raises(KeyError, match="did you mean 'fid_classifier'"):
        compute_metrics(["fid_clasifier"], ctx(mnist["train"], mnist["test"], clf, stats))
    with pytest.raises(ValueError, match="classifier"):
        compute_metrics(["fid_classifier"], MetricContext(samples=mnist["train"], real=mnist["test"]))
    assert {
        "fid_classifier",
        "kid_classifier",
        "inception_score",
        "class_histogram",
        "diversity",
        "fid_inception",
        "ssim",
    } <= set(METRICS.names())


# ------------------------------------------------------------------------- SSIM and MSE


def test_ssim_and_per_class_reconstruction_table(mnist):
    truth, labels = mnist["test"], mnist["test_labels"]
    assert compute_metrics(["ssim"], MetricContext(samples=truth, real=truth))["ssim"] == pytest.approx(1.0)
    blurred = torch.nn.functional.avg_pool2d(truth, 3, stride=1, padding=1, count_include_pad=False)
    perfect = reconstruction_metrics(truth, truth, labels)
    worse = reconstruction_metrics(blurred, truth, labels)
    assert perfect["mse"] == 0.0 and perfect["ssim"] == pytest.approx(1.0)
    assert 0.0 < worse["mse"] < 0.1 and worse["ssim"] < 0.95
    assert {f"mse_class_{c}" for c in range(10)} <= set(worse)
    # Per-class values average back to the overall one (50 digits per class).
    assert sum(worse[f"mse_class_{c}"] for c in range(10)) / 10 == pytest.approx(worse["mse"])
    assert compute_metrics(["ssim"], MetricContext(samples=blurred, real=truth))["ssim"] == pytest.approx(
        worse["ssim"], rel=1e-4
    )


# ------------------------------------------------------------------------- Inception FID


def test_inception_input_shifts_before_uint8():
    x = torch.tensor([-0.5, -0.25, 0.0, 0.5, -0.9, 0.9]).reshape(1, 1, 1, 6)
    u8 = to_inception_input(x)
    assert u8.dtype == torch.uint8 and u8.shape == (1, 3, 1, 6)
    assert u8[0, 0, 0].tolist() == [0, 64, 128, 255, 0, 255]
    assert torch.equal(u8[:, 0], u8[:, 1]) and torch.equal(u8[:, 0], u8[:, 2])
    # The public-code bug this guards against: -0.25 * 255 wraps to 193 instead of 64.
    assert (x * 255).to(torch.uint8)[0, 0, 0, 1].item() != 64


@pytest.fixture
def no_downloads(monkeypatch, tmp_path):
    """Empty hpcdiff cache and torch hub; any attempt to download fails the test."""
    monkeypatch.setenv("HPCDIFF_CACHE", str(tmp_path / "hpcdiff"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def download(*args, **kwargs):
        raise AssertionError("fid_inception tried to download weights")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", download)
    try:
        import torch_fidelity.feature_extractor_inceptionv3 as fe

        monkeypatch.setattr(fe, "load_state_dict_from_url", download)
    except ImportError:
        pass
    return tmp_path


def test_fid_inception_without_weights_is_a_clear_error(mnist, no_downloads):
    with pytest.raises(MissingAssetError, match="hpcdiff prepare") as err:
        compute_metrics(["fid_inception"], MetricContext(samples=mnist["test"][:10], real=mnist["test"][:10]))
    assert INCEPTION_WEIGHTS_FILE in str(err.value)
    assert str(no_downloads / "hpcdiff" / "inception") in str(err.value)
    assert not (no_downloads / "torch").exists()


def _stand_in_inception_weights(path):
    """He-initialised weights of torch-fidelity's Inception-v3 (not the real ones, which
    cannot be downloaded here), saved as the real file is: a state dict."""
    fe = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    from unittest import mock

    # Stand-in: building the network would fetch the real weights; skip that load.
    with (
        mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}),
        mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, sd: None),
    ):
        net = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.manual_seed(0)
    for m in net.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            torch.nn.init.kaiming_normal_(m.weight)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return path


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on loopback serving tmp_path/www."""
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_prepare_downloads_inception_weights_over_http(http_server, tmp_path, monkeypatch):
    """The real download code (torch.hub over HTTP) from a mirror URL, checked by loading the
    file into torchmetrics' network before it is cached; a second prepare reuses it."""
    from hpcdiff.evaluation.assets import prepare_inception

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    root, base = http_server
    served = _stand_in_inception_weights(root / "mirror" / INCEPTION_WEIGHTS_FILE)
    cache = tmp_path / "cache"
    report = prepare_inception(cache, url=f"{base}/mirror/{INCEPTION_WEIGHTS_FILE}")
    target = cache / "inception" / INCEPTION_WEIGHTS_FILE
    assert report["downloaded"] and report["path"] == str(target)
    assert target.read_bytes() == served.read_bytes()
    assert sorted(p.name for p in target.parent.iterdir()) == [INCEPTION_WEIGHTS_FILE]
    again = prepare_inception(cache, url=f"{base}/gone")
    assert not again["downloaded"] and again["sha256"] == report["sha256"]


@pytest.mark.parametrize("problem", ["not found", "not weights", "truncated"])
def test_prepare_inception_failures_cache_nothing(problem, http_server, tmp_path, monkeypatch):
    from hpcdiff.evaluation.assets import prepare_inception

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    root, base = http_server
    name = "weights.pth"
    if problem == "not weights":
        (root / name).write_text("<html>rate limited</html>")
    elif problem == "truncated":
        full = _stand_in_inception_weights(tmp_path / "full.pth").read_bytes()
        (root / name).write_bytes(full[: len(full) // 2])
    cache = tmp_path / "cache"
    with pytest.raises(MissingAssetError) as err:
        prepare_inception(cache, url=f"{base}/{name}")
    assert f"{base}/{name}" in str(err.value)
    if problem == "not found":
        assert "--inception-url" in str(err.value)
    assert not any(p.is_file() for p in cache.rglob("*"))


def test_fid_inception_uses_cached_weights_without_network(mnist, no_downloads):
    """Stand-in weights at the hpcdiff cache path: the whole torchmetrics path runs
    offline, with the shifted uint8 3-channel input."""
    _stand_in_inception_weights(no_downloads / "hpcdiff" / "inception" / INCEPTION_WEIGHTS_FILE)

    real = mnist["test"][::50]  # 10 digits: Inception at 299x299 is slow on CPU
    noisy = (real + 0.4 * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))).clamp(-0.5, 0.5)
    cache = StatsCache()
    same = compute_metrics(["fid_inception"], MetricContext(samples=real, real=real, stats_cache=cache))
    other = compute_metrics(["fid_inception"], MetricContext(samples=noisy, real=real, stats_cache=cache))
    assert cache.computed == 1  # the real features were extracted once
    assert abs(same["fid_inception"]) < 1e-3 * other["fid_inception"]


def test_training_a_classifier_leaves_the_callers_rng_alone(mnist):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    train_classifier(MNIST, epochs=1, data=(_tiny(mnist), _tiny(mnist)))
    assert torch.equal(torch.rand(3), expected)


def _tiny(mnist):
    from hpcdiff.data import Dataset, to_uint8

    return Dataset(to_uint8(mnist["test"][:256]), mnist["test_labels"][:256])


def test_tsne_kl_small_for_real_digits_and_large_for_noise(clf, mnist, stats):
    """Report B's t-SNE + 10-component GMM KL: held-out real digits against real digits are
    close; uniform noise images are far."""
    pytest.importorskip(
        "sklearn",
        reason="scikit-learn (the test extra) is not installed: "
        "bash tests/run.sh installs it (or pip install -e '.[test]')",
    )
    real = compute_metrics(["tsne_kl"], ctx(mnist["train"][:200], mnist["test"], clf, stats))
    noise = torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(2)) - 0.5
    fake = compute_metrics(["tsne_kl"], ctx(noise, mnist["test"], clf, stats))
    assert real["tsne_kl"] >= -0.5  # a Monte Carlo estimate of a KL: >= 0 up to sampling error
    assert fake["tsne_kl"] > 3 * max(real["tsne_kl"], 0.5)


def test_classifier_loads_onto_accelerates_cpu_device(clf, cache_dir):
    """Under DDP without a GPU, Accelerate's device is ``cpu:0``: the cached classifier loads
    there and gives the same outputs as on ``cpu``."""
    from hpcdiff.evaluation.classifier import load_classifier

    path = clf_mod.classifier_path(cache_dir, clf.cache_key)
    on_cpu0 = load_classifier(path, torch.device("cpu", 0))
    x = torch.rand(4, 1, 28, 28) - 0.5
    assert torch.equal(on_cpu0.outputs(x)[1], clf.outputs(x)[1])


_TRAIN_OR_LOAD = """
import sys, hashlib
from hpcdiff.config.spec import DataSpec
from hpcdiff.evaluation.classifier import get_classifier
model = get_classifier(DataSpec(name="mnist-5k"), sys.argv[1], "cpu", epochs=2,
                       log=lambda msg: print("TRAINED", msg, flush=True))
digest = hashlib.sha256(b"".join(v.numpy().tobytes() for v in model.state_dict().values()))
print("WEIGHTS", digest.hexdigest())
"""


def test_runs_starting_together_train_the_classifier_once(tmp_path):
    """A sweep's first runs start at once on a fresh cache: one process trains the
    classifier, the others wait for its file and load the same weights (without the lock
    each would see no file and train its own)."""
    import subprocess
    import sys

    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _TRAIN_OR_LOAD, str(tmp_path)],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    assert sum("TRAINED" in out for out in outs) == 1, outs
    weights = {line for out in outs for line in out.splitlines() if line.startswith("WEIGHTS")}
    assert len(weights) == 1, outs
    assert len(list(tmp_path.glob("classifier-*.pt"))) == 1
