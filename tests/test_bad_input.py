"""Malformed input to `hpcdiff sweep`: every case exits 2 with one message naming the file and
the key (or the argument), without a traceback, and writes nothing, with --dry-run and without.

The corpus runs in this one process through click's runner (no interpreter per case), so it
stays a second or two however many cases it holds.
"""

import os
import subprocess
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from hpcdiff.cli import main
from hpcdiff.config.spec import SECTIONS, RunSpec, SpecError

# A valid sweep of one run. Its data directory does not exist: a case that wrongly passed
# validation would fail in its first second instead of training (and the test would still
# fail, on the exit code and the files written).
BASE = """
[data]
name = "idx"
root = "/nonexistent/hpcdiff-bad-input"
[model]
hidden = [8, 8]
[train]
epochs = 1
[eval]
metrics = []
"""

DIGITS = ", ".join(str(i) for i in range(1, 1001))

# (id, sweep file text (bytes for raw bytes), extra CLI arguments, text the message must hold).
# In arguments, {tmp} is the test's temporary directory and {file} the sweep file.
CORPUS = [
    # the file itself
    ("empty-file", "", [], "the sweep file is empty"),
    ("whitespace-file", "  \n\t\n\n", [], "the sweep file is empty"),
    ("comments-only", "# just a comment\n\n# another\n", [], "the sweep file is empty"),
    ("toml-syntax", BASE + "[train\nlr = 1\n", [], "at line 11, column"),
    ("toml-duplicate-key", BASE + "[model]\nactivation = 'relu'\nactivation = 'gelu'\n", [], "not valid TOML"),
    ("not-utf8", BASE.encode() + b'[model]\nactivation = "caf\xe9"\n', [], "not UTF-8"),
    ("missing-file", BASE, [], "sweep file not found"),
    ("file-is-directory", BASE, [], "is a directory"),
    # sections and keys
    ("unknown-section", BASE + "[trian]\nlr = 0.1\n", [], "did you mean 'train'"),
    ("top-level-scalar", "epochs = 3\n" + BASE, [], "epochs"),
    ("section-not-table", "train = 3\n", [], "key 'train'"),
    ("unknown-key", BASE + "[diffusion]\nbeta3 = 0.1\n", [], "diffusion.beta3"),
    # floats: non-finite in every kind of place
    ("lr-inf", BASE.replace("epochs = 1", "epochs = 1\nlr = inf"), [], "train.lr"),
    ("lr-nan", BASE.replace("epochs = 1", "epochs = 1\nlr = nan"), [], "train.lr"),
    ("weight-decay-inf", BASE.replace("epochs = 1", "epochs = 1\nweight_decay = inf"), [], "train.weight_decay"),
    ("grad-clip-inf", BASE.replace("epochs = 1", "epochs = 1\ngrad_clip = +inf"), [], "train.grad_clip"),
    ("start-noise-inf", BASE + "[diffusion]\nstart_noise = inf\n", [], "diffusion.start_noise"),
    (
        "min-delta-nan",
        BASE.replace("epochs = 1", "epochs = 1\nearly_stopping_min_delta = nan"),
        [],
        "train.early_stopping_min_delta",
    ),
    (
        "min-delta-negative",
        BASE.replace("epochs = 1", "epochs = 1\nearly_stopping_min_delta = -0.1"),
        [],
        "train.early_stopping_min_delta",
    ),
    ("beta2-inf", BASE + "[diffusion]\nbeta2 = inf\n", [], "diffusion.beta2"),
    ("set-lr-inf", BASE, ["--set", "train.lr=inf"], "train.lr"),
    ("product-axis-nan", BASE + "[sweep.product]\ntrain.lr = [1e-3, nan]\n", [], "train.lr"),
    # degradation parameters
    (
        "param-nan",
        BASE + '[degradation]\nname = "impulse"\nparams = { rho_end = nan }\n',
        [],
        "degradation.params.rho_end",
    ),
    ("param-inf", BASE + '[degradation]\nname = "blur"\nparams = { sigma = inf }\n', [], "degradation.params.sigma"),
    (
        "param-out-of-range",
        BASE + '[degradation]\nname = "impulse"\nparams = { rho_end = 0.9 }\n',
        [],
        "degradation.params.rho_end",
    ),
    (
        "param-even-kernel",
        BASE + '[degradation]\nname = "blur"\nparams = { kernel_size = 4 }\n',
        [],
        "degradation.params.kernel_size",
    ),
    (
        "param-huge-kernel",
        BASE + '[degradation]\nname = "blur"\nparams = { kernel_size = 1000000001 }\n',
        [],
        "degradation.params.kernel_size",
    ),
    (
        "param-bad-padding",
        BASE + '[degradation]\nname = "blur"\nparams = { padding = "zero" }\n',
        [],
        "degradation.params.padding",
    ),
    (
        "param-zero-factor",
        BASE + '[degradation]\nname = "downsample"\nparams = { max_factor = 0 }\n',
        [],
        "degradation.params.max_factor",
    ),
    ("param-unknown", BASE + '[degradation]\nname = "blur"\nparams = { sigmaa = 2.0 }\n', [], "did you mean 'sigma'"),
    # integers
    ("seed-negative", BASE.replace("epochs = 1", "epochs = 1\nseed = -1"), [], "train.seed"),
    ("seed-too-big", BASE.replace("epochs = 1", "epochs = 1\nseed = 4294967296"), [], "train.seed"),
    ("sweep-seed-too-big", BASE + "[sweep]\nseeds = [0, 99999999999999]\n", [], "sweep.seeds[1]"),
    ("int-past-int64", BASE.replace("epochs = 1", "epochs = 1e300"), [], "train.epochs"),
    ("epochs-huge", BASE.replace("epochs = 1", "epochs = 100000000000"), [], "train.epochs"),
    ("batch-huge", BASE.replace("epochs = 1", "epochs = 1\nbatch_size = 10000000000"), [], "train.batch_size"),
    ("n-T-huge", BASE + "[diffusion]\nn_T = 1000000000\n", [], "diffusion.n_T"),
    ("n-samples-huge", BASE.replace("epochs = 1", "epochs = 1\nn_samples = 1000000000"), [], "train.n_samples"),
    ("eval-samples-huge", BASE.replace("metrics = []", "metrics = []\nsamples = 1000000000"), [], "eval.samples"),
    ("hidden-huge", BASE.replace("hidden = [8, 8]", "hidden = [8, 1000000000]"), [], "model.hidden[1]"),
    (
        "kernel-wider-than-image",
        BASE.replace("hidden = [8, 8]", "hidden = [8, 8]\nkernel_size = 99"),
        [],
        "model.kernel_size",
    ),
    ("int-is-string", BASE.replace("epochs = 1", 'epochs = "ten"'), [], "train.epochs"),
    ("compile-typo", BASE.replace("epochs = 1", 'epochs = 1\ncompile = "graphs"'), [], "did you mean 'graph'"),
    ("set-compile-bad", BASE, ["--set", "train.compile=cuda"], "train.compile"),
    # the model: the other model's keys, the UNet's sizes
    (
        "unet-key-on-cnn",
        BASE.replace("hidden = [8, 8]", "hidden = [8, 8]\nchannel_mults = [1, 2]"),
        [],
        "model.channel_mults",
    ),
    ("cnn-key-on-unet", BASE.replace("hidden = [8, 8]", 'name = "unet"\nhidden = [8, 8]'), [], "model.hidden"),
    ("model-name-typo", BASE.replace("hidden = [8, 8]", 'name = "unett"'), [], "did you mean 'unet'"),
    ("unet-groups", BASE.replace("hidden = [8, 8]", 'name = "unet"\nbase_channels = 12'), [], "model.groups"),
    (
        "unet-too-many-halvings",
        BASE.replace('name = "idx"', 'name = "mnist-5k"').replace(
            "hidden = [8, 8]", 'name = "unet"\nchannel_mults = [1, 2, 2, 2]'
        ),
        [],
        "model.channel_mults",
    ),
    ("case-unet-over-cnn-base", BASE + '[[sweep.cases]]\nmodel = { name = "unet" }\n', [], "model.hidden"),
    ("set-unet-key-on-cnn", BASE, ["--set", "model.res_blocks=2"], "model.res_blocks"),
    # budgets
    ("max-steps-negative", BASE.replace("epochs = 1", "epochs = 1\nmax_steps = -1"), [], "train.max_steps"),
    ("max-minutes-negative", BASE.replace("epochs = 1", "epochs = 1\nmax_minutes = -5"), [], "train.max_minutes"),
    ("max-minutes-inf", BASE.replace("epochs = 1", "epochs = 1\nmax_minutes = inf"), [], "train.max_minutes"),
    # strings
    ("root-with-nul", BASE.replace('root = "/nonexistent', 'root = "/non\\u0000existent'), [], "data.root"),
    ("root-empty", BASE.replace('root = "/nonexistent/hpcdiff-bad-input"', 'root = ""'), [], "data.root"),
    ("choice-typo", BASE.replace("hidden = [8, 8]", 'hidden = [8, 8]\nactivation = "gelo"'), [], "did you mean 'gelu'"),
    ("slurm-shell", BASE + '[slurm]\nsetup = ["module load x; rm -rf ~"]\n', [], "slurm.setup[0]"),
    # packing several runs per GPU: single-GPU runs only
    ("runs-per-gpu-zero", BASE + "[slurm]\nruns_per_gpu = 0\n", [], "slurm.runs_per_gpu"),
    ("runs-per-gpu-huge", BASE + "[slurm]\nruns_per_gpu = 65\n", [], "slurm.runs_per_gpu"),
    (
        "runs-per-gpu-multi-gpu",
        BASE + "[slurm]\nruns_per_gpu = 2\ngpus_per_node = 2\n",
        [],
        "packing is for single-GPU runs",
    ),
    (
        "runs-per-gpu-multi-node",
        BASE + "[slurm]\nruns_per_gpu = 2\ngpus_per_node = 1\nnodes = 2\n",
        [],
        "slurm.runs_per_gpu",
    ),
    (
        "runs-per-gpu-multi-task",
        BASE + "[slurm]\nruns_per_gpu = 2\ntasks_per_node = 2\n",
        [],
        "packing is for single-GPU runs",
    ),
    ("mps-without-gpu", BASE + "[slurm]\nmps = true\n", [], "slurm.mps"),
    ("mps-not-bool", BASE + '[slurm]\ngpus_per_node = 1\nmps = "yes"\n', [], "slurm.mps"),
    # lists
    ("metrics-repeated", BASE.replace("metrics = []", 'metrics = ["ssim", "ssim"]'), [], "eval.metrics[1]"),
    ("metrics-not-list", BASE.replace("metrics = []", 'metrics = "ssim"'), [], "eval.metrics"),
    ("metric-unknown", BASE.replace("metrics = []", 'metrics = ["fid_clasifier"]'), [], "eval.metrics[0]"),
    ("hidden-empty", BASE.replace("hidden = [8, 8]", "hidden = []"), [], "model.hidden"),
    ("hidden-nested", BASE.replace("hidden = [8, 8]", "hidden = [[8], 8]"), [], "model.hidden[0]"),
    # the [sweep] table
    ("sweep-not-table", "sweep = 3\n" + BASE, [], "key 'sweep'"),
    ("sweep-unknown-key", BASE + "[sweep]\nseed = [1]\n", [], "did you mean 'seeds'"),
    ("name-too-long", BASE + '[sweep]\nname = "' + "n" * 100_000 + '"\n', [], "sweep.name"),
    ("name-256", BASE + '[sweep]\nname = "' + "n" * 256 + '"\n', [], "sweep.name"),
    ("name-path", BASE + '[sweep]\nname = "../elsewhere"\n', [], "sweep.name"),
    ("label-too-long", BASE + '[[sweep.cases]]\nlabel = "' + "l" * 100_000 + '"\n', [], "sweep.cases[0].label"),
    ("label-newline", BASE + '[[sweep.cases]]\nlabel = "two\\nlines"\n', [], "sweep.cases[0].label"),
    ("label-not-string", BASE + "[[sweep.cases]]\nlabel = 3\n", [], "sweep.cases[0].label"),
    ("seeds-empty", BASE + "[sweep]\nseeds = []\n", [], "sweep.seeds"),
    ("seeds-not-ints", BASE + '[sweep]\nseeds = ["a"]\n', [], "sweep.seeds"),
    ("axis-empty", BASE + "[sweep.product]\ntrain.lr = []\n", [], "sweep.product.train.lr"),
    ("axis-not-list", BASE + "[sweep.product]\ntrain.lr = 0.1\n", [], "sweep.product.train.lr"),
    ("axis-unknown-key", BASE + "[sweep.product]\ntrain.lrr = [0.1]\n", [], "did you mean 'train.lr'"),
    ("axis-unknown-section", BASE + "[sweep.product]\ntrian.lr = [0.1]\n", [], "did you mean 'train'"),
    ("product-not-table", BASE + "[sweep]\nproduct = [1]\n", [], "sweep.product"),
    ("zip-unequal", BASE + "[[sweep.zip]]\ntrain.lr = [1e-3, 2e-3]\ntrain.epochs = [1]\n", [], "sweep.zip[0]"),
    ("zip-not-tables", BASE + "[sweep]\nzip = [1, 2]\n", [], "sweep.zip[0]"),
    ("zip-a-table", BASE + "[sweep.zip]\ntrain.lr = [1e-3]\n", [], "sweep.zip"),
    ("cases-not-tables", BASE + "[sweep]\ncases = [1, 2]\n", [], "sweep.cases"),
    ("case-unknown-key", BASE + "[[sweep.cases]]\nmodel = { hiden = [8] }\n", [], "model.hiden"),
    (
        "too-many-runs",
        BASE + f"[sweep.product]\ntrain.epochs = [{DIGITS}]\ntrain.batch_size = [{DIGITS}]\n",
        [],
        "more than 10000",
    ),
    # --set
    ("set-no-equals", BASE, ["--set", "train.lr"], "--set"),
    ("set-empty-key", BASE, ["--set", "=3"], "--set"),
    ("set-empty-part", BASE, ["--set", "train..lr=3"], "--set"),
    ("set-empty-value", BASE, ["--set", "train.lr="], "--set train.lr"),
    ("set-no-section", BASE, ["--set", "lr=3"], "--set"),
    ("set-unknown-section", BASE, ["--set", "trian.lr=3"], "did you mean 'train'"),
    ("set-unknown-key", BASE, ["--set", "train.epohcs=3"], "did you mean 'train.epochs'"),
    # [log]: live trackers
    ("log-unknown-key", BASE + "[log]\ntracker = ['tensorboard']\n", [], "did you mean 'trackers'"),
    ("log-unknown-tracker", BASE + "[log]\ntrackers = ['tensorbord']\n", [], "did you mean 'tensorboard'"),
    ("log-tracker-twice", BASE + "[log]\ntrackers = ['wandb', 'wandb']\n", [], "listed twice"),
    ("log-wandb-mode", BASE + "[log]\nwandb_mode = 'ofline'\n", [], "did you mean 'offline'"),
    ("log-trackers-type", BASE + "[log]\ntrackers = 'wandb'\n", [], "log.trackers"),
    ("set-log-unknown-key", BASE, ["--set", "log.wandb_projct=x"], "did you mean 'log.wandb_project'"),
    ("set-sweep-product", BASE, ["--set", "sweep.product.train.lr=[1]"], "--set sweep.product.train.lr"),
    ("set-bad-type", BASE, ["--set", "train.epochs=three"], "train.epochs"),
    ("set-sweep-name", BASE, ["--set", "sweep.name=a/b"], "sweep.name"),
    # CLI options (click's own usage errors exit 2 too)
    ("concurrency-zero", BASE, ["-j", "0"], "--concurrency"),
    ("processes-zero", BASE, ["--processes", "0"], "--processes"),
    ("executor-unknown", BASE, ["--executor", "nope"], "--executor"),
    ("option-unknown", BASE, ["--bogus"], "--bogus"),
    ("output-is-a-file", BASE, ["--output", "{tmp}/a-file"], "a-file"),
    ("output-under-a-file", BASE, ["--output", "{tmp}/a-file/runs"], "a-file"),
    ("output-name-too-long", BASE, ["--output", "{tmp}/" + "o" * 300], "o" * 300),
]


