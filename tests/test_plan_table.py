"""The run table of `hpcdiff sweep --dry-run` (and `hpcdiff status`) at a real width: by
default one line per run (run, label, what varies within a label, action); with --long every
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


def dry_run(name, tmp_path, monkeypatch, *extra):
    # A relative --output keeps the title short; COLUMNS as a user's terminal would set it.
    monkeypatch.chdir(tmp_path)
    result = CliRunner(env={"COLUMNS": str(WIDTH)}).invoke(
        main, ["sweep", str(_sweep_file(name)), "--dry-run", "--executor", "local", "--output", "runs", *extra]
    )
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
    output = dry_run(name, tmp_path, monkeypatch, "--long")
    sweep, expected = expected_values(name)
    assert "…" not in output
    assert all(len(line) <= WIDTH for line in output.splitlines()), output
    blocks = parse_blocks(output)
    assert blocks == expected
    for run in sweep.runs:
        assert f"{run.run_id}  {run.label}  new" in output.splitlines()


def test_part2_values_are_verbatim_and_compact(tmp_path, monkeypatch):
    blocks = parse_blocks(dry_run("part2", tmp_path, monkeypatch, "--long"))
    by_label = {r.label: blocks[r.run_id] for r in load_sweep(JOBS / "part2.toml").runs}
    assert by_label["blur-bansal"]["degradation.params"] == "kernel_size=11 sigma=7.0"
    assert by_label["luminance-mask"]["degradation.name"] == "luminance_mask"
    assert by_label["luminance-mask"]["degradation.params"] == "dropout=0.2 high_shift=0.2 low_shift=-0.1"
    assert by_label["pixel-swap-T100-l1"]["degradation.params"] == "max_half_width=3"
    assert by_label["pixel-swap-T20-l2"]["degradation.params"] == "{}"
    assert by_label["impulse-dropout-plateau"]["train.lr"] == "0.0002"


def test_part1_lists_and_small_floats(tmp_path, monkeypatch):
    blocks = parse_blocks(dry_run("part1", tmp_path, monkeypatch, "--long"))
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
    output = dry_run(sweep_file, tmp_path, monkeypatch, "--long")
    sweep, expected = expected_values(sweep_file)
    lines = output.splitlines()
    assert "…" not in output
    assert lines[1].split() == ["run", "id", "diffusion.n_T", "train.lr", "action"]
    assert set(lines[2]) == {"-", " "}
    rows = {line.split()[0]: line.split()[1:] for line in lines[3 : 3 + len(sweep.runs)]}
    assert rows == {rid: [v["diffusion.n_T"], v["train.lr"], "new"] for rid, v in expected.items()}
    assert all(len(line) <= WIDTH for line in lines[: 3 + len(sweep.runs)])


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
    rows = [
        RunRow("r1", "", {"a": 1, "b": "same", "c": {"k": 1}}, {"action": "new", "note": ""}),
        RunRow("r2", "", {"a": 2, "b": "same", "c": {"k": 1, "j": 0}}, {"action": "skip-done", "note": ""}),
    ]
    table = render("t", rows, width=80).splitlines()
    assert table[1].split() == ["run", "id", "a", "c", "action"]  # b is the same, note empty everywhere
    assert table[3].split() == ["r1", "1", "k=1", "new"]
    assert table[4].split() == ["r2", "2", "j=0", "k=1", "skip-done"]
    blocks = render("t", rows, width=20).splitlines()
    assert blocks == ["t", "r1  new", "    a = 1", "    c = k=1", "r2  skip-done", "    a = 2", "    c = j=0 k=1"]


def _pending_part2(tmp_path, monkeypatch):
    """part2's run directories as `hpcdiff sweep` writes them before training (all pending)."""
    from hpcdiff.launch.plan import plan_sweep
    from hpcdiff.storage.rundir import RunDir, update_manifest, write_run_config

    monkeypatch.chdir(tmp_path)
    plan = plan_sweep(JOBS / "part2.toml", output="runs")
    update_manifest(plan.sweep_dir, plan.sweep, (JOBS / "part2.toml").read_text())
    for run in plan.sweep.runs:
        write_run_config(
            RunDir(plan.sweep_dir / run.run_id),
            run.spec,
            run_id=run.run_id,
            sweep=plan.sweep.name,
            axes=run.axes,
            label=run.label,
        )
    return plan


