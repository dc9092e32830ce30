"""Small helpers shared by test modules (tests/ is on sys.path)."""

from click.testing import CliRunner

from hpcdiff.cli import main
from hpcdiff.launch.plan import plan_sweep
from hpcdiff.storage.rundir import RunDir, update_manifest, write_run_config


def cli(*args, **env):
    """`hpcdiff ARGS...` in this process (click's runner); exceptions propagate."""
    return CliRunner(env=env or None).invoke(main, [str(a) for a in args], catch_exceptions=False)

# The smallest real run (Fashion-MNIST IDX files, a 2-layer CNN, 20 steps): every test that
# trains starts from it. Fields: root, subset, epochs. TINY_DEFAULT_EVAL keeps the [eval]
# section a user gets (metrics on, the classifier of conftest's fashion_classifier);
# TINY_BASE switches metrics off for tests about something else.
TINY_DEFAULT_EVAL = """
[data]
name = "idx"
root = "{root}"
subset = {subset}

[model]
hidden = [8, 8]

[diffusion]
n_T = 20

[train]
epochs = {epochs}
batch_size = 64
n_samples = 4
sample_every = 1
seed = 0
"""
TINY_BASE = TINY_DEFAULT_EVAL + """
[eval]
metrics = []
reconstruction = false
"""


def make_run_dir(sweep_file, out) -> RunDir:
    """Write the first run of a sweep to disk, as `hpcdiff sweep` would, without training it
    (so a test can start `hpcdiff train` itself and signal or kill it)."""
    plan = plan_sweep(sweep_file, output=out)
    run = plan.sweep.runs[0]
    rd = RunDir(plan.sweep_dir / run.run_id)
    write_run_config(rd, run.spec, run_id=run.run_id, sweep=plan.sweep.name, axes=run.axes, label=run.label)
    update_manifest(plan.sweep_dir, plan.sweep, sweep_file.read_text())
    return rd


def resume_with(rd: RunDir, **train_settings) -> str:
    """Resume a finished run as if it had been stopped at its last checkpoint (state
    "timeout"), with ``train_settings`` changed in its config.toml (e.g. more epochs)."""
    from hpcdiff.config import tomlio
    from hpcdiff.training.loop import train

    config = tomlio.load(rd.config_path)
    config["train"].update(train_settings)
    rd.config_path.write_text(tomlio.dumps(config))
    rd.write_status(state="timeout")
    return train(rd.path)
