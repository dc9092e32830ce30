"""The CUDA path, continued (marked ``gpu``; how they run, and skip, is in tests/test_gpu.py's
docstring): cold diffusion with every registered degradation, a 1-process `accelerate
launch`, and the environment of a SLURM task on a GPU node (SLURM_LOCALID -> the GPU).
"""

import json
import math
import os
import socket
import subprocess
import sys

import pytest
import torch

from hpcdiff.config.spec import DataSpec, RunSpec
from hpcdiff.data import Dataset, load_splits, to_model_range
from hpcdiff.evaluation.evaluate import Evaluator
from hpcdiff.launch.child import RANK_VARIABLES
from hpcdiff.resolve import validate_spec
from hpcdiff.science.degradations import DEGRADATION_INFO, DEGRADATIONS, is_gaussian
from hpcdiff.science.diffusion import build_diffusion
from hpcdiff.science.models import build_model
from hpcdiff.science.streams import generator

from helpers import TRAIN_TIMEOUT_S, device_line, expected_precision, make_run_dir, train_to_end

pytestmark = pytest.mark.gpu

# The launchers' variables: a test that plays SLURM starts from an environment without them.
LAUNCHER_KEYS = (*RANK_VARIABLES, "GROUP_RANK", "ROLE_RANK", "TORCHELASTIC_RUN_ID")


@pytest.fixture(scope="module")
def images(gpu_data_dir):
    """(training uint8 images, 256 held-out images with their labels) of the real data set."""
    splits = load_splits(DataSpec(name="idx", root=str(gpu_data_dir), subset=320, val_fraction=0.0))
    return splits.train.images, Dataset(splits.test.images[:256], splits.test.labels[:256])


@pytest.mark.parametrize("name", DEGRADATIONS.names())
def test_every_degradation_trains_and_samples_on_the_device(name, test_device, images):
    """A few optimiser steps (bf16 autocast on a GPU, as the training loop's Accelerate does),
    the run's sampler from its own start and an evaluation (samples, and for cold diffusion
    reconstructions of held-out images), all on the device: finite, the right shape, and
    the start drawn from a CPU generator is the one the CPU draws."""
    spec = validate_spec(
        RunSpec.from_dict(
            {
                "degradation": {"name": name},
                "model": {"hidden": [8, 8]},
                "train": {"device": test_device},
                "eval": {"metrics": ["diversity"], "samples": 16, "steps": 5},
            }
        )
    )
    torch.manual_seed(0)
    core = build_diffusion(spec, build_model(spec.model)).to(test_device)
    opt = torch.optim.Adam(core.parameters(), lr=1e-3)
    train, held_out = to_model_range(images[0], test_device), to_model_range(images[1].images, test_device)
    if spec.diffusion.sample_start == "prior":  # blur, downsample: fitted as a run fits it
        core.prior = core.fit_prior(train, seed=0)
    before = [p.detach().clone() for p in core.denoiser.parameters()]
    bf16 = test_device == "cuda" and expected_precision(test_device) == "bf16"
    for step in range(3):
        with torch.autocast(test_device, dtype=torch.bfloat16, enabled=bf16):
            loss = core(train[step * 64 : (step + 1) * 64])
        assert torch.isfinite(loss), (name, step, loss)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(core.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    assert any(not torch.equal(a, b) for a, b in zip(before, core.denoiser.parameters())), name

    core.eval()
    x_T, start = core.start(
        8, (1, 28, 28), generator=generator(0, "sample_grid"), device=test_device, test_images=held_out
    )
    out = core.sample(x_T, generator=generator(0, "sample_grid"), steps=5)
    for x in (x_T, out):
        assert x.shape == (8, 1, 28, 28) and x.device.type == test_device and x.dtype == torch.float32, start
        assert torch.isfinite(x).all(), (name, start)
    evaluated = Evaluator(spec, images[1], test_device)(core, seed=0)
    assert evaluated["diversity_trace"] > 0 and all(math.isfinite(v) for v in evaluated.values()), evaluated
    assert is_gaussian(name) or 0 <= evaluated["recon_full_mse"] < 1, evaluated
    core.to("cpu")
    on_cpu, _ = core.start(
        8, (1, 28, 28), generator=generator(0, "sample_grid"), device="cpu", test_images=held_out.cpu()
    )
    # The images (or prior draws) come from the CPU generator; a stochastic degradation's
    # level-T draw is made by a generator on the sampling device (no host round trip per
    # step), so only the deterministic degradations start from identical images.
    if DEGRADATION_INFO[name].deterministic or test_device == "cpu":
        torch.testing.assert_close(x_T.cpu(), on_cpu, atol=1e-4, rtol=0)


def test_accelerate_launch_one_process(test_device, gpu_sweep, tmp_path):
    """`accelerate launch --num_processes 1 -m hpcdiff train RUN_DIR`: one process on the
    device (not Accelerate's defaults: the run's own device and precision), done."""
    rd = make_run_dir(gpu_sweep("launch", test_device, epochs=1), tmp_path / "runs")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "accelerate.commands.launch",
            "--num_processes",
            "1",
            "--num_machines",
            "1",
            "--dynamo_backend",
            "no",
            "-m",
            "hpcdiff",
            "train",
            str(rd.path),
        ],
        capture_output=True,
        text=True,
        timeout=TRAIN_TIMEOUT_S,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    status = rd.read_status()
    assert status["state"] == "done" and status["world_size"] == 1
    assert device_line(test_device) in rd.log.read_text()


