from hpcdiff.config.spec import RunSpec
from hpcdiff.config.sweep import run_id
from hpcdiff.resolve import expand, load_sweep


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
        "sweep": {
            "cases": [
                {"label": "small", "model": {"hidden": [8]}},
                {"label": "big", "model": {"hidden": [32, 32]}, "train": {"lr": 5e-4}},
            ]
        },
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


def test_a_run_another_process_trains_is_busy_not_failed(tiny_sweep, tmp_path):
    """Two sweeps of one file planned at once both launch a run; the second child finds the
    training lock taken (here held by the test, as the first sweep's trainer holds it): the
    launcher reports that run busy, not failed, leaves its status to its owner, and the
    sweep's summary says so."""
    from hpcdiff.launch.local import LocalExecutor
    from hpcdiff.launch.plan import outcome_lines, plan_sweep

    from helpers import make_run_dir

    sweep = tiny_sweep(epochs=1)
    held = make_run_dir(sweep, tmp_path / "runs")
    lock = held.lock()
    try:
        report = LocalExecutor(show_progress=False).launch(held.path.parent, [held])
    finally:
        lock.close()
    assert report.results == {held.run_id: "busy"}
    assert held.read_status().get("state", "pending") == "pending"
    text = " ".join(outcome_lines(plan_sweep(sweep, output=tmp_path / "runs"), report))
    assert f"1 busy in another process: {held.run_id}" in text and "failed" not in text


def test_two_sweeps_of_one_file_at_once_train_each_run_once_and_report_no_failure(tiny_sweep, tmp_path):
    import subprocess
    import sys

    from hpcdiff.storage.rundir import sweep_run_dirs

    sweep = tiny_sweep("[sweep]\nseeds = [0, 1]\n", epochs=1)
    cmd = [sys.executable, "-m", "hpcdiff", "sweep", str(sweep), "-o", str(tmp_path / "runs"), "--executor", "local"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, out in zip(procs, outputs):
        assert p.returncode == 0 and "failed:" not in out, out
    runs = sweep_run_dirs(tmp_path / "runs" / "tiny")
    assert len(runs) == 2 and all(rd.read_status()["state"] == "done" for rd in runs)
    for rd in runs:  # trained once: one start, no second training after the first finished
        assert rd.log.read_text().count("starting run") == 1
