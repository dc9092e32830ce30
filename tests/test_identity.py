"""The rule of run identity (hpcdiff.config.identity): what may and may not change a run id."""

import dataclasses

from hpcdiff.config.identity import IDENTITY_SECTIONS, IDENTITY_V1, section_identity
from hpcdiff.config.spec import SECTIONS, RunSpec, TrainSpec
from hpcdiff.config.sweep import run_id


def test_every_key_of_today_is_in_identity_v1():
    """Keys that existed when the rule was set always count (the ids on disk hashed them). A
    key added later must NOT be added to IDENTITY_V1: this test then fails for it, which is
    the reminder that it counts only away from its default."""
    for name in IDENTITY_SECTIONS:
        keys = {f.name for f in dataclasses.fields(SECTIONS[name])}
        assert IDENTITY_V1[name] <= keys, name


def test_a_new_key_at_its_default_leaves_the_id_alone():
    # A later version of TrainSpec with one more setting (what the next issues will add).
    Newer = dataclasses.make_dataclass(
        "Newer", [("max_widgets", int, dataclasses.field(default=0))], bases=(TrainSpec,), frozen=True
    )
    old = RunSpec().train
    as_dict = {f.name: getattr(old, f.name) for f in dataclasses.fields(old)}
    at_default = Newer(**as_dict)
    assert section_identity("train", at_default, {**as_dict, "max_widgets": 0}) == section_identity(
        "train", old, as_dict
    )
    changed = Newer(**as_dict, max_widgets=500)
    assert section_identity("train", changed, {**as_dict, "max_widgets": 500})["max_widgets"] == 500


def test_budgets_and_the_model_name_count_only_when_set():
    """train.max_steps / max_minutes and model.name came after the rule: at their defaults
    (no budget, the starter CNN) every id is what it was; set, they change it."""
    base = RunSpec()
    assert "name" not in base.to_dict()["model"]  # the CNN's config.toml is unchanged
    assert not {"max_steps", "max_minutes"} & set(base.run_identity()["train"])
    for change in ({"max_steps": 100}, {"max_minutes": 5.0}):
        other = base.replace(train=dataclasses.replace(base.train, **change))
        assert run_id(other) != run_id(base)
    unet = RunSpec.from_dict({"model": {"name": "unet"}})
    assert unet.run_identity()["model"] == {"name": "unet", "dropout": 0.0}
    assert run_id(unet) != run_id(base)


def test_execution_sections_stay_out_of_the_identity():
    base = RunSpec()
    other = base.replace(
        slurm=dataclasses.replace(base.slurm, time_min=600, gpus_per_node=4),
        eval=dataclasses.replace(base.eval, samples=2000, metrics=("fid_classifier",)),
        log=dataclasses.replace(base.log, trackers=("tensorboard", "wandb"), wandb_mode="offline"),
    )
    assert run_id(other) == run_id(base)
    assert set(base.run_identity()) == set(IDENTITY_SECTIONS)
    assert run_id(base.replace(train=dataclasses.replace(base.train, lr=1e-3))) != run_id(base)


def test_how_the_step_executes_stays_out_of_the_identity():
    """train.compile (CUDA graphs or eager) changes how a step runs, not what it computes:
    asking for graphs on a cluster finds the runs made eagerly on a laptop."""
    base = RunSpec()
    for mode in ("none", "graph"):
        other = base.replace(train=dataclasses.replace(base.train, compile=mode))
        assert run_id(other) == run_id(base)
        assert "compile" not in other.run_identity()["train"]