def _corpus_params():
    for case_id, text, args, expected in CORPUS:
        for mode in ("dry-run", "run"):
            yield pytest.param(case_id, text, args, expected, mode, id=f"{case_id}-{mode}")


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("case_id,text,args,expected,mode", _corpus_params())
def test_malformed_input_exits_2_naming_the_key(tmp_path, case_id, text, args, expected, mode):
    sweep_file = tmp_path / "bad.toml"
    if case_id == "file-is-directory":
        sweep_file.mkdir()
    elif case_id != "missing-file":
        sweep_file.write_bytes(text if isinstance(text, bytes) else text.encode())
    (tmp_path / "a-file").write_text("in the way\n")
    args = [a.format(tmp=tmp_path) for a in args]
    out = tmp_path / "out"
    before = _tree(tmp_path)
    # The mode's options first: a case's own option (--executor nope) is the one click keeps.
    mode_args = ["--dry-run"] if mode == "dry-run" else ["--executor", "debug"]
    result = CliRunner().invoke(main, ["sweep", str(sweep_file), "--output", str(out), *mode_args, *args])

    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    assert expected in result.output, result.output
    errors = [line for line in result.output.splitlines() if line.lower().startswith(("error", "usage"))]
    assert errors, result.output
    if not args or case_id.startswith("set-"):
        # a message about the file names the file (click's usage errors name the argument)
        assert str(sweep_file) in result.output, result.output
    assert not out.exists() or not any(out.iterdir())
    assert _tree(tmp_path) == before


