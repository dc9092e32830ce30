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
