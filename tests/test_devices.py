"""Where a run trains, decided on any machine: the precision "auto" gives, no silent CPU
fallback when a GPU was asked for, device names in logs, uint8 images converted where they
land; and the forms of the degradations a GPU runs (no host sync, fixed shapes) give the
CPU's images. (The runs on a GPU are tests/test_gpu.py's.)"""

import pytest
import torch

from hpcdiff.config.spec import DataSpec, RunSpec
from hpcdiff.data import load_splits, to_model_range
from hpcdiff.resolve import validate_spec
from hpcdiff.science.degradations import degrade
from hpcdiff.science.image_ops import BLUR_PADDINGS, blur_by_convolution, downsample_factor, pixelate
from hpcdiff.training.environment import NoGpuError, device_name, make_accelerator, resolve_precision


def test_auto_precision_is_bf16_only_on_a_gpu_that_has_it():
    assert resolve_precision("auto", use_cpu=True, bf16_supported=False) == "no"
    assert resolve_precision("auto", use_cpu=False, bf16_supported=True) == "bf16"
    # A V100 or T4: no bf16, and never fp16 behind the user's back (its loss scale is not checkpointed).
    assert resolve_precision("auto", use_cpu=False, bf16_supported=False) == "no"
    for asked in ("no", "bf16", "fp16"):
        assert resolve_precision(asked, use_cpu=False, bf16_supported=False) == asked


@pytest.mark.skipif(torch.cuda.is_available(), reason="shows a machine without a GPU")
def test_cuda_asked_for_without_a_gpu_fails_naming_the_fix():
    spec = validate_spec(RunSpec.from_dict({"train": {"device": "cuda"}}))
    with pytest.raises(
        NoGpuError,
        match=r'train.device = "cuda" but torch sees no GPU.*CUDA_VISIBLE_DEVICES.*'
        r"gpus_per_node",
    ):
        make_accelerator(spec)


def test_local_rank_picks_the_gpu_modulo_the_gpus_the_task_sees(monkeypatch):
    from hpcdiff.training.distributed import local_cuda_index

    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)  # every task sees the node's 4 GPUs
    assert [local_cuda_index({"LOCAL_RANK": str(r)}) for r in range(4)] == [0, 1, 2, 3]
    assert local_cuda_index({}) == 0
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # srun --gpus-per-task=1: its own, as cuda:0
    assert local_cuda_index({"LOCAL_RANK": "3"}) == 0


def test_device_names():
    assert device_name("cpu") == "cpu" and device_name(torch.device("cuda", 1)) == "cuda:1"


def test_to_model_range_moves_then_converts():
    images = torch.tensor([[0, 255], [51, 128]], dtype=torch.uint8)
    x = to_model_range(images, "cpu")
    assert x.dtype == torch.float32 and x.device.type == "cpu"
    torch.testing.assert_close(x, images.float() / 255 - 0.5)
    torch.testing.assert_close(to_model_range(images), x)


@pytest.fixture(scope="module")
def digits():
    """40 real MNIST digits in the model range."""
    return to_model_range(load_splits(DataSpec(name="mnist-5k")).test.images[::12][:40])


@pytest.mark.parametrize("padding", BLUR_PADDINGS)
def test_masked_blur_of_the_gpu_gives_the_cpus_images(padding, digits):
    t = torch.arange(len(digits)) % 21
    prefix = blur_by_convolution(digits, t, n_steps=20, padding=padding, masked=False)
    masked = blur_by_convolution(digits, t, n_steps=20, padding=padding, masked=True)
    torch.testing.assert_close(masked, prefix, atol=1e-6, rtol=0)
    assert torch.equal(masked[t == 0], digits[t == 0])


def test_downsample_pixelates_each_sample_at_its_own_level(digits):
    t = torch.arange(len(digits)) % 21
    out = degrade("downsample", digits, t, n_steps=20)
    factors = downsample_factor(t, 20, "linear", 7).tolist()
    assert set(factors) == set(range(1, 8))
    for x, y, f in zip(digits, out, factors):
        torch.testing.assert_close(y, x if f == 1 else pixelate(x[None], f)[0], atol=0, rtol=0)