def test_corpus_is_large_enough():
    assert len(CORPUS) >= 40
    assert len({case[0] for case in CORPUS}) == len(CORPUS)


def test_every_float_setting_rejects_non_finite_values():
    for section, cls in SECTIONS.items():
        for f in cls.__dataclass_fields__.values():
            if f.type not in ("float", float):
                continue
            for bad in (float("inf"), float("-inf"), float("nan")):
                with pytest.raises(SpecError, match=f"{section}.{f.name}.*finite"):
                    RunSpec.from_dict({section: {f.name: bad}})


def test_too_many_runs_is_refused_before_the_product_is_built(tmp_path):
    from hpcdiff.resolve import load_sweep

    path = tmp_path / "big.toml"
    axis = ", ".join(str(i) for i in range(1, 201))
    path.write_text(
        BASE + f"[sweep.product]\ntrain.epochs = [{axis}]\ntrain.batch_size = [{axis}]\n"
        f"model.kernel_size = [{', '.join(str(k) for k in range(1, 26, 2))}]\n"
    )
    start = time.monotonic()
    with pytest.raises(SpecError, match="520000 runs"):
        load_sweep(path)
    assert time.monotonic() - start < 5


def test_valid_degradation_params_still_pass(tmp_path):
    from hpcdiff.resolve import load_sweep

    path = tmp_path / "ok.toml"
    path.write_text(
        BASE + '[degradation]\nname = "blur"\nparams = { kernel_size = 11, sigma = 7.0, padding = "reflect" }\n'
        "[sweep]\nseeds = [0, 4294967295]\n"
    )
    sweep = load_sweep(path)
    assert len(sweep.runs) == 2 and sweep.runs[0].spec.degradation.params["padding"] == "reflect"


