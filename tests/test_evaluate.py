"""The evaluator: which sampler and how many steps evaluation samples take, one sampling
pass for cold-diffusion samples and reconstructions, and the same sample set whatever the
number of processes (real gloo process groups)."""

import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hpcdiff.config.spec import RunSpec
from hpcdiff.data import load_splits
from hpcdiff.evaluation.evaluate import Evaluator
from hpcdiff.resolve import validate_spec
from hpcdiff.science.diffusion import build_diffusion
from hpcdiff.science.models import build_model

TINY = {"model": {"hidden": [4]}, "data": {"name": "mnist-5k"}}


def _spec(**sections):
    return validate_spec(RunSpec.from_dict({**TINY, **sections}))


@pytest.fixture(scope="module")
def test_split():
    return load_splits(RunSpec().data).test


def _core(spec):
    torch.manual_seed(0)
    core = build_diffusion(spec, build_model(spec.model))
    calls = []
    core.denoiser.register_forward_hook(lambda *_: calls.append(1))
    return core, calls


def test_eval_spec_defaults_are_the_registered_defaults():
    """config/ is stdlib-only, so EvalSpec repeats the default metrics; the metrics register
    which of them are defaults, and this keeps the two one truth."""
    from hpcdiff.config.spec import EvalSpec
    from hpcdiff.evaluation.metrics import DEFAULT_METRICS, METRIC_INFO, METRICS

    assert EvalSpec().metrics == DEFAULT_METRICS
    assert set(METRIC_INFO) == set(METRICS.names())


def test_evaluator_loads_the_classifier_only_for_metrics_registered_as_needing_it(test_split, monkeypatch):
    from hpcdiff.evaluation import reference
    from hpcdiff.evaluation.metrics import METRIC_INFO, needs_classifier

    assert {n for n, i in METRIC_INFO.items() if i.needs_classifier} == {
        "fid_classifier",
        "kid_classifier",
        "inception_score",
        "class_histogram",
        "tsne_kl",
    }
    assert needs_classifier(["diversity", "kid_classifier"]) and not needs_classifier(["diversity", "ssim"])
    loaded = []
    monkeypatch.setattr(reference, "scoring_classifier", lambda *a, **k: loaded.append(1) or object())
    Evaluator(_spec(eval={"metrics": ["diversity"]}), test_split, "cpu")
    assert not loaded
    Evaluator(_spec(eval={"metrics": ["diversity", "inception_score"]}), test_split, "cpu")
    assert loaded == [1]


def test_gaussian_evaluation_uses_ddim_on_fifty_steps_by_default(test_split):
    spec = _spec(eval={"metrics": ["diversity"], "samples": 20})
    assert spec.eval.sampler == "ddim" and spec.eval.steps == 50 and spec.diffusion.n_T == 1000
    core, calls = _core(spec)
    out = Evaluator(spec, test_split, "cpu")(core, seed=0)
    assert len(calls) == 50 and out["diversity_trace"] > 0 and out["eval_seconds"] > 0


def test_evaluation_can_use_the_full_starter_sampler(test_split):
    spec = _spec(
        diffusion={"n_T": 30}, eval={"metrics": ["diversity"], "samples": 4, "sampler": "ancestral", "steps": 0}
    )
    core, calls = _core(spec)
    Evaluator(spec, test_split, "cpu")(core, seed=0)
    assert len(calls) == 30


def test_eval_sampler_must_fit_the_process():
    from hpcdiff.config.spec import SpecError

    with pytest.raises(SpecError) as err:
        _spec(eval={"sampler": "cold_alg2"})
    assert err.value.path == "eval.sampler" and "ddim" in str(err.value)
    with pytest.raises(SpecError) as err:
        _spec(eval={"sampler": "ddmi"})
    assert "did you mean 'ddim'" in str(err.value)


def test_cold_samples_double_as_reconstructions(test_split):
    """Started from degraded held-out images, one sampling pass gives the samples and the
    full reconstructions: steps + 1 (direct) forward passes, not 2 x steps + 1."""
    spec = _spec(degradation={"name": "blur"}, eval={"metrics": ["diversity"], "samples": 40, "steps": 5})
    assert spec.diffusion.n_T == 20 and spec.eval.sampler == "cold_alg2"
    core, calls = _core(spec)
    evaluator = Evaluator(spec, test_split, "cpu")
    out = evaluator(core, seed=0)
    assert len(calls) == 5 + 1
    for name in ("degraded", "direct", "full"):
        assert 0 <= out[f"recon_{name}_mse"] <= 1 and -1 <= out[f"recon_{name}_ssim"] <= 1
    # A blurred digit is far from its original, and the untrained restorer does not undo it.
    assert out["recon_degraded_mse"] > 0.005
    assert out["recon_full_mse"] != out["recon_direct_mse"]
    present = {k for k in out if k.startswith("recon_full_mse_class_")}
    assert len(present) == 10  # mnist-5k's test split is sorted by label: both halves need every digit
    assert set(evaluator.real_labels.tolist()) == set(range(10))