def test_status_uses_the_same_layout(tmp_path, monkeypatch):
    _pending_part2(tmp_path, monkeypatch)
    result = CliRunner(env={"COLUMNS": str(WIDTH)}).invoke(main, ["status", "runs/part2", "--long"])
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
    assert {"model.hidden", "model.name", "model.base_channels", "model.channel_mults", "train.seed"} <= set(
        sweep.varying
    )
    blocks = parse_blocks(dry_run("quick", tmp_path, monkeypatch, "--long"))
    by_label = {(r.label, r.spec.train.seed): blocks[r.run_id] for r in sweep.runs}
    assert by_label[("unet", 0)]["model.channel_mults"] == "[1, 2, 4]"
    assert by_label[("starter-cnn", 0)]["model.name"] == "cnn" and by_label[("unet", 0)]["model.name"] == "unet"
    assert by_label[("unet", 0)]["model.hidden"] == "-"
    assert by_label[("starter-cnn", 0)]["model.hidden"] == "[16, 32, 32, 16]"
    assert by_label[("starter-cnn", 0)]["model.base_channels"] == "-"


# --------------------------------------------------------------------------- compact (default)


def compact_rows(output: str, n_runs: int) -> list[list[str]]:
    """The lines of a compact table: title, header, rule, one line per run, footer."""
    lines = output.splitlines()
    assert set(lines[2]) <= {"-", " "}, output
    return [line.split() for line in lines[3 : 3 + n_runs]]


@pytest.mark.parametrize("name", ["quick", "part1", "part2", "mnist-equal-time", "cold-diffusion"])
def test_dry_runs_print_one_line_per_run_in_80_columns(name, tmp_path, monkeypatch):
    """Every shipped sweep: the title, a header, a rule, one line per run and one footer
    line, each within 80 columns, nothing cut."""
    output = dry_run(name, tmp_path, monkeypatch)
    sweep = load_sweep(_sweep_file(name))
    lines = output.splitlines()
    assert len(lines) == 3 + len(sweep.runs) + 1, output
    assert all(len(line) <= WIDTH for line in lines) and "…" not in output, output
    assert lines[-1].startswith("dry run: ")
    rows = compact_rows(output, len(sweep.runs))
    assert [(r[0], r[1] if sweep.runs[0].label else None) for r in rows] == [
        (run.run_id, run.label or None) for run in sweep.runs
    ]
    assert all(r[-1] == "new" for r in rows)


def test_quick_shows_only_what_varies_within_a_label(tmp_path, monkeypatch):
    """quick.toml: a CNN and two UNet seeds. Within a label only the seed varies: one seed
    column; the model keys that differ between labels stay in --long and config.toml."""
    output = dry_run("quick", tmp_path, monkeypatch)
    assert output.splitlines()[1].split() == ["run", "label", "seed", "action"]
    sweep = load_sweep(JOBS / "quick.toml")
    rows = compact_rows(output, len(sweep.runs))
    assert [r[1:3] for r in rows] == [[run.label, str(run.spec.train.seed)] for run in sweep.runs]


MODEL_SWEEP = """
[sweep]
name = "sizes"
[[sweep.cases]]
label = "unet"
model = { name = "unet", base_channels = 16, channel_mults = [1, 2, 4] }
[[sweep.cases]]
label = "unet"
model = { name = "unet", base_channels = 32, channel_mults = [1, 2, 2] }
[[sweep.cases]]
label = "cnn"
model = { name = "cnn", hidden = [16, 32, 32, 16] }
[data]
name = "mnist-5k"
"""


