"""The run table of `hpcdiff sweep --dry-run` (and `hpcdiff status`) at a real width: every
varying value shown whole and compactly, a table when it fits, one block per run when not."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from hpcdiff.cli import main
from hpcdiff.launch.run_table import RunRow, format_value, render
from hpcdiff.resolve import load_sweep

JOBS = Path(__file__).resolve().parent.parent / "jobs"
WIDTH = 80


def _sweep_file(name) -> Path:
    return name if isinstance(name, Path) else JOBS / f"{name}.toml"


def dry_run(name, tmp_path, monkeypatch):
    # A relative --output keeps the title short; COLUMNS as a user's terminal would set it.
    monkeypatch.chdir(tmp_path)
    result = CliRunner(env={"COLUMNS": str(WIDTH)}).invoke(
        main, ["sweep", str(_sweep_file(name)), "--dry-run", "--executor", "local", "--output", "runs"])
    assert result.exit_code == 0, result.output
    return result.output


def expected_values(name):
    """run id -> {varying key: its compact text}, from the loaded sweep."""
    sweep = load_sweep(_sweep_file(name))
    shown = {}
    for run in sweep.runs:
        identity = run.spec.run_identity()
        values = {}
        for key in sweep.varying:
            node = identity
            for part in key.split("."):
                node = node[part]
            values[key] = format_value(node)
        shown[run.run_id] = values
    keys = [k for k in sweep.varying if len({v[k] for v in shown.values()}) > 1]
    return sweep, {rid: {k: v[k] for k in keys} for rid, v in shown.items()}


def parse_blocks(output):
    """run id -> {key: value} from the block layout."""
    blocks, current = {}, None
    for line in output.splitlines()[1:]:
        if line.startswith("dry run") or line.endswith("runs)"):  # the lines after the runs
            break
        if line.startswith("    "):
            key, _, value = line.strip().partition(" = ")
            current[key.strip()] = value
        else:
            current = blocks.setdefault(line.split()[0], {})
    return blocks


@pytest.mark.parametrize("name", ["part2", "part1"])
def test_wide_sweeps_show_one_block_per_run_within_the_width(name, tmp_path, monkeypatch):
    output = dry_run(name, tmp_path, monkeypatch)
    sweep, expected = expected_values(name)
    assert "…" not in output
    assert all(len(line) <= WIDTH for line in output.splitlines()), output
    blocks = parse_blocks(output)
    assert blocks == expected
    for run in sweep.runs:
        assert f"{run.run_id}  {run.label}  new" in output.splitlines()


def test_part2_values_are_verbatim_and_compact(tmp_path, monkeypatch):
    blocks = parse_blocks(dry_run("part2", tmp_path, monkeypatch))
    by_label = {r.label: blocks[r.run_id] for r in load_sweep(JOBS / "part2.toml").runs}
    assert by_label["blur-bansal"]["degradation.params"] == "kernel_size=11 sigma=7.0"
    assert by_label["luminance-mask"]["degradation.name"] == "luminance_mask"
    assert by_label["luminance-mask"]["degradation.params"] == "dropout=0.2 high_shift=0.2 low_shift=-0.1"
    assert by_label["pixel-swap-T100-l1"]["degradation.params"] == "{}"
    assert by_label["impulse-dropout-plateau"]["train.lr"] == "0.0002"


def test_part1_lists_and_small_floats(tmp_path, monkeypatch):
    blocks = parse_blocks(dry_run("part1", tmp_path, monkeypatch))
    by_label = {r.label: blocks[r.run_id] for r in load_sweep(JOBS / "part1.toml").runs}
    assert by_label["deep-small-betas"]["model.hidden"] == "[32, 64, 128, 64, 32]"
    assert by_label["deep-small-betas"]["diffusion.beta1"] == "1e-5"


NARROW_SWEEP = """
[sweep]
name = "narrow"
[sweep.product]
train.lr = [2e-3, 5e-4]
diffusion.n_T = [100, 400]
[data]
name = "mnist-5k"
"""


def test_a_narrow_sweep_is_a_table_of_its_varying_columns(tmp_path, monkeypatch):
    sweep_file = tmp_path / "narrow.toml"
    sweep_file.write_text(NARROW_SWEEP)
    output = dry_run(sweep_file, tmp_path, monkeypatch)
    sweep, expected = expected_values(sweep_file)
    lines = output.splitlines()
    assert "…" not in output
    assert lines[1].split() == ["run", "id", "diffusion.n_T", "train.lr", "action"]
    assert set(lines[2]) == {"-", " "}
    rows = {line.split()[0]: line.split()[1:] for line in lines[3:3 + len(sweep.runs)]}
    assert rows == {rid: [v["diffusion.n_T"], v["train.lr"], "new"] for rid, v in expected.items()}
    assert all(len(line) <= WIDTH for line in lines[:3 + len(sweep.runs)])


def test_format_value():
    assert format_value(2e-4) == "0.0002"
    assert format_value(1e-5) == "1e-5"
    assert format_value(7.0) == "7.0"
    assert format_value({"sigma": 7.0, "kernel_size": 11}) == "kernel_size=11 sigma=7.0"
    assert format_value({"a": {"y": 1, "x": 2}}) == "a={x=2 y=1}"
    assert format_value([16, 32, 32, 16]) == "[16, 32, 32, 16]"
    assert format_value(True) == "true"
    assert format_value("luminance_mask") == "luminance_mask"
    assert format_value(None) == "-"


def test_render_keeps_only_columns_that_vary_and_switches_layout_by_width():
    rows = [RunRow("r1", "", {"a": 1, "b": "same", "c": {"k": 1}}, {"action": "new", "note": ""}),
            RunRow("r2", "", {"a": 2, "b": "same", "c": {"k": 1, "j": 0}}, {"action": "skip-done", "note": ""})]
    table = render("t", rows, width=80).splitlines()
    assert table[1].split() == ["run", "id", "a", "c", "action"]  # b is the same, note empty everywhere
    assert table[3].split() == ["r1", "1", "k=1", "new"]
    assert table[4].split() == ["r2", "2", "j=0", "k=1", "skip-done"]
    blocks = render("t", rows, width=20).splitlines()
    assert blocks == ["t", "r1  new", "    a = 1", "    c = k=1", "r2  skip-done", "    a = 2", "    c = j=0 k=1"]


def test_status_uses_the_same_layout(tmp_path, monkeypatch):
    from hpcdiff.storage.rundir import RunDir, update_manifest, write_run_config
    from hpcdiff.launch.plan import plan_sweep

    monkeypatch.chdir(tmp_path)
    plan = plan_sweep(JOBS / "part2.toml", output="runs")
    update_manifest(plan.sweep_dir, plan.sweep, (JOBS / "part2.toml").read_text())
    for run in plan.sweep.runs:
        write_run_config(RunDir(plan.sweep_dir / run.run_id), run.spec, run_id=run.run_id,
                         sweep=plan.sweep.name, axes=run.axes, label=run.label)
    result = CliRunner(env={"COLUMNS": str(WIDTH)}).invoke(main, ["status", "runs/part2"])
    assert result.exit_code == 0, result.output
    assert "…" not in result.output
    assert all(len(line) <= WIDTH for line in result.output.splitlines()), result.output
    _, expected = expected_values("part2")
    blocks = parse_blocks(result.output)
    for rid, values in expected.items():
        assert {k: blocks[rid][k] for k in values} == values
    assert "10 pending (10 runs)" in result.output


def test_keys_only_some_runs_have_are_varying_columns(tmp_path, monkeypatch):
    """quick.toml sets a CNN beside a UNet: each model's own keys vary (shown as "-" for
    the other model), not only the keys of the first run."""
    sweep = load_sweep(JOBS / "quick.toml")
    assert {"model.hidden", "model.name", "model.base_channels", "model.channel_mults", "train.seed"} <= set(sweep.varying)
    blocks = parse_blocks(dry_run("quick", tmp_path, monkeypatch))
    by_label = {(r.label, r.spec.train.seed): blocks[r.run_id] for r in sweep.runs}
    assert by_label[("unet", 0)]["model.channel_mults"] == "[1, 2, 4]"
    assert by_label[("unet", 0)]["model.hidden"] == "-"
    assert by_label[("starter-cnn", 0)]["model.hidden"] == "[16, 32, 32, 16]"
    assert by_label[("starter-cnn", 0)]["model.base_channels"] == "-"