def _srun_env(device: str, *, ntasks: int, procid: int, port: int) -> dict:
    """The variables of task ``procid`` of an srun step with ``ntasks`` tasks on one node with
    one GPU (SLURM leaves the launchers' RANK & co. to hpcdiff: training.distributed)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k not in LAUNCHER_KEYS}
    env.update(
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="hpcdiff",
        SLURM_STEP_ID="0",
        SLURM_PROCID=str(procid),
        SLURM_LOCALID=str(procid),
        SLURM_NODEID="0",
        SLURM_NTASKS=str(ntasks),
        SLURM_NTASKS_PER_NODE=str(ntasks),
        SLURM_NNODES="1",
        SLURM_JOB_NUM_NODES="1",
        SLURM_JOB_NODELIST=socket.gethostname(),
        SLURMD_NODENAME=socket.gethostname(),
        SLURM_CPUS_PER_TASK="2",
        SLURM_GPUS_ON_NODE="1" if device == "cuda" else "0",
        # The rendezvous on this machine, on a free port (env_from_slurm keeps them):
        # the node's name may not resolve inside a GPU machine's container.
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    if device == "cuda":  # the GPU SLURM bound the job to, as the job sees it
        env["CUDA_VISIBLE_DEVICES"] = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0]
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_slurm_job_trains_on_the_gpu(test_device, gpu_sweep, tmp_path):
    """`hpcdiff train` as a 1-GPU SLURM job runs it: on the job's GPU, with the job id in
    status.json."""
    rd = make_run_dir(gpu_sweep("srun", test_device, epochs=1), tmp_path / "runs")
    train_to_end(rd, _srun_env(test_device, ntasks=1, procid=0, port=_free_port()))
    status = rd.read_status()
    assert status["state"] == "done" and status["job_id"] == "4242" and status["world_size"] == 1
    assert device_line(test_device) in rd.log.read_text()


# What a task reports about itself after the training loop's first two calls.
PROBE = """
import json, os, torch
from hpcdiff.config.spec import RunSpec
from hpcdiff.resolve import validate_spec
from hpcdiff.training.distributed import env_from_slurm
from hpcdiff.training.environment import device_name, make_accelerator
env_from_slurm()
acc = make_accelerator(validate_spec(RunSpec.from_dict({"train": {"device": %r}})))
print(json.dumps({"device": device_name(acc.device), "rank": acc.process_index, "world": acc.num_processes,
                  "local_rank": os.environ.get("LOCAL_RANK"),
                  "current": torch.cuda.current_device() if acc.device.type == "cuda" else None}))
if torch.distributed.is_initialized():
    torch.distributed.destroy_process_group()
"""


def test_slurm_tasks_take_the_gpu_of_their_local_id(test_device):
    """srun's variables only (SLURM_PROCID, SLURM_LOCALID, SLURM_NTASKS...) for a 2-task
    step: each task is the rank training.distributed makes of them, on the device Accelerate
    makes of LOCAL_RANK: cuda:LOCAL_RANK, modulo the GPUs the task sees (on this 1-GPU node
    both share cuda:0). Nothing runs a collective: NCCL refuses two ranks on one GPU, and a
    real 2-task step has a GPU per task. (A 1-task job: test_slurm_job_trains_on_the_gpu.)"""
    ntasks, port = 2, _free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", PROBE % test_device],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=_srun_env(test_device, ntasks=ntasks, procid=rank, port=port),
        )
        for rank in range(ntasks)
    ]
    for rank, proc in enumerate(procs):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        seen = json.loads(out.strip().splitlines()[-1])
        assert (seen["rank"], seen["world"]) == (rank, ntasks)
        assert seen["local_rank"] == str(rank)
        if test_device == "cuda":
            index = rank % torch.cuda.device_count()
            assert seen["device"] == f"cuda:{index}" and seen["current"] == index, seen
        else:  # Accelerate's CPU ranks are on "cpu:0"
            assert seen["device"].split(":")[0] == "cpu", seen
