"""The UNet denoiser (model.name = "unet"): shapes, config round trip, the keys of the other
model rejected, image sizes checked, and real tiny runs (EMA, resume exactness, 2 processes)."""

import os
import subprocess

import numpy as np
import pytest
import tomllib
import torch

from hpcdiff.config import tomlio
from hpcdiff.config.model_spec import MODEL_NAMES
from hpcdiff.config.spec import ModelSpec, RunSpec, SpecError
from hpcdiff.config.sweep import run_id
from hpcdiff.launch.child import child_command
from hpcdiff.resolve import validate_spec
from hpcdiff.science.models import MODELS, ImageSizeError, build_model
from hpcdiff.storage import archive, checkpoint
from hpcdiff.storage.rundir import sweep_run_dirs
from hpcdiff.training.loop import train

from helpers import cli, make_run_dir, resume_with

# A UNet small enough for 2 shared CPU cores: 8 and 16 channels at 28 and 14 pixels.
TINY_UNET = 'name = "unet"\nbase_channels = 8\nchannel_mults = [1, 2]\ngroups = 4'


def unet_sweep(tiny_sweep, extra="", **kwargs):
    path = tiny_sweep(extra, **kwargs)
    path.write_text(path.read_text().replace("hidden = [8, 8]", TINY_UNET, 1))
    return path


def test_the_model_names_of_the_config_are_the_registry():
    assert sorted(MODEL_NAMES) == MODELS.names()


@pytest.mark.parametrize("attention", [False, True])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size,mults", [(28, (1, 2, 2)), (32, (1, 2, 2, 2)), (16, (1, 2)), (8, (1,))])
def test_output_shape_is_the_input_shape(size, mults, channels, attention):
    spec = ModelSpec(
        name="unet", base_channels=8, channel_mults=mults, groups=4, attention=attention, res_blocks=2, dropout=0.1
    )
    model = build_model(spec, (channels, size, size))
    x = torch.randn(3, channels, size, size)
    assert model(x, torch.rand(3)).shape == x.shape


