"""Which runs of a sweep fuse (config/fusion.py): the shipped sweeps and edge cases."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcdiff.config.fusion import PER_MEMBER, plan_groups, shared_settings
from hpcdiff.config.spec import RunSpec

JOBS = Path(__file__).resolve().parents[1] / "jobs"


def _runs(*raws):
    return [(f"r{i}", RunSpec.from_dict(raw).to_dict()) for i, raw in enumerate(raws)]


def test_runs_that_differ_only_per_member_fuse_and_others_say_why_not():
    runs = _runs(
        {"train": {"lr": 1e-3, "seed": 0}},
        {"train": {"lr": 2e-3, "seed": 1, "grad_clip": 1.0}},
        {"train": {"lr": 1e-3}, "diffusion": {"n_T": 100}},
        {"train": {"lr": 1e-3, "batch_size": 64}},  # another tensor shape
        {"model": {"hidden": [8, 8]}},  # another network
    )
    plan = plan_groups(runs, fuse=4)
    assert plan.groups == [["r0", "r1", "r2"], ["r3"], ["r4"]]
    assert "train.batch_size" in plan.alone["r3"] and "model.hidden" in plan.alone["r4"]
    # At most `fuse` members, in sweep order; fuse = 1 is off.
    assert plan_groups(runs, fuse=2).groups == [["r0", "r1"], ["r2"], ["r3"], ["r4"]]
    assert "group filled up" in plan_groups(runs, fuse=2).alone["r2"]
    assert set(plan_groups(runs, fuse=1).alone.values()) == {"fusion is off (fuse = 1)"}
    with pytest.raises(ValueError, match="fuse must be >= 1"):
        plan_groups(runs, fuse=0)


def test_eval_and_log_are_each_members_own_and_slurm_is_shared():
    a, b = _runs({"eval": {"samples": 100}}, {"eval": {"samples": 200}, "log": {"trackers": ["tensorboard"]}})
    assert shared_settings(a[1]) == shared_settings(b[1])
    c, d = _runs({"slurm": {"time_min": 60}}, {"slurm": {"time_min": 120}})
    assert shared_settings(c[1]) != shared_settings(d[1])
    assert all(k.split(".")[0] in ("train", "diffusion", "degradation") for k in PER_MEMBER)


def test_the_shipped_quick_sweep_fuses_its_two_unet_seeds_and_says_why_the_cnn_trains_alone():
    from hpcdiff.resolve import load_sweep

    sweep = load_sweep(JOBS / "quick.toml")
    plan = plan_groups([(r.run_id, r.spec.to_dict()) for r in sweep.runs], fuse=8)
    labels = {r.run_id: r.label for r in sweep.runs}
    assert sorted(sorted(labels[i] for i in g) for g in plan.groups) == [["starter-cnn"], ["unet", "unet"]]
    (cnn,) = plan.alone
    assert labels[cnn] == "starter-cnn" and "model." in plan.alone[cnn]
