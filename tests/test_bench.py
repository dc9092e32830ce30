"""The benchmarks run end to end on the CPU and measure what they say they measure (their
numbers are reported, never asserted: speed is not a test)."""

from hpcdiff.bench.sample import benchmark_sample
from hpcdiff.bench.train import benchmark_train


def test_bench_train_times_the_trainers_loop_against_the_notebook():
    r = benchmark_train(epochs=1, steps=2, warmup=1, batch_size=128, device="cpu", subset=512)
    names = [res.name for res in r["results"]]
    assert names[0].startswith("notebook") and names[1].startswith("hpcdiff eager")
    assert not any("graph" in n for n in names)  # CUDA graphs need CUDA
    eager = r["results"][1]
    # The trainer's own loop ran: one epoch of 512 mnist-5k images at batch 128, in the mode it chose.
    assert eager.steps == 512 // 128 and eager.note == "none, no"
    assert all(res.images_per_second > 0 for res in r["results"])
    assert r["speedup_vs_notebook"] > 0 and r["graph_vs_eager"] is None


def test_bench_sample_times_both_samplers_and_their_denoiser_calls():
    r = benchmark_sample(samples=4, ancestral_steps=5, ddim_steps=3)
    assert [row["sampler"] for row in r["rows"]] == ["ancestral, 5 steps", "ddim, 3 steps"]
    assert all(row["seconds"] > 0 and row["denoiser_seconds"] > 0 for row in r["rows"])


def test_bench_fused_measures_training_and_sampling_against_one_after_another(monkeypatch):
    from hpcdiff.bench import fused

    monkeypatch.setattr(fused, "SAMPLE_STEPS", 3)  # a smaller measurement of the same code
    for part in ("train", "sample"):
        rows = fused.benchmark_fused(("starter-cnn",), (1, 2), batch=4, steps=1, processes=False, part=part)
        assert [(r["k"], r["method"]) for r in rows] == [
            (k, m) for k in (1, 2) for m in ("one after another", "fused (vmap)", "fused (loop)")
        ]
        assert all(r["part"] == part and r["images/s"] > 0 for r in rows)
        assert [r["ratio"] for r in rows if r["method"] == "one after another"] == [1.0, 1.0]


def test_bench_fused_profile_counts_one_batched_convolution_per_layer_for_k_members(tmp_path):
    """The profile reads what fusion rests on: vmap turns K members' convolutions into one
    batched call per layer (as many calls as one run alone), loop mode makes K calls."""
    import json

    from hpcdiff.bench.fused_profile import profile_step

    def convolutions(report):  # forward and backward (vmap's rule calls aten::convolution twice)
        return report.calls["aten::_convolution"] + report.calls["aten::convolution_backward"]

    alone = profile_step("starter-cnn", 0, batch=4, steps=2, warmup=1, trace_dir=tmp_path)
    vmap = profile_step("starter-cnn", 3, batch=4, steps=2, warmup=1, mode="vmap", trace_dir=tmp_path)
    loop = profile_step("starter-cnn", 3, batch=4, steps=2, warmup=1, mode="loop")
    assert convolutions(alone) > 0
    assert convolutions(vmap) == convolutions(alone)
    assert convolutions(loop) == 3 * convolutions(alone)
    assert (alone.kernels_per_step, alone.busy) == (None, None)  # device facts only on a GPU
    assert "one run alone" in alone.summary() and "K=3 fused (vmap)" in vmap.summary()
    assert vmap.trace.name == "fused-starter-cnn-k3.trace.json" and loop.trace is None
    events = json.loads(vmap.trace.read_text())["traceEvents"]
    assert any(e.get("name") == "aten::_convolution" for e in events)


def test_bench_fused_profile_command_profiles_one_run_and_the_largest_k(tmp_path):
    from click.testing import CliRunner

    from hpcdiff.cli import main

    args = ["bench", "fused", "--models", "starter-cnn", "--k", "1,2", "--batch", "4", "--steps", "1"]
    result = CliRunner().invoke(main, [*args, "--profile", str(tmp_path / "prof")])
    assert result.exit_code == 0, result.output
    summaries = [line for line in result.output.splitlines() if line.startswith("profile ")]
    assert [s.split(" on ")[0] for s in summaries] == [
        "profile starter-cnn one run alone",
        "profile starter-cnn K=2 fused (loop)",  # the CPU's stacking mode
    ]
    assert "images/s" not in result.output  # the profile instead of the throughput
    assert sorted(p.name for p in (tmp_path / "prof").iterdir()) == [
        "fused-starter-cnn-alone.trace.json",
        "fused-starter-cnn-k2.trace.json",
    ]
