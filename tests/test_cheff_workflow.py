"""Cheff pieces the workflow adds: MaCheX config and sources, SR crop training, the beta-check table, the cheff
config section (schema defaults -> CheffConfig), and the stage functions end to end at toy size."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cxrgen.cheff.config import CheffConfig, MaCheXConfig
from cxrgen.cheff.super_resolution import SRConfig, SuperResolution, random_crop, train_sr, upsample_condition
from cxrgen.errors import InputError
from threads import TEST_THREADS

torch.set_num_threads(TEST_THREADS)
REPO = Path(__file__).resolve().parents[1]


def test_machex_sources_default_to_the_configured_dataset():
    data = {"name": "phantom", "source": "phantom", "root": "data/mimic-cxr-jpg"}
    (src,) = MaCheXConfig.preset("default").resolve_sources(data)
    assert src == {"adapter": "mimic", "root": "data/mimic-cxr-jpg", "name": "MIMIC-CXR (phantom)", "options": {}}
    (nih,) = MaCheXConfig.preset("default").resolve_sources({"source": "nih", "root": "/d/nih", "csv": "/d/nih.csv"})
    assert nih["adapter"] == "nih" and nih["options"] == {"csv": "/d/nih.csv"}
    given = [{"adapter": "chexpert", "root": "/d/chexpert"}, {"adapter": "padchest", "root": "/d/padchest"}]
    assert MaCheXConfig.preset("paper", sources=given).resolve_sources(data) == given
    with pytest.raises(InputError, match=r"cheff.machex.sources\[0\]"):
        MaCheXConfig.preset("default", sources=[{"root": "/x"}]).resolve_sources(data)
    with pytest.raises(InputError, match="cheff.machex.max_train"):
        MaCheXConfig.preset("default", max_train=0)
    with pytest.raises(InputError, match="cheff.machex: unknown"):
        MaCheXConfig.preset("default", maxtrain=3)


def test_cheff_config_rejects_unknown_sections_and_keeps_machex():
    cfg = CheffConfig.from_dict({"preset": "smoke", "machex": {"max_test": 5}})
    assert cfg.machex.max_test == 5 and cfg.machex.max_train == 24
    assert CheffConfig.from_dict({"preset": "paper"}).machex.max_test == 25_000
    with pytest.raises(InputError, match="cheff: unknown key"):
        CheffConfig.from_dict({"autoencodr": {}})


def _schema_defaults(section: dict) -> dict:
    """The cheff section as the workflow sees it after schema validation fills in defaults."""
    from snakemake.utils import validate

    cfg = {"data": {}, "samples": {}, "cheff": section}
    validate(cfg, str(REPO / "schemas" / "config.schema.yaml"))
    return cfg["cheff"]


@pytest.mark.parametrize("config_file", ["config.yaml", "configs/smoke.yaml", "configs/weber2023.yaml"])
def test_config_files_map_onto_cheff_config(config_file):
    section = yaml.safe_load((REPO / config_file).read_text())["cheff"]
    cfg = CheffConfig.from_dict(_schema_defaults(section))
    assert cfg.sr.lr_size == cfg.autoencoder.image_size and cfg.sr.hr_size % cfg.sr.lr_size == 0
    assert cfg.sdm.beta_end == 0.0295
    if config_file == "config.yaml":
        assert (cfg.autoencoder.image_size, cfg.sr.hr_size) == (64, 128)
        assert cfg == CheffConfig.from_dict({})  # config.yaml spells out the package's default preset
    if config_file == "configs/weber2023.yaml":
        assert (cfg.autoencoder.image_size, cfg.sr.hr_size, cfg.sdm.ddim_steps, cfg.sr.ddim_steps) == (256, 1024, 150, 150)
        assert (cfg.autoencoder.batch_size, cfg.sdm.batch_size, cfg.sr.batch_size) == (64, 256, 32)
        assert cfg.sdm_for("report").steps == 750_000 and cfg.sr.crop_size is None
        assert {s["adapter"] for s in cfg.machex.sources} >= {"mimic", "chexpert", "padchest", "nih"}


def test_schema_rejects_bad_cheff_values_naming_the_key():
    from snakemake.exceptions import WorkflowError

    for bad, key in (({"preset": "huge"}, "huge"), ({"sdm": {"beta_end": 1.5}}, "beta_end"),
                     ({"sr": {"cropsize": 8}}, "cropsize"), ({"machex": {"sources": [{"root": "/x"}]}}, "adapter")):
        with pytest.raises(WorkflowError, match=key):
            _schema_defaults(bad)


def test_random_crop_takes_the_same_window_from_image_and_condition():
    torch.manual_seed(0)
    x = torch.arange(2 * 1 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16)
    a, b = random_crop(x, x + 0.5, 8)
    assert a.shape == (2, 1, 8, 8) and torch.equal(b, a + 0.5)
    for i in range(2):  # each crop is a contiguous window of its own image
        top, left = divmod(int(a[i, 0, 0, 0].item()) - i * 256, 16)
        assert torch.equal(a[i, 0], x[i, 0, top:top + 8, left:left + 8])
    with pytest.raises(InputError, match="crop size"):
        random_crop(x, x, 32)
    with pytest.raises(InputError, match="crop_size"):
        SRConfig.preset("smoke", crop_size=64)  # larger than hr_size (32)


def test_sr_trained_on_crops_upscales_whole_images(tmp_path):
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 255, (6, 32, 32), dtype=np.uint8)
    cfg = SRConfig.preset("smoke", crop_size=16, steps=3)
    train_sr(hr, cfg, tmp_path / "sr", seed=0, progress=False)
    log = pd.read_csv(tmp_path / "sr" / "training_log.csv")
    assert len(log) == 3 and np.isfinite(log["loss"]).all()
    out = SuperResolution.load(tmp_path / "sr").upscale(hr[:2, ::2, ::2].copy(), steps=2, progress=False)
    assert out.shape == (2, 32, 32) and out.dtype == np.uint8


def test_sr_sampler_clips_pixels_and_starts_from_pure_noise(tmp_path):
    """The SR samples pixels: x_0 estimates clipped to [-1, 1] and the first DDIM step at t = T - 1, also for SR
    folders saved before (whose scheduler config says no clipping, leading steps)."""
    import json

    from cxrgen.cheff.diffusion import ddim_sample
    from cxrgen.cheff.schedules import ddim_from, make_scheduler
    from cxrgen.cheff.super_resolution import sr_sampler

    ddpm = make_scheduler("ddpm", 2000, beta_schedule="squaredcos_cap_v2")
    old, new = ddim_from(ddpm), sr_sampler(ddim_from(ddpm).config)
    old.set_timesteps(10)
    new.set_timesteps(10)
    assert int(old.timesteps[0]) == 1801 and int(new.timesteps[0]) == 1999 and int(new.timesteps[-1]) == 199
    # an eps model that predicts ~0 (as a fresh U-Net does): unclipped, x_0 = x_t / sqrt(alpha_bar) is the start
    # noise blown up 6x and the image leaves [-1, 1] far; clipped, every iterate stays in range
    bad_eps = lambda x, t: torch.zeros_like(x)  # noqa: E731
    x_old = ddim_sample(bad_eps, old, (2, 1, 16, 16), 10, torch.Generator().manual_seed(1))
    x_new = ddim_sample(bad_eps, new, (2, 1, 16, 16), 10, torch.Generator().manual_seed(1))
    assert x_old.abs().max() > 5 and x_new.abs().max() <= 1.05
    # an SR folder saved with the plain latent sampler config loads with the pixel sampler
    cfg = SRConfig.preset("smoke", steps=1)
    train_sr(np.random.default_rng(0).integers(0, 255, (4, 32, 32), dtype=np.uint8), cfg, tmp_path / "sr",
             progress=False)
    saved = json.loads((tmp_path / "sr" / "scheduler" / "scheduler_config.json").read_text())
    assert saved["clip_sample"] is True and saved["timestep_spacing"] == "trailing"
    saved.update(clip_sample=False, timestep_spacing="leading")
    (tmp_path / "sr" / "scheduler" / "scheduler_config.json").write_text(json.dumps(saved))
    loaded = SuperResolution.load(tmp_path / "sr").scheduler.config
    assert loaded.clip_sample and loaded.timestep_spacing == "trailing"


@pytest.mark.parametrize("residual, prediction_type", [(True, "v_prediction"), (False, "epsilon")])
def test_sr_samples_what_it_diffuses(tmp_path, residual, prediction_type):
    """The miniature's SR diffuses the scaled residual over the upsampled condition and predicts v; the paper's
    predicts epsilon of x_HR. Either way a U-Net that predicts its training target exactly (an oracle that knows
    x_HR) makes the saved-and-loaded sampler return x_HR: target, scale, clip range and prediction type agree.
    Kept out of test_cheff.py: run before its SDM resume test there, it made the resumed weights differ (an
    order dependence through some process-wide state, not yet found)."""
    from types import SimpleNamespace

    from cxrgen.cheff.super_resolution import diffused_target
    from cxrgen.cheff.training import to_unit
    from cxrgen.diffusion import add_noise_and_target

    cfg = SRConfig.preset("smoke", steps=1, residual=residual, prediction_type=prediction_type)
    hr = _blobs(4, cfg.hr_size, 0)
    train_sr(hr, cfg, tmp_path / "sr", progress=False)
    sr = SuperResolution.load(tmp_path / "sr")
    assert (sr.residual, sr.scheduler.config.prediction_type) == (residual, prediction_type)
    lr = hr[:, ::2, ::2].copy()
    x0 = diffused_target(to_unit(hr), upsample_condition(to_unit(lr), cfg.hr_size), cfg)
    abar = sr.scheduler.alphas_cumprod

    def oracle(x, t):
        a = abar[int(t)]
        noise = (x[:, :1] - a.sqrt() * x0) / (1 - a).sqrt()
        return SimpleNamespace(sample=add_noise_and_target(sr.scheduler, x0, noise, torch.full((len(x),), int(t)))[1])

    sr.unet.forward = oracle
    out = sr.upscale(lr, generator=torch.Generator().manual_seed(0), progress=False)
    err = np.abs(out.astype(int) - hr)  # float32: at t = T - 1 the epsilon path divides by sqrt(abar) ~ 1e-4
    assert err.mean() < 0.5 and err.max() <= 2


@pytest.mark.slow
def test_stages_end_to_end_at_toy_size(tmp_path, monkeypatch):
    """machex -> autoencoder -> SDMs -> SR base/fine -> Table 2, inpainting and the beta check, via the stage functions."""
    from cxrgen.studies import cheff as cheff_study
    from cxrgen.data.phantom import generate_mimic_cxr

    generate_mimic_cxr(tmp_path / "mimic", n_patients=16, studies_per_patient=(1, 2), image_size=32, seed=1, progress=False)
    cfg = CheffConfig.from_dict({"preset": "smoke", "machex": {"max_train": 12, "max_test": 4}})
    data = {"source": "phantom", "root": str(tmp_path / "mimic")}
    m = tmp_path / "machex"
    t1 = cheff_study.run_machex(cfg.machex.resolve_sources(data), True, cfg.sr.hr_size, m, tmp_path / "t" / "table1",
                           "miniature", max_train=cfg.machex.max_train, max_test=cfg.machex.max_test)
    assert t1["dataset"].tolist() == ["MIMIC-CXR (phantom)"]
    md = (tmp_path / "t" / "table1.md").read_text()
    assert "(this run)" in md and "(paper)" in md and "ChestX-ray14" in md and "miniature" in md
    t1_csv = pd.read_csv(tmp_path / "t" / "table1.csv").set_index("dataset")
    assert t1_csv.loc["MIMIC-CXR", "source (this run)"] == "MIMIC-CXR (phantom)"  # the phantom sits in the MIMIC row
    assert t1_csv.loc["MIMIC-CXR", "n_in_machex (this run)"] == t1["n_in_machex"].iloc[0]
    assert t1_csv.loc["MIMIC-CXR", "n_in_machex (paper)"] == 243334
    train, _ = cheff_study.load_split(m, "train")
    assert len(train) == 12 and train[0].shape == (32, 32) and train[0].dtype == np.uint8
    assert cheff_study.load_split(m, "test")[0].head().shape[1:] == (32, 32)
    cheff_study.run_autoencoder(m, cfg, tmp_path / "ae", tmp_path / "ae.partial")
    for variant in ("unconditional", "report"):
        cheff_study.run_sdm(m, tmp_path / "ae", cfg, variant, tmp_path / f"sdm_{variant}", tmp_path / f"sdm_{variant}.partial")
    cheff_study.run_sr(m, cfg, tmp_path / "sr_base", tmp_path / "srb.partial")
    cheff_study.run_sr(m, cfg, tmp_path / "sr_fine", tmp_path / "srf.partial", ae_dir=tmp_path / "ae", init_from=tmp_path / "sr_base")
    assert not (tmp_path / "ae.partial").exists()  # checkpoints go once the model folder is written
    t2 = cheff_study.run_reconstruction(m, tmp_path / "ae", tmp_path / "sr_base", tmp_path / "sr_fine", cfg,
                                   tmp_path / "rec", tmp_path / "t" / "table2", tmp_path / "f" / "fig3", "miniature")
    assert len(t2) == 6 and t2["psnr"].notna().all()
    md2 = (tmp_path / "t" / "table2.md").read_text()
    assert "(paper)" in md2 and "(this run)" in md2 and (tmp_path / "f" / "fig3.png").is_file()
    monkeypatch.setattr(cheff_study, "_fid_extractor", lambda name, classifier=None: _PoolExtractor())
    fid_kid = cheff_study.run_synthesis(m, tmp_path / "ae", tmp_path / "sdm_unconditional", tmp_path / "sdm_report",
                                   tmp_path / "sr_fine", cfg, tmp_path / "syn", tmp_path / "t" / "fid_kid",
                                   tmp_path / "f" / "samples", tmp_path / "f" / "report_samples", "miniature",
                                   fid_n_boot=10)
    assert fid_kid["model"].tolist() == ["Cheff", "Cheff, untrained SDM (baseline)"]  # the baseline row beside it
    assert fid_kid["kid"].nunique() == 2 and "untrained SDM" in (tmp_path / "t" / "fid_kid.md").read_text()
    pres = cheff_study.run_inpainting(m, tmp_path / "ae", tmp_path / "sdm_unconditional", cfg, tmp_path / "inp",
                                 tmp_path / "f" / "inpaint", tmp_path / "f" / "outpaint")
    assert set(pres["task"]) == {"inpainting", "outpainting"} and (pres["known_mae_final"] == 0).all()
    beta = cheff_study.run_beta_check(m, tmp_path / "ae", tmp_path / "sdm_unconditional", cfg, tmp_path / "beta.csv",
                                 tmp_path / "f" / "fig13", table_stem=tmp_path / "t" / "beta")
    assert beta["beta_end"].tolist() == [0.0195, 0.0295]
    assert beta["terminal_signal"].iloc[1] < beta["terminal_signal"].iloc[0]  # the higher max beta leaves less signal
    per = pd.read_csv(tmp_path / "per_image.csv")  # per image, same noise: the overall correlation's parts
    assert sorted(per["beta_end"].unique()) == [0.0195, 0.0295] and per["corr_zT_z0_raw"].between(-1, 1).all()
    assert per.groupby("beta_end")["corr_zT_z0_raw"].mean().is_monotonic_decreasing
    md3 = (tmp_path / "t" / "beta.md").read_text()
    assert "LDM default" in md3 and "Cheff" in md3 and "(paper)" not in md3


# ------------------------------------------------------------------------------------------------ synthesis comparison
class _PoolExtractor:
    """4 x 4 mean-pooled pixels: a cheap stand-in with the extractor interface (callable + name)."""
    name = "pool4x4"

    def __call__(self, images):
        x = torch.from_numpy(np.asarray(images, np.float32))[:, None]
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


def _blobs(n, size, seed):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    cx, cy = rng.uniform(0.3, 0.7, (2, n, 1, 1))
    return np.clip(255 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 0.05), 0, 255).astype(np.uint8)


def test_synthesis_comparison_scores_every_set_on_equal_terms(tmp_path):
    from cxrgen.cheff import evaluate as ev
    from cxrgen.studies import cheff as cheff_study
    from cxrgen.data.preprocess import resize_images

    real = _blobs(12, 16, 0)
    cheff = _blobs(8, 32, 1)  # higher resolution, fewest images
    sets = [{"model": "Cheff", "study": "Weber", "images": cheff},
            {"model": "same", "study": "SD", "images": _blobs(10, 16, 2)},
            {"model": "noise", "study": "SD", "images": np.random.default_rng(3).integers(0, 255, (10, 16, 16), np.uint8)}]
    df = ev.synthesis_comparison(sets, real, _PoolExtractor(), kid_subset_size=50, seed=0)
    assert list(df["model"]) == ["Cheff", "same", "noise"]
    assert (df["resolution"] == 16).all() and (df["n_fake"] == 8).all() and (df["n_real"] == 12).all()
    assert list(df["n_available"]) == [8, 10, 10] and list(df["native_resolution"]) == [32, 16, 16]
    assert (df["kid_subset_size"] == 8).all() and (df["extractor"] == "pool4x4").all()
    d = df.set_index("model")
    assert d.loc["noise", "fid"] > 3 * max(d.loc["same", "fid"], d.loc["Cheff", "fid"])
    assert d.loc["noise", "kid"] > d.loc["same", "kid"] and (df["kid_std"] >= 0).all()
    assert (df["fid_ci_low"] <= df["fid_ci_high"]).all() and (df["kid_ci_low"] <= df["kid_ci_high"]).all()
    assert d.loc["noise", "fid_ci_low"] > d.loc["same", "fid_ci_high"]  # 10 noise images vs blobs: no overlap
    # the 32 px set goes through the same resizing as everything else: pre-resized, it scores the same
    sets16 = [{**sets[0], "images": resize_images(cheff, 16)}, *sets[1:]]
    df16 = ev.synthesis_comparison(sets16, real, _PoolExtractor(), kid_subset_size=50, seed=0)
    assert np.allclose(df16["fid"], df["fid"]) and np.allclose(df16["kid"], df["kid"])
    assert ev.synthesis_comparison(sets, real, _PoolExtractor(), seed=0).equals(df)  # deterministic
    with pytest.raises(InputError, match="uint8"):
        ev.synthesis_comparison([{"model": "x", "study": "y", "images": real.astype(float)}], real, _PoolExtractor())

    paths = cheff_study.write_synthesis_comparison(df, tmp_path / "cmp", "miniature")
    table = pd.read_csv(paths["csv"]).set_index("model")
    cheff_cell = table.loc["Cheff", "fid (this run)"]
    assert table.loc["Cheff", "fid (paper)"] == 11.58 and np.isclose(float(cheff_cell.split(" [")[0]), d.loc["Cheff", "fid"])
    assert cheff_cell == f"{d.loc['Cheff', 'fid']:.4f} [{d.loc['Cheff', 'fid_ci_low']:.4f}, {d.loc['Cheff', 'fid_ci_high']:.4f}]"
    assert "[" in table.loc["noise", "kid (this run)"]
    assert np.isnan(table.loc["noise", "fid (paper)"]) and table.loc["noise", "n synthetic"] == 8
    assert table.loc["Triple cascaded diffusion model (64->256->1024 px)", "study"] == "paper only"
    assert list(table.columns[:5]) == ["study", "n synthetic", "n real", "native px", "scored px"]
    md = paths["md"].read_text()
    assert "miniature" in md and "pool4x4" in md and "16 px" in md and "KID sd (this run)" in md
    assert "FID and KID cells: value [95% CI]" in md and "FID is biased upward" in md  # 8 images < 16 features


def test_fid_kid_table_carries_n_and_cis(tmp_path):
    from cxrgen.cheff import evaluate as ev
    from cxrgen.studies import cheff as cheff_study

    ours = ev.synthesis_metrics(_blobs(12, 16, 0), _blobs(10, 16, 1), _PoolExtractor(), kid_subset=50, seed=0,
                                fid_n_boot=50)
    r = ours.iloc[0]
    assert (r["n_real"], r["n_fake"], r["kid_subset_size"], r["n_boot"], r["dim"]) == (12, 10, 10, 50, 16)
    assert r["fid_ci_low"] <= r["fid_ci_high"] and r["kid_ci_low"] <= r["kid_ci_high"] and r["fid_biased"]
    table = pd.read_csv(cheff_study.write_fid_kid(ours, tmp_path / "fk", "miniature")["csv"]).set_index("model")
    assert table.loc["Cheff", "n real (this run)"] == 12 and table.loc["Cheff", "n synthetic (this run)"] == 10
    assert table.loc["Cheff", "kid (this run)"] == f"{r['kid']:.4f} [{r['kid_ci_low']:.4f}, {r['kid_ci_high']:.4f}]"
    assert "FID is biased upward at n below the feature dimension (10 < 16" in (tmp_path / "fk.md").read_text()
    # the real set read from disk chunk by chunk (as run_synthesis reads the MaCheX test split) scores the same
    from cxrgen.data.shards import ShardedDataset, write_shards

    write_shards(tmp_path / "real", [{"image": _blobs(12, 16, 0)}], shard_size=5)
    streamed = ev.synthesis_metrics(ShardedDataset(tmp_path / "real", "image"), _blobs(10, 16, 1), _PoolExtractor(),
                                    kid_subset=50, seed=0, fid_n_boot=50)
    pd.testing.assert_frame_equal(streamed, ours)


def test_run_synthesis_comparison_reads_the_three_studies(tmp_path, monkeypatch):
    from PIL import Image

    from cxrgen.studies import cheff as cheff_study

    def folder(path, images, **columns):
        (path / "images").mkdir(parents=True)
        files = []
        for i, img in enumerate(images):
            files.append(f"images/{i}.png")
            Image.fromarray(img).save(path / files[-1])
        pd.DataFrame({"image_id": [str(i) for i in range(len(images))], "file": files, **columns}).to_csv(
            path / "manifest.csv", index=False)
        return path

    np.savez(tmp_path / "samples.npz", lr=_blobs(6, 16, 1), hr=_blobs(6, 32, 1))
    sd = folder(tmp_path / "sd", _blobs(8, 16, 2), prompt_name="normal", method="original")
    zafar = folder(tmp_path / "zafar", _blobs(9, 16, 3), part=["fid"] * 7 + ["ood"] * 2)
    real = folder(tmp_path / "real", _blobs(10, 16, 4))
    monkeypatch.setattr(cheff_study, "_fid_extractor", lambda name, classifier=None: _PoolExtractor())
    df = cheff_study.run_synthesis_comparison(tmp_path / "samples.npz", {"original": sd}, {"full_ft": zafar}, real,
                                         CheffConfig.from_dict({"preset": "smoke"}), tmp_path / "cmp.csv",
                                         tmp_path / "t" / "cmp", "miniature")
    assert list(df["model"]) == ["Cheff", "original", "full_ft (Zafar)"]
    assert list(df["n_available"]) == [6, 8, 7] and (df["n_fake"] == 6).all() and (df["n_real"] == 10).all()
    assert pd.read_csv(tmp_path / "cmp.csv").shape[0] == 3 and (tmp_path / "t" / "cmp.md").is_file()


# ------------------------------------------------------------------------------------------------ figure labels
def test_grid_label_wraps_whole_words_within_the_cell():
    from cxrgen.cheff.evaluate import grid_label

    assert grid_label("Cardiomegaly.") == "Cardiomegaly."
    assert grid_label("D(z_T), max beta 0.0195") == "D(z_T), max beta\n0.0195"
    long = grid_label("No acute cardiopulmonary process, small bilateral pleural effusions with basal atelectasis.")
    lines = long.split("\n")
    assert len(lines) == 3 and all(len(line) <= 16 for line in lines) and lines[-1].endswith("...")
    assert all(w in "No acute cardiopulmonary process, small bilateral pleural effusions" for w in long.split()[:-1])


def _overlaps(a, b, gap: float = 0.0) -> bool:
    """Whether two display boxes overlap or come closer than ``gap`` pixels."""
    return a.x0 - gap < b.x1 and b.x0 - gap < a.x1 and a.y0 - gap < b.y1 and b.y0 - gap < a.y1


@pytest.mark.parametrize("which", ["fig13", "report_samples"])
def test_cheff_grid_labels_do_not_overlap_images_or_each_other(tmp_path, monkeypatch, which):
    import cxrgen.plotting as figures
    from cxrgen.cheff import evaluate as ev

    captured = []
    real_save = figures.save_figure
    monkeypatch.setattr(figures, "save_figure", lambda fig, stem, close=True: (captured.append(fig),
                                                                               real_save(fig, stem, close=False))[1])
    img = np.zeros((32, 32), np.uint8)
    if which == "fig13":  # the beta check's column names (run_beta_check -> write_grid)
        names = ["x_0", "D(z_0)", "D(z_T), max beta 0.0195", "D(z_T), max beta 0.0295"]
        ev.write_grid({k: [img] * 4 for k in names}, tmp_path / which, "Forward process check (Weber Fig. 13)", n=4)
    else:  # the report-conditioned grid's row labels (run_synthesis), the default prompts
        prompts = CheffConfig.from_dict({"preset": "default"}).evaluation.prompts
        figures.image_grid([[img] * 4 for _ in prompts], [ev.grid_label(p) for p in prompts],
                           [f"seed {j + 1}" for j in range(4)], tmp_path / which, title="Report-conditioned samples")
    fig = captured[0]
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    axes = [ax.get_window_extent(r) for ax in fig.axes]
    labels = [t.get_window_extent(r) for ax in fig.axes for t in (ax.title, ax.yaxis.label) if t.get_text()]
    labels.append(fig._suptitle.get_window_extent(r))
    assert not any(_overlaps(lab, box) for lab in labels for box in axes)
    # unwrapped, fig13's two "D(z_T), max beta ..." titles ran into each other (3 px apart at 100 dpi)
    assert not any(_overlaps(a, b, gap=8) for i, a in enumerate(labels) for b in labels[i + 1:])
    assert (tmp_path / f"{which}.png").is_file()
    import matplotlib.pyplot as plt

    plt.close(fig)