def test_a_model_that_varies_within_a_label_is_one_compact_value(tmp_path, monkeypatch):
    from hpcdiff.science.models import build_model

    sweep_file = tmp_path / "sizes.toml"
    sweep_file.write_text(MODEL_SWEEP)
    output = dry_run(sweep_file, tmp_path, monkeypatch)
    lines = output.splitlines()
    assert lines[1].split() == ["run", "label", "model", "action"], output
    sweep = load_sweep(sweep_file)
    texts = [line.split("  ") for line in lines[3:6]]
    for run, line in zip(sweep.runs, lines[3:6]):
        params = sum(p.numel() for p in build_model(run.spec.model).parameters())
        assert f"{params / 1e6:.2f}M" in line
    assert "unet 16x(1,2,4) 0.48M" in lines[3] and "unet 32x(1,2,2)" in lines[4]
    assert "cnn [16,32,32,16] 0.29M" in lines[5] and texts


def test_status_is_one_line_per_run(tmp_path, monkeypatch):
    plan = _pending_part2(tmp_path, monkeypatch)
    result = CliRunner(env={"COLUMNS": str(WIDTH)}).invoke(main, ["status", "runs/part2"])
    lines = result.output.splitlines()
    assert result.exit_code == 0 and len(lines) == 3 + 10 + 1, result.output
    assert lines[1].split() == ["run", "label", "state", "progress"]
    assert all(len(line) <= WIDTH for line in lines) and "…" not in result.output
    epochs = {run.run_id: run.spec.train.epochs for run in plan.sweep.runs}
    assert {r[0]: (r[2], r[3]) for r in compact_rows(result.output, 10)} == {
        rid: ("pending", f"0/{n}") for rid, n in epochs.items()
    }
    assert lines[-1] == "10 pending (10 runs)"


def test_progress_is_in_the_unit_that_ends_the_run():
    from hpcdiff.config.text_table import progress_text

    steps = {"max_steps": 1300, "epochs": 100}
    assert (
        progress_text(steps, epoch=11, epochs=100, steps=1300, seconds=400, ended=True, stopped_by="max_steps")
        == "1300/1300 steps"
    )
    assert progress_text(steps, epoch=3, epochs=100, steps=420, seconds=60) == "420/1300 steps"  # running
    # ended by its epochs before the step budget (or by early stopping): epochs
    assert progress_text(steps, epoch=1, epochs=1, steps=4, seconds=3, ended=True) == "1/1 ep"
    timed = {"max_minutes": 30, "epochs": 100}
    assert (
        progress_text(timed, epoch=7, epochs=100, steps=None, seconds=1805, ended=True, stopped_by="max_minutes")
        == "30/30 min"
    )
    assert progress_text({"epochs": 20}, epoch=5, epochs=20, steps=None, seconds=None) == "5/20 ep"


def test_a_table_too_wide_drops_whole_columns_least_important_first_and_says_so():
    from hpcdiff.config.text_table import Column, dropped_note, fit

    columns = [Column("a", "a"), Column("b", "bee", drop_order=1), Column("c", "sea", drop_order=2, right=True)]
    rows = [{"a": "x" * 30, "b": "y" * 20, "c": "1.5"}, {"a": "short", "b": "", "c": "10.25"}]
    lines, dropped = fit(columns, rows, width=80)
    assert dropped == [] and lines[2].endswith("  1.5") and len(lines) == 4
    lines, dropped = fit(columns, rows, width=55)
    assert dropped == ["sea"] and lines[0].split() == ["a", "bee"] and "y" * 20 in lines[2]
    lines, dropped = fit(columns, rows, width=10)
    assert dropped == ["sea", "bee"] and lines[2] == "x" * 30  # a value is never cut
    assert "sea, bee" in dropped_note(dropped) and dropped_note([]) == ""
