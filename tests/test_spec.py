"""Strict validation: every bad input names the file, the key and (where one is close) the fix."""

import pytest
from click.testing import CliRunner

from hpcdiff.cli import main
from hpcdiff.config.spec import RunSpec, SpecError
from hpcdiff.resolve import load_sweep

VALID = """
[sweep]
name = "ok"
seeds = [0, 1]
[sweep.product]
train.lr = [1e-3, 2e-4]
[data]
name = "mnist-5k"
[model]
hidden = [16, 32, 32, 16]
[train]
epochs = 3
"""

# (file text, text the error must contain)
INVALID = [
    ("[train]\nlrr = 0.1\n", ["train.lrr", "did you mean 'lr'"]),
    ("[trian]\nlr = 0.1\n", ["trian", "did you mean 'train'"]),
    ("[model]\nhiden = [8]\n", ["model.hiden", "did you mean 'hidden'"]),
    ('[train]\nepochs = "ten"\n', ["train.epochs", "'ten'"]),
    ("[train]\nepochs = 0\n", ["train.epochs", "must be >= 1"]),
    ("[train]\nlr = -1.0\n", ["train.lr", "-1.0"]),
    ('[data]\nname = "mnsit"\n', ["data.name", "did you mean 'mnist'"]),
    ('[model]\nactivation = "gelo"\n', ["model.activation", "did you mean 'gelu'"]),
    ("[diffusion]\nbeta1 = 0.5\nbeta2 = 0.1\n", ["diffusion.beta1", "beta1=0.5"]),
    ("[sweep.product]\ntrain.lrr = [1, 2]\n", ["sweep.product.train.lrr", "did you mean 'train.lr'"]),
    ("[sweep]\nseed = [1]\n", ["sweep.seed", "did you mean 'seeds'"]),
    ("[[sweep.zip]]\ntrain.lr = [1e-3, 2e-3]\ntrain.epochs = [1]\n", ["sweep.zip[0]", "equal lengths"]),
    ("[model]\nhidden = [8, -1]\n", ["model.hidden", "-1"]),
    ('[train]\noptimizer = "adamm"\n', ["train.optimizer", "did you mean 'adam'"]),
    ('[diffusion]\nsampler = "ancestrall"\n', ["diffusion.sampler", "did you mean 'ancestral'"]),
    ("[data]\nsubset = true\n", ["data.subset", "True"]),
    ("[train\nlr = 1\n", ["not valid TOML"]),
    ("[sweep.product]\ntrain.lr = 0.1\n", ["sweep.product.train.lr", "non-empty list"]),
    ("[[sweep.cases]]\nmodel = { hidden = [8], dropot = 0.1 }\n", ["model.dropot", "did you mean 'dropout'"]),
]


def test_valid_file_expands(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text(VALID)
    sweep = load_sweep(path)
    assert sweep.name == "ok"
    assert len(sweep.runs) == 4
    assert {r.spec.train.lr for r in sweep.runs} == {1e-3, 2e-4}
    assert {r.spec.train.seed for r in sweep.runs} == {0, 1}
    assert all(r.spec.train.epochs == 3 and r.spec.model.hidden == (16, 32, 32, 16) for r in sweep.runs)


@pytest.mark.parametrize("text,expected", INVALID, ids=[e[0].splitlines()[0] + str(i) for i, e in enumerate(INVALID)])
def test_invalid_file_names_key_and_file(tmp_path, text, expected):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(SpecError) as info:
        load_sweep(path)
    message = str(info.value)
    assert str(path) in message
    for part in expected:
        assert part in message, f"{part!r} not in {message!r}"


def test_cli_invalid_exits_2_and_writes_nothing(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[train]\nlrr = 0.1\n")
    out = tmp_path / "runs"
    result = CliRunner().invoke(main, ["sweep", str(path), "--output", str(out), "--executor", "debug"])
    assert result.exit_code == 2
    assert "train.lrr" in result.output and "did you mean 'lr'" in result.output
    assert not out.exists()


def test_cli_bad_override_exits_2(tmp_path):
    path = tmp_path / "ok.toml"
    path.write_text(VALID)
    result = CliRunner().invoke(main, ["sweep", str(path), "--dry-run", "--set", "train.epohcs=3"])
    assert result.exit_code == 2
    assert "train.epohcs" in result.output and "train.epochs" in result.output


def test_round_trip_of_resolved_config():
    from hpcdiff.config import tomlio

    spec = RunSpec.from_dict(
        {
            "train": {"lr": 3e-4, "epochs": 2},
            "model": {"hidden": [8, 16]},
            "degradation": {"name": "gaussian", "params": {"a": 0.1}},
        }
    )
    text = tomlio.dumps(spec.to_dict())
    again = RunSpec.from_dict(__import__("tomllib").loads(text))
    assert again == spec


def test_int_accepted_for_float_but_not_bool():
    spec = RunSpec.from_dict({"train": {"lr": 1}})
    assert spec.train.lr == 1.0 and isinstance(spec.train.lr, float)
    with pytest.raises(SpecError, match="train.lr"):
        RunSpec.from_dict({"train": {"lr": True}})