# --------------------------------------------------------------------------- unwritable output


@pytest.fixture
def mount_tmpfs(tmp_path):
    """mount(options) -> a fresh tmpfs directory; unmounted afterwards. Needs root (and a
    kernel that lets this container mount): skipped otherwise."""
    mounted = []

    def mount(options: str) -> Path:
        target = tmp_path / f"mnt{len(mounted)}"
        target.mkdir()
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(target)], capture_output=True, text=True
        )
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
        mounted.append(target)
        return target

    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    yield mount
    for target in reversed(mounted):
        subprocess.run(["umount", str(target)], check=False)


def _sweep_file(tmp_path, seeds=5) -> Path:
    path = tmp_path / "w.toml"
    path.write_text(BASE + f'[sweep]\nname = "w"\nseeds = {list(range(seeds))}\n')
    return path


@pytest.mark.parametrize("mode", [["--dry-run"], ["--executor", "debug"]])
def test_read_only_output_exits_2_naming_the_path(tmp_path, mount_tmpfs, mode):
    # As root, permission bits would not stop a write: a read-only mount does.
    ro = mount_tmpfs("ro,size=1m")
    result = CliRunner().invoke(main, ["sweep", str(_sweep_file(tmp_path)), "--output", str(ro / "runs"), *mode])
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert f"cannot write the sweep directory {ro / 'runs' / 'w'}" in result.output
    assert "Read-only file system" in result.output
    assert not any(ro.iterdir())


