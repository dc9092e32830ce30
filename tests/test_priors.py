"""Level-T priors (sample_start = "prior"): which settings may generate, what "auto" picks,
starts that look like level T without any test image, and one fit per run, saved and reused."""

import h5py
import pytest
import torch

from hpcdiff.config.spec import DataSpec, ModelSpec, RunSpec, SpecError, start_measures
from hpcdiff.data import load_splits, to_model_range
from hpcdiff.resolve import validate_spec
from hpcdiff.science.diffusion import ColdDiffusion
from hpcdiff.science.image_ops import pixelate
from hpcdiff.science.models import build_model
from hpcdiff.science.priors import LevelPrior


def _spec(name, params=None, **diffusion):
    return validate_spec(
        RunSpec.from_dict({"degradation": {"name": name, "params": params or {}}, "diffusion": diffusion})
    )


@pytest.mark.parametrize(
    "name, params, n_T, fix",
    [
        ("impulse", {"rho_end": 0.25}, 150, "rho_end = 0.5"),
        ("inpaint", {}, 50, "max_sigma >= 42"),
        ("downsample", {"max_factor": 3}, 20, "max_factor >= 4"),
        ("blur", {"sigma": 2.0}, 20, "n_T >= "),
        ("pixel_swap", {}, 100, "no pixel_swap setting forgets"),
        ("luminance_mask", {}, 100, "no luminance_mask setting"),
    ],
)
def test_prior_is_rejected_where_level_T_still_shows_the_digit(name, params, n_T, fix):
    with pytest.raises(SpecError, match="would not be a generation") as err:
        _spec(name, params, n_T=n_T, sample_start="prior")
    assert fix in str(err.value) and err.value.path == "diffusion.sample_start"


@pytest.mark.parametrize(
    "name, params, n_T",
    [
        ("impulse", {"rho_end": 0.5}, 150),
        ("inpaint", {"max_sigma": 42.0}, 50),
        ("blur", {}, 20),
        ("downsample", {"max_factor": 7}, 20),
    ],
)
def test_prior_is_accepted_where_level_T_forgets_the_digit_and_auto_keeps_its_run_ids(name, params, n_T):
    """ "prior" generates where level T forgets the digit; "auto" still restores test images
    (labelled as restorations), so the run ids of existing sweeps do not change."""
    assert _spec(name, params, n_T=n_T, sample_start="prior").diffusion.sample_start == "prior"
    assert start_measures("prior") == "generation"
    assert _spec(name, params, n_T=n_T).diffusion.sample_start == "degraded_test"
    assert start_measures("degraded_test") == "restoration"
    assert validate_spec(RunSpec()).diffusion.sample_start == "noise"


@pytest.fixture(scope="module")
def train_images():
    return to_model_range(load_splits(DataSpec(name="mnist-5k")).train.images)


def _fitted(name, params, n_T, train_images):
    spec = _spec(name, params, n_T=n_T, sample_start="prior")
    cd = ColdDiffusion(
        build_model(ModelSpec(hidden=(4,))),
        degradation=name,
        schedule=spec.degradation.schedule,
        params=params,
        n_T=n_T,
        sample_start="prior",
        start_noise=0.002,
    )
    cd.prior = cd.fit_prior(train_images, seed=0)
    return cd


def test_downsample_prior_draws_new_block_images_like_level_T(train_images):
    """Level T of downsample is 4x4 blocks: the prior's starts are block images too, with
    the level-T images' brightness and spread, and none of them is a training image's."""
    cd = _fitted("downsample", {"max_factor": 7}, 20, train_images)
    starts, word = cd.start(500, (1, 28, 28), generator=torch.Generator().manual_seed(0))
    assert "prior" in word
    level_T = cd.degrade_to_start(train_images[:2000])
    blocky = pixelate(starts, 7)
    assert (starts - blocky).abs().max() < 0.02  # start_noise only
    assert starts.mean().item() == pytest.approx(level_T.mean().item(), abs=0.02)
    assert starts.std().item() == pytest.approx(level_T.std().item(), rel=0.15)
    nearest = torch.cdist(blocky.flatten(1), level_T.flatten(1)).min(1).values
    assert nearest.median() > 0.5  # generated, not looked up


def test_impulse_prior_at_full_density_is_pure_salt_and_pepper(train_images):
    cd = _fitted("impulse", {"rho_end": 0.5}, 150, train_images)
    starts, _ = cd.start(64, (1, 28, 28), generator=torch.Generator().manual_seed(0))
    assert ((starts.abs() - 0.5).abs() < 0.02).all()
    # half salt, half pepper, and different trajectories differ
    assert (starts > 0).float().mean().item() == pytest.approx(0.5, abs=0.03)
    assert not torch.equal(starts[0], starts[1])