def test_the_default_unet_is_small_and_its_norms_fit():
    model = build_model(ModelSpec(name="unet"))
    norms = [m for m in model.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert norms and all(n.num_channels % n.num_groups == 0 for n in norms)
    assert sum(p.numel() for p in model.parameters()) < 1_000_000
    # the time embedding reaches the output: different t, different prediction
    x = torch.randn(2, 1, 28, 28)
    assert not torch.allclose(model(x, torch.zeros(2)), model(x, torch.ones(2)))


def test_config_round_trip_rebuilds_the_same_model():
    raw = {
        "data": {"name": "mnist-5k"},
        "model": {
            "name": "unet",
            "base_channels": 16,
            "channel_mults": [1, 2],
            "res_blocks": 2,
            "attention": True,
            "groups": 8,
            "dropout": 0.1,
        },
    }
    spec = validate_spec(RunSpec.from_dict(raw))
    text = tomlio.dumps(spec.to_dict())
    again = RunSpec.from_dict(tomllib.loads(text))
    assert again == spec and run_id(again) == run_id(spec)
    assert set(spec.to_dict()["model"]) == {
        "name",
        "base_channels",
        "channel_mults",
        "res_blocks",
        "attention",
        "groups",
        "dropout",
    }
    a, b = build_model(spec.model), build_model(again.model)
    assert type(a).__name__ == "UNet" and a.state_dict().keys() == b.state_dict().keys()
    assert any("attention" in k for k in a.state_dict())


def test_a_cnn_config_is_what_it_was():
    """The starter CNN's section holds exactly the keys it always had (no name, no UNet key)."""
    assert set(RunSpec().to_dict()["model"]) == {"hidden", "activation", "kernel_size", "last_kernel_size", "dropout"}
    assert RunSpec.from_dict({"model": {"name": "cnn"}}) == RunSpec()


@pytest.mark.parametrize(
    "model,key,value",
    [
        ("unet", "hidden", [8, 8]),
        ("unet", "kernel_size", 3),
        ("cnn", "channel_mults", [1, 2]),
        ("cnn", "attention", True),
    ],
)
def test_a_key_of_the_other_model_is_rejected(model, key, value):
    with pytest.raises(SpecError) as err:
        RunSpec.from_dict({"model": {"name": model, key: value}})
    assert err.value.path == f"model.{key}"
    assert f"model.name = {model!r}" in str(err.value) and "remove it" in str(err.value)


def test_groups_must_divide_the_channels():
    with pytest.raises(SpecError, match="must divide every channel count") as err:
        RunSpec.from_dict({"model": {"name": "unet", "base_channels": 12, "groups": 8}})
    assert err.value.path == "model.groups"


def test_image_size_is_checked_for_known_datasets():
    spec = RunSpec.from_dict({"data": {"name": "mnist-5k"}, "model": {"name": "unet", "channel_mults": [1, 2, 2, 2]}})
    with pytest.raises(SpecError, match="divisible by 8, but the images are 28x28") as err:
        validate_spec(spec)
    assert err.value.path == "model.channel_mults"


def test_a_sweep_over_the_model_name_takes_model_keys_from_its_cases(tmp_path):
    base = '[data]\nname = "mnist-5k"\n[model]\nhidden = [8, 8]\n[eval]\nmetrics = []\n'
    bad = tmp_path / "bad.toml"
    bad.write_text(
        base + '[[sweep.cases]]\nlabel = "cnn"\n[[sweep.cases]]\nlabel = "unet"\nmodel = { name = "unet" }\n'
    )
    result = cli("sweep", bad, "--dry-run", "--output", tmp_path / "out")
    assert result.exit_code == 2
    assert "model.hidden" in result.output and "sweep.cases[1]" in result.output
    good = tmp_path / "good.toml"
    good.write_text(
        base.replace("hidden = [8, 8]\n", "") + '[[sweep.cases]]\nlabel = "cnn"\n'
        'model = { hidden = [8, 8] }\n[[sweep.cases]]\nlabel = "unet"\n'
        'model = { name = "unet", base_channels = 8, groups = 4 }\n'
    )
    result = cli("sweep", good, "--dry-run", "--output", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "out").exists()


def test_idx_images_the_unet_cannot_halve_fail_at_load(tiny_sweep, tmp_path):
    path = unet_sweep(tiny_sweep, epochs=1)
    path.write_text(path.read_text().replace("channel_mults = [1, 2]", "channel_mults = [1, 2, 2, 2]"))
    rd = make_run_dir(path, tmp_path / "runs")  # idx: the size is unknown until the files are read
    with pytest.raises(ImageSizeError, match="model.channel_mults.*28x28"):
        train(rd.path)
    status = rd.read_status()
    assert status["state"] == "failed" and "model.channel_mults" in status["error"]
    assert not checkpoint.list_epochs(rd.checkpoints)


def test_tiny_unet_sweep_end_to_end_with_ema(tiny_sweep, tmp_path):
    path = unet_sweep(tiny_sweep, epochs=2)
    path.write_text(path.read_text().replace("[train]\n", "[train]\nema_decay = 0.9\n", 1))
    result = cli("sweep", path, "--output", tmp_path / "runs", "--executor", "debug")
    assert result.exit_code == 0, result.output
    rd = sweep_run_dirs(tmp_path / "runs" / "tiny")[0]
    assert rd.read_status()["state"] == "done"
    data = archive.read(rd.archive)
    assert data["metrics"]["epoch"].tolist() == [1, 2]
    assert np.isfinite(data["metrics"]["train_loss"]).all() and np.isfinite(data["metrics"]["val_loss"]).all()
    assert data["samples"][2]["images"].shape == (4, 28, 28)
    state = torch.load(rd.checkpoints / "epoch_00002.pt", weights_only=False)
    assert state["ema"] is not None and any(k.startswith("down.") for k in state["model"])
    assert tomlio.load(rd.config_path)["model"]["name"] == "unet"


def test_unet_resume_is_exact(tiny_sweep, tmp_path):
    """Stopped after epoch 1 and resumed, a UNet run (dropout on, cold diffusion) gives the
    uninterrupted run's losses."""
    extra = '[degradation]\nname = "blur"\n'
    base = unet_sweep(tiny_sweep, extra, epochs=2).read_text().replace('name = "unet"', 'name = "unet"\ndropout = 0.1')
    whole_file, split_file = tmp_path / "whole.toml", tmp_path / "split.toml"
    whole_file.write_text(base.replace('name = "tiny"', 'name = "whole"'))
    split_file.write_text(base.replace('name = "tiny"', 'name = "split"').replace("epochs = 2", "epochs = 1"))
    whole = make_run_dir(whole_file, tmp_path / "runs")
    assert train(whole.path) == "done"
    split = make_run_dir(split_file, tmp_path / "runs")
    assert train(split.path) == "done"
    assert resume_with(split, epochs=2) == "done"
    a, b = (archive.read(rd.archive)["metrics"] for rd in (whole, split))
    np.testing.assert_allclose(b["train_loss"], a["train_loss"], rtol=1e-5)
    np.testing.assert_allclose(b["val_loss"], a["val_loss"], rtol=1e-5)


def test_unet_trains_under_bf16_autocast():
    """Mixed precision: GroupNorm, attention and the skips take bf16 activations."""
    model = build_model(ModelSpec(name="unet", base_channels=8, groups=4, attention=True))
    x = torch.randn(2, 1, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = (model(x, torch.rand(2)).float() - x).square().mean()
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_unet_trains_in_two_processes_to_a_step_budget(tiny_sweep, tmp_path):
    """2 gloo processes, 3 batches per epoch, max_steps = 4: both ranks stop after the first
    batch of epoch 2 (a rank left behind would hang in the next collective)."""
    path = unet_sweep(tiny_sweep, '[sweep]\nname = "ddp"\n', epochs=2, subset=256)
    path.write_text(path.read_text().replace("[train]\n", "[train]\nmax_steps = 4\n", 1))
    rd = make_run_dir(path, tmp_path / "runs")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(child_command(rd.path, processes=2), env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = archive.read(rd.archive)
    assert data["attrs"]["world_size"] == 2 and rd.read_status()["state"] == "done"
    assert np.isfinite(data["metrics"]["train_loss"]).all()
    assert data["metrics"]["optimizer_steps"].tolist() == [3, 4] and data["attrs"]["stopped_by"] == "max_steps"
