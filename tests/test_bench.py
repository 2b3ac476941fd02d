"""The benchmark code in bench/ still runs on minimal settings, and the metric-agreement checks pass.

No speed is asserted anywhere: the figures of a 1-2 step run mean nothing (bench/README.md).
"""

import math
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common, gpu_estimate, metrics, sampling, snakemake_overhead, training  # noqa: E402


@pytest.fixture
def one_thread():
    """One torch thread while a test runs (two threads on a loaded 2-core machine can make small kernels ~40x
    slower while they wait for each other); the previous setting is restored after."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _positive(x):
    return x is not None and math.isfinite(x) and x > 0


def test_training_bench_runs_ours_and_reference(foundation, one_thread):
    rows = training.run(foundation, steps=2, warmup=1, batch_size=2, resolution=32, n_images=4, repeats=1,
                        log=lambda *a: None)
    rates = [r for r in rows if r.unit == "steps/s"]
    assert [r.name for r in rates] == [f"{m} steps/s" for m in training.METHODS]
    assert all(_positive(r.ours) and _positive(r.reference) and _positive(r.ratio) for r in rates)
    assert all(math.isfinite(r.extra["loss_last_ours"]) and math.isfinite(r.extra["loss_last_reference"])
               for r in rates)


def test_sampling_bench_makes_the_same_images_both_ways(foundation, one_thread):
    rows = sampling.run(foundation, n=2, batch_size=2, steps=2, repeats=1, log=lambda *a: None)
    assert _positive(rows[0].ours) and _positive(rows[0].reference)
    assert rows[0].extra["max_abs_diff_grey_levels"] <= 1


def test_metric_benchmarks_agree_with_their_references(one_thread):
    rows, failures = metrics.run(n_fid=120, dim=64, n_batches=2, ref_batches=1, n_pairs=3, size=48, n_reports=60,
                                 n_images_fid=6, repeats=1, log=lambda *a: None)
    assert failures == []
    assert {r.reference_name for r in rows} >= {"torchmetrics FID", "pytorch-fid (scipy sqrtm)",
                                                "skimage structural_similarity", "numpy loop"}
    assert all("FAIL" not in r.note for r in rows)


def test_metric_agreement_check_catches_a_disagreement(monkeypatch, one_thread):
    monkeypatch.setattr(metrics, "chexpert_loop", lambda sim, labels, k: metrics.np.zeros(len(labels)))
    _, failures = metrics.run(n_fid=60, dim=16, n_batches=2, ref_batches=1, n_pairs=2, size=48, n_reports=40,
                              n_images_fid=4, repeats=1, scipy_check=False, log=lambda *a: None)
    assert len(failures) == 1 and failures[0].startswith("chexpert")


def test_steady_rate_uses_the_median_step_after_warmup():
    stamps = [10.0, 10.5, 11.0, 11.5, 20.0]  # a 10 s first step and an 8.5 s burst are both left out
    assert common.steady_rate(stamps, warmup=1) == pytest.approx(2.0)
    assert common.mean_rate(stamps, warmup=1) == pytest.approx(4 / 10.0)


@pytest.mark.slow
def test_snakemake_dry_run_from_scratch():
    rows = snakemake_overhead.run(None, repeats=1, log=lambda *a: None)
    planned = [r for r in rows if r.ours is not None]
    assert len(planned) == 2 and all(_positive(r.ours) for r in planned)
    assert all(int(r.note.split()[0]) > 0 for r in planned)  # "<n> jobs planned"
    assert rows[-1].ours is None and "skipped" in rows[-1].note


@pytest.mark.slow
def test_gpu_estimate_counts_flops_on_the_meta_device():
    f = gpu_estimate.Flops()
    fwd = f.unet("sd-v1", 512)
    assert 5e11 < fwd < 2e12  # SD v1 U-Net at 512 px: ~0.8 TFLOP per forward
    assert 2.5 * fwd < f.unet("sd-v1", 512, "full") < 3.5 * fwd  # backward ~2x forward
    assert fwd < f.unet("sd-v1", 512, "input") < f.unet("sd-v1", 512, "full")  # no weight gradients
    text, rows = gpu_estimate.report([ROOT / "configs" / "chambon2022.yaml"])
    assert "not measurements" in text and "sec. 3.1" in text
    ti = [r for r in rows if r["job"].endswith("textual_inversion training")]
    assert len(ti) == 4 and all(r["gpu_hours"] > 0 and 0 < r["cached_share"] < 1 for r in ti)


def test_run_py_quick_metrics_exit_status(capsys, monkeypatch, one_thread):
    from bench import run

    for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):  # restored after the test
        monkeypatch.setenv(k, "1")
    assert run.main(["--only", "metrics", "--quick", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "agreement checks: all within tolerance" in out and "| metrics" in out


@pytest.mark.slow
def test_cheff_memory_bench_measures_one_stage_at_two_dataset_sizes(tmp_path):
    from bench import cheff_memory

    rows = cheff_memory.run(sizes=(20, 40), stage="autoencoder", steps=1, batch_size=2, hr_size=32,
                            workdir=tmp_path, preset="smoke", log=lambda *a: None)
    assert [r["images"] for r in rows] == [20, 40]
    assert 0 < rows[0]["train_images"] < rows[1]["train_images"] <= 40
    assert all(_positive(r["peak_tree_pss_mb"]) and _positive(r["peak_rss_mb"]) for r in rows)
    figures = cheff_memory.bench_rows(rows)
    assert [r.unit for r in figures] == ["MB", "MB"] and all(r.lower_is_better and _positive(r.ratio) for r in figures)
    assert f"{rows[1]['train_images']} vs {rows[0]['train_images']} train images" in figures[0].note