def test_prior_round_trips_and_draws_are_fixed_by_the_generator(train_images, tmp_path):
    cd = _fitted("blur", {}, 20, train_images)
    path = tmp_path / "prior.pt"
    torch.save(cd.prior.state_dict(), path)
    again = LevelPrior.from_state_dict(torch.load(path, weights_only=True))
    a = cd.prior.sample(16, generator=torch.Generator().manual_seed(4))
    b = again.sample(16, generator=torch.Generator().manual_seed(4))
    c = again.sample(16, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, c)
    # blur's level T is nearly one number per image: the fit keeps only what varies
    assert again.components.shape[0] < 16 and again.explained > 0.99


def test_a_run_fits_its_prior_once_and_a_resume_draws_from_it(tiny_sweep, tmp_path, monkeypatch):
    """A blur run with sample_start = "prior" fits the prior on its training images before the first
    step, saves it beside its outputs, records what its samples measure, and a resumed run
    loads the same file: its sample grid starts from the very same images."""
    from hpcdiff.training.loop import train

    from helpers import make_run_dir, resume_with

    sweep = tiny_sweep('[degradation]\nname = "blur"\n', epochs=1)
    sweep.write_text(sweep.read_text().replace("n_T = 20", 'n_T = 20\nsample_start = "prior"'))
    rd = make_run_dir(sweep, tmp_path / "runs")
    assert train(rd.path) == "done"
    assert rd.prior.is_file()
    saved = rd.prior.read_bytes()

    def refit(*args, **kwargs):
        raise AssertionError("a resumed run fitted its prior again")

    monkeypatch.setattr(ColdDiffusion, "fit_prior", refit)
    resume_with(rd, epochs=2)
    assert rd.prior.read_bytes() == saved
    with h5py.File(rd.archive, "r") as f:
        assert f.attrs["samples_measure"] == "generation" and f.attrs["sample_start"] == "prior"
        assert "mixture" in f.attrs["prior"]
        first, second = f["sample_starts"]["epoch_0001"][:], f["sample_starts"]["epoch_0002"][:]
        assert f["samples"]["epoch_0001"].attrs["start"].startswith("prior")
    assert (first == second).all() and first.std() > 0


# --------------------------------------------------------------------------- the mixture fit


@pytest.fixture(scope="module")
def digit_summaries():
    """5,000 real digits' first 8 principal components (float64), the kind of summary a
    level-T prior fits its mixture to."""
    from hpcdiff.data import mnist_5k_arrays

    x, _ = mnist_5k_arrays()
    flat = torch.tensor(x.reshape(len(x), -1), dtype=torch.float64) / 255
    centred = flat - flat.mean(0)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    return centred @ vh[:8].T


def test_mixture_density_matches_scikit_learn(digit_summaries):
    """The density of a fitted mixture agrees with scikit-learn's score_samples for the same
    weights, means and covariances; the control (covariances 1% wider) does not."""
    from sklearn.mixture import GaussianMixture

    from hpcdiff.science.mixture import log_density

    z = digit_summaries
    sk = GaussianMixture(6, covariance_type="full", random_state=0).fit(z.numpy())
    params = [torch.from_numpy(a) for a in (sk.weights_, sk.means_, sk.covariances_)]
    want = torch.from_numpy(sk.score_samples(z.numpy()))
    torch.testing.assert_close(log_density(z, *params), want, rtol=0, atol=1e-9)
    wider = log_density(z, params[0], params[1], params[2] * 1.01)
    assert (wider - want).abs().max() > 1e-3


def test_mixture_fit_is_as_likely_as_scikit_learns(digit_summaries):
    """EM from k-means starts reaches scikit-learn's likelihood on the same data (within
    0.5%: both find local optima), and one component is the data's own mean and covariance
    (the maximum-likelihood Gaussian), as scikit-learn's is."""
    from sklearn.mixture import GaussianMixture

    from hpcdiff.science.mixture import fit_gaussian_mixture

    z = digit_summaries
    ours = fit_gaussian_mixture(z, 10, seed=0)
    sk = GaussianMixture(10, covariance_type="full", reg_covar=1e-6, random_state=0, max_iter=200).fit(z.numpy())
    assert ours.converged and ours.weights.sum().item() == pytest.approx(1.0)
    assert abs(ours.mean_log_likelihood - sk.score(z.numpy())) < 0.005 * abs(sk.score(z.numpy()))
    one = fit_gaussian_mixture(z, 1, seed=0, reg_covar=0.0)
    torch.testing.assert_close(one.means[0], z.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(one.covariances[0], torch.cov(z.T, correction=0), rtol=1e-10, atol=1e-12)
    sk_one = GaussianMixture(1, covariance_type="full", reg_covar=0.0).fit(z.numpy())
    assert one.mean_log_likelihood == pytest.approx(sk_one.score(z.numpy()), rel=1e-9)
