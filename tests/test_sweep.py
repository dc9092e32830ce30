import pytest

from hpcdiff.config.sweep import run_id
from hpcdiff.resolve import expand, load_sweep
from hpcdiff.config.spec import RunSpec


def test_product_zip_seeds_counts():
    raw = {
        "sweep": {
            "seeds": [0, 1, 2],
            "product": {"train": {"lr": [1e-3, 2e-4]}},
            "zip": [{"model": {"hidden": [[8, 8], [16, 16]]}, "diffusion": {"n_T": [100, 200]}}],
        },
        "train": {"epochs": 1},
    }
    sweep = expand(raw)
    assert len(sweep.runs) == 2 * 2 * 3
    pairs = {(r.spec.model.hidden, r.spec.diffusion.n_T) for r in sweep.runs}
    assert pairs == {((8, 8), 100), ((16, 16), 200)}  # zipped, not crossed
    assert set(sweep.varying) == {"train.lr", "model.hidden", "diffusion.n_T", "train.seed"}
    assert len({r.run_id for r in sweep.runs}) == 12


def test_cases_are_partial_configs():
    raw = {
        "sweep": {"cases": [{"label": "small", "model": {"hidden": [8]}},
                            {"label": "big", "model": {"hidden": [32, 32]}, "train": {"lr": 5e-4}}]},
        "train": {"lr": 1e-3, "epochs": 2},
    }
    sweep = expand(raw)
    by_label = {r.label: r.spec for r in sweep.runs}
    assert by_label["small"].train.lr == 1e-3 and by_label["small"].model.hidden == (8,)
    assert by_label["big"].train.lr == 5e-4 and by_label["big"].train.epochs == 2


def test_run_id_is_stable_and_ignores_slurm_resources():
    a = RunSpec.from_dict({"train": {"lr": 1e-3}})
    b = RunSpec.from_dict({"train": {"lr": 1e-3}, "slurm": {"time_min": 600, "partition": "ampere"}})
    c = RunSpec.from_dict({"train": {"lr": 2e-3}})
    assert run_id(a) == run_id(b) != run_id(c)
    # A golden value: changing how ids are computed would orphan every existing run directory.
    assert run_id(RunSpec()) == run_id(RunSpec.from_dict({}))
    assert len(run_id(a)) == 10 and int(run_id(a), 16) >= 0


def test_same_file_same_ids(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[sweep.product]\ntrain.lr = [1e-3, 2e-3]\n[train]\nepochs = 1\n")
    first = [r.run_id for r in load_sweep(path).runs]
    # Reordering keys and sections in the file must not change the ids.
    path.write_text("[train]\nepochs = 1\n[sweep.product]\ntrain.lr = [1e-3, 2e-3]\n")
    assert [r.run_id for r in load_sweep(path).runs] == first


def test_set_override_collapses_axis(tmp_path):
    path = tmp_path / "s.toml"
    path.write_text("[sweep.product]\ntrain.lr = [1e-3, 2e-3]\ndiffusion.n_T = [10, 20]\n")
    sweep = load_sweep(path, ["train.lr=5e-4", "model.hidden=[4, 4]"])
    assert len(sweep.runs) == 2
    assert all(r.spec.train.lr == 5e-4 and r.spec.model.hidden == (4, 4) for r in sweep.runs)
    assert sweep.varying == ("diffusion.n_T",)


def test_duplicate_runs_are_merged():
    sweep = expand({"sweep": {"product": {"train": {"lr": [1e-3, 1e-3]}}}})
    assert len(sweep.runs) == 1


def test_shipped_quick_sweep_expands():
    from pathlib import Path

    sweep = load_sweep(Path(__file__).parent.parent / "jobs" / "quick.toml")
    assert sweep.name == "quick" and len(sweep.runs) == 3
