"""Cheff cascade (Weber et al. 2023): schedules, autoencoder, SDM, SR, inpainting, MaCheX, resume, a smoke run."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from cxrgen.cheff import schedules
from cxrgen.cheff.autoencoder import AutoencoderConfig, build_autoencoder, encode, load_autoencoder, reconstruct, train_autoencoder
from cxrgen.cheff.config import CheffConfig
from cxrgen.cheff.diffusion import SDM, SDMConfig, train_sdm
from cxrgen.cheff.inpainting import inpaint, latent_mask, preservation, rect_mask
from cxrgen.cheff.super_resolution import SRConfig, build_sr_unet, sr_input, upsample_condition
from cxrgen.errors import InputError
from threads import TEST_THREADS

torch.set_num_threads(TEST_THREADS)


def _images(n=16, size=16, seed=0):
    """Smooth blobs: learnable in a few steps, unlike white noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for _ in range(n):
        cx, cy, r = rng.uniform(0.3, 0.7, 3)
        out.append(255 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (0.1 * r)))
    return np.clip(out, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------------ schedules
@pytest.mark.parametrize("kind", ["scaled_linear", "linear"])
@pytest.mark.parametrize("beta_end", [schedules.LDM_BETA_END, schedules.CHEFF_BETA_END])
def test_terminal_signal_matches_closed_form(kind, beta_end):
    betas = schedules.make_betas(1000, schedules.LDM_BETA_START, beta_end, kind)
    assert len(betas) == 1000 and math.isclose(float(betas[-1]), beta_end, rel_tol=1e-5)
    closed = math.sqrt(schedules.closed_form_alpha_bar_T(1000, schedules.LDM_BETA_START, beta_end, kind))
    assert math.isclose(schedules.terminal_signal(betas), closed, rel_tol=2e-3)


def test_cheff_beta_leaves_less_signal_and_known_values():
    sig = {b: schedules.terminal_signal(schedules.make_betas(beta_end=b)) for b in (0.0195, 0.0295)}
    # LDM's sqrt-linear schedule: ~0.0118 of z_0 survives at 0.0195, ~0.0019 at 0.0295 (6x less)
    assert 0.010 < sig[0.0195] < 0.014 and 0.0015 < sig[0.0295] < 0.0023
    assert schedules.expected_terminal_correlation(sig[0.0195], 10.0) > 5 * schedules.expected_terminal_correlation(sig[0.0295], 10.0)
    z0 = 20 * torch.randn(8, 3, 16, 16)  # unscaled latents of a KL-1e-6 autoencoder are large
    corr = {b: schedules.terminal_correlation(z0, schedules.make_betas(beta_end=b), torch.Generator().manual_seed(0)) for b in sig}
    assert corr[0.0195] > 0.15 > 0.06 > corr[0.0295]
    per = {b: schedules.terminal_correlation_per_sample(z0, schedules.make_betas(beta_end=b), torch.Generator().manual_seed(0)) for b in sig}
    assert per[0.0195].shape == (8,) and (per[0.0195] > per[0.0295]).all()  # same noise: less signal in every sample
    one = schedules.terminal_correlation_per_sample(z0[:1], schedules.make_betas(), torch.Generator().manual_seed(3))
    assert one[0] == pytest.approx(schedules.terminal_correlation(z0[:1], schedules.make_betas(), torch.Generator().manual_seed(3)))
    with pytest.raises(InputError, match="beta_schedule"):
        schedules.make_betas(beta_schedule="quadratic")


# ------------------------------------------------------------------------------------------------ SR
def test_sr_conditioning_shapes():
    cfg = SRConfig.preset("smoke")
    x_lr = torch.rand(3, 1, cfg.lr_size, cfg.lr_size) * 2 - 1
    cond = upsample_condition(x_lr, cfg.hr_size)
    assert cond.shape == (3, 1, cfg.hr_size, cfg.hr_size)
    inp = sr_input(torch.randn_like(cond), cond)
    assert inp.shape == (3, 2, cfg.hr_size, cfg.hr_size)
    unet = build_sr_unet(cfg)
    assert unet.config.in_channels == 2 and unet.config.out_channels == 1
    with torch.no_grad():
        assert unet(inp, torch.tensor([5, 50, 500])).sample.shape == (3, 1, cfg.hr_size, cfg.hr_size)
    with pytest.raises(InputError, match="equal shapes"):
        sr_input(torch.randn(3, 1, 8, 8), cond)
    with pytest.raises(InputError, match="hr_size"):
        SRConfig.preset("smoke", hr_size=24)


def test_untrained_sdm_keeps_the_architecture_with_fresh_seeded_weights(tmp_path):
    vae = build_autoencoder(AutoencoderConfig.preset("smoke"))
    sdm = train_sdm(vae, _images(4), SDMConfig.preset("smoke", steps=1), tmp_path / "sdm", seed=0, progress=False)
    a, b, c = sdm.untrained(0), sdm.untrained(0), sdm.untrained(1)
    assert a.unet.config == sdm.unet.config and a.latent_scale == sdm.latent_scale and a.ddim_steps == sdm.ddim_steps
    sa, sb, sc, trained = (m.unet.state_dict() for m in (a, b, c, sdm))
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # deterministic in the seed
    assert any(not torch.equal(sa[k], sc[k]) for k in sa) and any(not torch.equal(sa[k], trained[k]) for k in sa)


def test_sr_and_sdm_reject_unknown_prediction_types():
    with pytest.raises(InputError, match="prediction_type"):
        SRConfig.preset("smoke", prediction_type="sample")
    with pytest.raises(InputError, match="residual_scale"):
        SRConfig.preset("smoke", residual_scale=0)
    with pytest.raises(InputError, match="prediction_type"):
        SDMConfig.preset("smoke", prediction_type="x0")


# ------------------------------------------------------------------------------------------------ autoencoder
def test_autoencoder_round_trip_and_training_lowers_loss(tmp_path):
    cfg = AutoencoderConfig.preset("smoke", steps=12, lr=3e-3, disc_start=8, batch_size=8)
    assert cfg.downsampling_factor == 4
    imgs = _images(16, 16)
    vae0 = build_autoencoder(cfg).eval()
    z = encode(vae0, imgs)
    assert z.shape == (16, 3, 4, 4)
    before = np.abs(reconstruct(vae0, imgs).astype(float) - imgs).mean()
    train_autoencoder(imgs, cfg, tmp_path / "ae", seed=0, progress=False)
    vae = load_autoencoder(tmp_path / "ae")
    rec = reconstruct(vae, imgs)
    assert rec.shape == imgs.shape and rec.dtype == np.uint8
    assert np.abs(rec.astype(float) - imgs).mean() < 0.8 * before
    logdf = pd.read_csv(tmp_path / "ae" / "training_log.csv")
    assert len(logdf) == 12 and {"rec_l1", "kl", "g_adv", "d_loss"} <= set(logdf.columns)
    assert (tmp_path / "ae" / "loss_curve.png").is_file() and (tmp_path / "ae" / "cheff_autoencoder.json").is_file()
    with pytest.raises(InputError, match="expected uint8"):
        train_autoencoder(imgs[:, :8, :8], cfg, tmp_path / "bad", progress=False)


# ------------------------------------------------------------------------------------------------ resume
def test_report_tokenizer_is_the_same_on_every_call():
    from cxrgen.cheff.text_encoder import SPECIAL, train_wordpiece_tokenizer

    reports = ["Small right pleural effusion.", "No acute findings", "small effusion"] * 3
    # the library's WordPiece trainer gave 16 different vocabularies in 100 calls on reports like these
    vocabs = {tuple(sorted(train_wordpiece_tokenizer(reports, 200, 32).get_vocab().items())) for _ in range(20)}
    assert len(vocabs) == 1
    tok = train_wordpiece_tokenizer(reports, 200, 32)
    assert all(tok.convert_tokens_to_ids(t) == i for i, t in enumerate(SPECIAL))
    assert tok.tokenize("small effusion") == ["small", "effusion"]
    assert tok.tokenize("effusions") == ["effusion", "##s"]  # out of vocabulary: WordPiece's longest match
    ids = tok("no acute findings").input_ids
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id and tok.unk_token_id not in ids
    # most frequent words first, ties alphabetical: 'effusion' and 'small' (6 times each), then 'acute' (3)
    vocab = train_wordpiece_tokenizer(reports, len(tok) - 5, 32).get_vocab()
    assert "effusion" in vocab and "small" in vocab and "acute" not in vocab and "right" not in vocab
    with pytest.raises(InputError, match="vocab_size=10"):
        train_wordpiece_tokenizer(reports, 10, 32)


@pytest.mark.slow
def test_resume_from_checkpoint_gives_identical_state(tmp_path):
    # a resumed job is a fresh process; run the check in one (the resumed weights used to differ now and then: the
    # report tokenizer's vocabulary was not deterministic, see test_report_tokenizer_is_the_same_on_every_call)
    import multiprocessing

    proc = multiprocessing.get_context("spawn").Process(target=_resume_check, args=(tmp_path,))
    proc.start()
    proc.join(600)
    assert proc.exitcode == 0, "the resume check failed in its own process (its traceback is above)"


def _resume_check(tmp_path):
    vae = build_autoencoder(AutoencoderConfig.preset("smoke")).eval()
    imgs = _images(8, 16)
    reports = ["small right pleural effusion", "no acute findings"] * 4
    cfg = SDMConfig.preset("smoke", conditioning="report", steps=4, checkpoint_every=2)
    full = train_sdm(vae, imgs, cfg, tmp_path / "full", reports, tmp_path / "ck_full", seed=3, progress=False)
    train_sdm(vae, imgs, cfg, tmp_path / "part", reports, tmp_path / "ck_part", seed=3, progress=False, stop_after=2)
    assert not (tmp_path / "part").exists() and (tmp_path / "ck_part" / "state.pt").is_file()
    torch.manual_seed(12345)  # a restarted job starts with another global RNG state: the checkpoint restores it
    resumed = train_sdm(vae, imgs, cfg, tmp_path / "part", reports, tmp_path / "ck_part", seed=3, progress=False)
    for name in ("unet", "encoder"):
        a, b = getattr(full, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    la, lb = pd.read_csv(tmp_path / "full" / "training_log.csv"), pd.read_csv(tmp_path / "part" / "training_log.csv")
    assert la["loss"].tolist() == lb["loss"].tolist()
    sdm = SDM.load(tmp_path / "part")
    assert sdm.conditioning == "report" and sdm.tokenizer is not None


# ------------------------------------------------------------------------------------------------ inpainting
def test_inpainting_preserves_known_region(tmp_path):
    vae = build_autoencoder(AutoencoderConfig.preset("smoke")).eval()
    imgs = _images(3, 16)
    cfg = SDMConfig.preset("smoke", steps=2)
    sdm = train_sdm(vae, imgs, cfg, tmp_path / "sdm", seed=0, progress=False)
    mask = rect_mask(16, 0.25, 0.25, 0.5, 0.5)
    assert latent_mask(mask, 4).sum() == 4  # the 8x8 pixel box covers 2x2 latent cells
    final, decoded = inpaint(sdm, vae, imgs, mask, generator=torch.Generator().manual_seed(0))
    assert final.shape == imgs.shape
    assert np.array_equal(final[:, ~mask], imgs[:, ~mask])  # the provided region is untouched
    assert not np.array_equal(final[:, mask], imgs[:, mask])  # the masked region was regenerated
    df = preservation(imgs, final, decoded, mask)
    assert (df["known_mae_final"] == 0).all() and np.isinf(df["known_psnr_final"]).all()
    assert np.isfinite(df["known_mae_decoded"]).all()
    with pytest.raises(InputError, match="no pixel"):
        inpaint(sdm, vae, imgs, np.zeros((16, 16), bool))


# ------------------------------------------------------------------------------------------------ MaCheX + config
def test_machex_table1_and_images(tmp_path):
    from cxrgen.cheff import machex
    from cxrgen.data.phantom import generate_mimic_cxr

    generate_mimic_cxr(tmp_path / "mimic", n_patients=12, studies_per_patient=(1, 2), image_size=32, seed=1, progress=False)
    src = [{"adapter": "mimic", "root": str(tmp_path / "mimic"), "name": "MIMIC-CXR (phantom)"}]
    table = machex.build_machex(src, frontal_only=True)
    t1 = machex.table1(table)
    assert list(t1.columns) == machex.TABLE1_COLUMNS and t1["pct_of_machex"].iloc[0] == 100.0
    assert t1["n_in_machex"].iloc[0] == int((table["frontal"] & (table["source_split"] == "train")).sum())
    assert t1["origin"].iloc[0] == "Boston, MA, USA"
    imgs = machex.load_images(table[table["in_machex"]].head(3), 16, progress=False)
    assert imgs.shape == (3, 16, 16) and imgs.dtype == np.uint8
    ds = machex.MaCheXDataset(table, 16)
    item = ds[0]
    assert item["image"].shape == (1, 16, 16) and isinstance(item["report"], str)
    with pytest.raises(InputError, match="adapter"):
        machex.build_machex([{"adapter": "vindr", "root": "x"}])


def test_config_presets():
    smoke, paper = CheffConfig.from_dict({"preset": "smoke"}), CheffConfig.from_dict({"preset": "paper"})
    assert (smoke.autoencoder.image_size, smoke.sr.hr_size) == (16, 32)
    assert (paper.autoencoder.block_out_channels, paper.autoencoder.kl_weight, paper.autoencoder.lr) == ((128, 256, 512), 1e-6, 4.5e-6)
    assert (paper.sr.lr_size, paper.sr.hr_size, paper.sr.num_train_timesteps) == (256, 1024, 2000)
    assert paper.sdm.beta_end == 0.0295 and paper.sdm.ddim_steps == 150 and paper.sdm.encoder.max_length == 150
    assert paper.sdm_for("report").steps == 750_000 and paper.sdm_for("unconditional").steps == 500_000
    with pytest.raises(InputError, match="unknown setting"):
        CheffConfig.from_dict({"autoencoder": {"kl": 1}})
    with pytest.raises(InputError, match="lr_size"):
        CheffConfig.from_dict({"sr": {"lr_size": 16}})


# ------------------------------------------------------------------------------------------------ cascade artefact
@pytest.mark.slow
def test_cascade_round_trips_as_a_diffusion_pipeline_with_model_cards(tmp_path):
    from diffusers import DiffusionPipeline

    from cxrgen.cheff.cascade import CheffPipeline, sample_cascade, save_cascade
    from cxrgen.cheff.super_resolution import SuperResolution, train_sr
    from cxrgen.models.card import read_model_card

    imgs = _images(4, 16)
    ae_cfg = AutoencoderConfig.preset("smoke", steps=1, batch_size=2)
    vae = train_autoencoder(imgs, ae_cfg, tmp_path / "ae", seed=0, progress=False)
    train_sdm(vae, imgs, SDMConfig.preset("smoke", steps=1, batch_size=2), tmp_path / "sdm", seed=0, progress=False)
    sr_cfg = SRConfig.preset("smoke", lr_size=16, hr_size=32, steps=1, batch_size=2)
    train_sr(_images(4, 32), sr_cfg, tmp_path / "sr", seed=0, progress=False)
    for stage in ("ae", "sdm", "sr"):  # every trained stage carries a card with front matter
        card = read_model_card(tmp_path / stage)
        assert card["library_name"] == "diffusers" and card["data"]["n_images"] == 4, stage
        assert card["intended_use"] == "research use, not for clinical use" and "final_loss" in card["metrics"]
    assert read_model_card(tmp_path / "sdm")["training_config"]["conditioning"] == "none"

    save_cascade(tmp_path / "ae", tmp_path / "sdm", tmp_path / "sr", tmp_path / "cascade")
    loaded = CheffPipeline.from_pretrained(tmp_path / "cascade")
    assert isinstance(loaded, DiffusionPipeline) and loaded.config.conditioning == "none"
    assert read_model_card(tmp_path / "cascade")["cxrgen_artefact"] == "cheff_cascade"
    out = loaded(n=2, seed=3, sdm_steps=2, sr_steps=2)
    assert out.images.shape == (2, 32, 32) and out.images_lr.shape == (2, 16, 16) and out.images.dtype == np.uint8
    # the same samples as the stage folders give
    lr, hr = sample_cascade(SDM.load(tmp_path / "sdm"), load_autoencoder(tmp_path / "ae"),
                            SuperResolution.load(tmp_path / "sr"), 2, seed=3, sdm_steps=2, sr_steps=2, progress=False)
    assert np.array_equal(lr, out.images_lr) and np.array_equal(hr, out.images)
    # the report-conditioned cascade carries its text encoder and tokenizer
    reports = ["small right pleural effusion", "no acute findings"] * 2
    train_sdm(vae, imgs, SDMConfig.preset("smoke", conditioning="report", steps=1, batch_size=2), tmp_path / "sdm_r",
              reports, seed=0, progress=False)
    save_cascade(tmp_path / "ae", tmp_path / "sdm_r", tmp_path / "sr", tmp_path / "cascade_r")
    report = CheffPipeline.from_pretrained(tmp_path / "cascade_r")
    assert report.config.conditioning == "report" and report.tokenizer is not None
    out = report(n=2, reports=reports[:2], seed=1, sdm_steps=2, sr_steps=2)
    _, hr = sample_cascade(SDM.load(tmp_path / "sdm_r"), load_autoencoder(tmp_path / "ae"),
                           SuperResolution.load(tmp_path / "sr"), 2, reports[:2], seed=1, sdm_steps=2, sr_steps=2,
                           progress=False)
    assert np.array_equal(hr, out.images)
    with pytest.raises(InputError, match="one report per sample"):
        report(n=2, seed=1)