def test_full_disk_part_way_rolls_back(tmp_path, mount_tmpfs):
    # Room for the sweep directory and a file or two, not for five runs: the write fails
    # part-way and what this invocation created is removed, what was there is kept.
    small = mount_tmpfs("size=1m,nr_inodes=8")
    (small / "earlier").mkdir()
    (small / "earlier" / "result.txt").write_text("keep me\n")
    result = CliRunner().invoke(
        main, ["sweep", str(_sweep_file(tmp_path)), "--output", str(small), "--executor", "debug"]
    )
    assert result.exit_code == 2, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output
    assert f"cannot write the sweep directory {small / 'w'}" in result.output
    assert "No space left on device" in result.output
    assert sorted(p.name for p in small.iterdir()) == ["earlier"]
    assert (small / "earlier" / "result.txt").read_text() == "keep me\n"


def test_failed_write_restores_an_existing_manifest(tmp_path, mount_tmpfs):
    # A sweep written once (3 runs), then grown to 5 runs on a disk with no room left: the
    # first expansion's manifest and runs are exactly as they were.
    from hpcdiff.launch.plan import SweepWriteError, execute_plan, plan_sweep
    from hpcdiff.storage.rundir import RunDir, read_manifest, update_manifest, write_run_config

    small = mount_tmpfs("size=1m,nr_inodes=16")
    first = plan_sweep(_sweep_file(tmp_path, seeds=3), output=small)
    update_manifest(first.sweep_dir, first.sweep, "")
    for run in first.sweep.runs:
        write_run_config(
            RunDir(first.sweep_dir / run.run_id), run.spec, run_id=run.run_id, sweep="w", axes=run.axes, label=run.label
        )
    before = _tree(small)
    manifest = read_manifest(first.sweep_dir)
    grown = plan_sweep(_sweep_file(tmp_path, seeds=8), output=small)
    with pytest.raises(SweepWriteError, match="No space left on device"):
        execute_plan(grown, executor="debug")
    assert read_manifest(first.sweep_dir) == manifest
    assert _tree(small) == before