@pytest.mark.parametrize("name", ["impulse", "pixel_swap", "luminance_mask", "blur"])
def test_a_perfect_restorer_reconstructs_exactly_through_the_evaluator(name, test_split):
    """Stochastic degradations too: the start is degraded with level T's own draw, which
    Algorithm 2's first step subtracts again, so with skipped levels the samples are x0."""
    spec = _spec(degradation={"name": name}, eval={"metrics": [], "samples": 100, "steps": 7})
    core, _ = _core(spec)
    evaluator = Evaluator(spec, test_split, "cpu")
    truth = evaluator.starts[:100]

    class Oracle(torch.nn.Module):  # one chunk of 100: the starts in order
        def forward(self, x, t):
            return truth[: len(x)]

    core.denoiser = Oracle()
    out = evaluator(core, seed=0)
    assert out["recon_degraded_mse"] > 1e-3
    assert out["recon_direct_mse"] == pytest.approx(0.0, abs=1e-10)
    assert out["recon_full_mse"] == pytest.approx(0.0, abs=1e-10)


def _rank_samples(rank, world, port, spec_dict, queue):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        spec = RunSpec.from_dict(spec_dict)
        core, calls = _core(spec)
        test = load_splits(spec.data).test
        evaluator = Evaluator(spec, test, "cpu", main=rank == 0, rank=rank, world=world)
        samples = evaluator.samples(core, seed=3)
        metrics = evaluator(core, seed=3)
        # A numpy array is pickled by value; a tensor would travel as a shared-memory file
        # descriptor that the parent can only open while this process is still alive.
        queue.put((rank, samples.numpy(), metrics, len(calls)))
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_draw_the_same_samples_as_one(test_split):
    """Chunks have their own generators: two gloo processes, each drawing half, assemble
    exactly the sample set one process draws; only rank 0 returns metrics."""
    spec = _spec(diffusion={"n_T": 40}, eval={"metrics": ["diversity"], "samples": 300, "steps": 4})
    core, calls = _core(spec)
    evaluator = Evaluator(spec, test_split, "cpu")
    alone = evaluator.samples(core, seed=3)
    alone_metrics = evaluator(core, seed=3)
    assert alone.shape == (300, 1, 28, 28)

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_rank_samples, args=(r, 2, port, spec.to_dict(), queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = {}
    for _ in procs:
        rank, samples, metrics, n_calls = queue.get(timeout=300)
        results[rank] = (torch.from_numpy(samples), metrics, n_calls)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for rank in (0, 1):
        torch.testing.assert_close(results[rank][0], alone, rtol=0, atol=1e-5)
    assert results[0][1]["diversity_trace"] == pytest.approx(alone_metrics["diversity_trace"], rel=1e-5)
    assert results[1][1] == {}
    # 300 samples = 3 chunks of 128: rank 0 draws two of them, rank 1 one (x 4 steps x 2 calls).
    assert (results[0][2], results[1][2]) == (2 * 4 * 2, 1 * 4 * 2)


def test_configs_from_before_eval_steps_keep_their_method_and_auto_resolves(tiny_sweep, tmp_path):
    """A run directory written before eval.sampler/eval.steps existed evaluated with the
    run's own sampler on all steps: a resume keeps that, so one metric curve is one method.
    A config that says "auto" (edited by hand) is resolved at train time."""
    from hpcdiff.config import tomlio
    from hpcdiff.storage import archive
    from hpcdiff.training.loop import train

    from helpers import make_run_dir

    sweep = tiny_sweep(epochs=1)
    sweep.write_text(sweep.read_text().replace("metrics = []", 'metrics = ["diversity"]\nsamples = 8'))
    rd = make_run_dir(sweep, tmp_path / "runs")
    config = tomlio.load(rd.config_path)
    assert (config["eval"]["sampler"], config["eval"]["steps"]) == ("ddim", 50)
    del config["eval"]["sampler"], config["eval"]["steps"]
    rd.config_path.write_text(tomlio.dumps(config))
    legacy = rd.load_spec().eval
    assert (legacy.sampler, legacy.steps) == ("ancestral", 0)

    config["eval"]["sampler"] = "auto"
    rd.config_path.write_text(tomlio.dumps(config))
    assert train(rd.path) == "done"
    assert archive.read(rd.archive)["metrics"]["diversity_trace"][0] > 0


def test_metrics_score_the_images_not_the_samplers_overshoot(test_split):
    """An untrained DDPM's DDIM samples from n_T = 1000 overshoot [-0.5, 0.5] by orders of
    magnitude (x0 is divided by sqrt(alpha_bar_T) ~ 0.006); the evaluation samples and the
    metrics are those of the images a user sees, clamped to what an image can hold."""
    from hpcdiff.evaluation.metrics import MetricContext, compute_metrics

    spec = _spec(diffusion={"n_T": 1000}, eval={"metrics": ["diversity"], "samples": 64, "steps": 5})
    core, _ = _core(spec)
    evaluator = Evaluator(spec, test_split, "cpu")
    with torch.no_grad():
        raw = core.sample(
            torch.randn(64, 1, 28, 28, generator=torch.Generator().manual_seed(0)), sampler="ddim", steps=5
        )
    assert raw.abs().max() > 5.0  # the overshoot this test is about
    samples = evaluator.samples(core, seed=3)
    assert samples.min() >= -0.5 and samples.max() <= 0.5
    assert (samples.abs() == 0.5).any()  # clamped, not rescaled
    metrics = evaluator(core, seed=3)
    expected = compute_metrics(["diversity"], MetricContext(samples=samples, real=evaluator.real))
    assert metrics["diversity_trace"] == pytest.approx(expected["diversity_trace"], rel=1e-6)
