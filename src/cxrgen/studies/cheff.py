"""The Cheff study (Weber et al. 2023), one function per workflow stage: read the previous stage's files, call the
library (:mod:`cxrgen.cheff`), write the outputs atomically, and the tables beside the paper's.  The Snakemake scripts
``scripts/cheff_*.py`` only call these."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrgen.cheff import evaluate as ev
from cxrgen.cheff import machex, schedules
from cxrgen.cheff.autoencoder import load_autoencoder, train_autoencoder
from cxrgen.cheff.cascade import sample_cascade
from cxrgen.cheff.config import CheffConfig
from cxrgen.cheff.diffusion import SDM, train_sdm
from cxrgen.cheff.inpainting import diversity, inpaint, outpaint, preservation, rect_mask
from cxrgen.cheff.super_resolution import SuperResolution, downsample, train_sr
from cxrgen.classify.reference import load_reference_classifier
from cxrgen.data.sampling import load_images
from cxrgen.data.shards import INDEX, SHARD_SIZE, ShardedDataset, write_shards
from cxrgen.errors import InputError
from cxrgen.io import atomic_path, write_csv_atomic
from cxrgen.metrics.features import make_fid_extractor
from cxrgen.plotting import image_grid
from cxrgen.render.reference import load_reference, paper_table_label
from cxrgen.render.tables import OURS, fid_kid_caption, side_by_side, write_table
from cxrgen.sampling.synthetic_sets import load_set, load_zafar_set

log = logging.getLogger(__name__)
IMAGES = "images"  # <machex_dir>/images/<subset>: a shard folder (cxrgen.data.shards), field "image"
PAPER_ID = "weber2023"


# ------------------------------------------------------------------------------------------------ data
def run_machex(sources, frontal_only: bool, hr_size: int, out_dir, table1_stem, scale: str, seed: int = 0,
               max_train: int | None = None, max_test: int | None = None, test_fraction: float = 0.1) -> pd.DataFrame:
    """MaCheX table, Table 1 (paper vs this run) and the train/test images at ``hr_size`` (``images/train`` and
    ``images/test``: shard folders read item by item, see :func:`load_split`)."""

    table = machex.build_machex(sources, frontal_only=frontal_only, seed=seed, test_fraction=test_fraction)
    out_dir = Path(out_dir)
    rng = np.random.default_rng(seed)
    parts = {}
    for subset, col, cap in (("train", "in_machex", max_train), ("test", "in_test", max_test)):
        rows = table[table[col]].reset_index(drop=True)
        if cap is not None and len(rows) > cap:  # a seeded subset keeps the miniature's cost bounded
            rows = rows.iloc[np.sort(rng.choice(len(rows), cap, replace=False))].reset_index(drop=True)
        if len(rows) == 0:
            raise InputError(f"MaCheX has no {subset} images (frontal_only={frontal_only}); expected at least one")
        parts[subset] = rows
    write_csv_atomic(table, out_dir / "table.csv")
    for subset, rows in parts.items():
        write_csv_atomic(rows, out_dir / f"{subset}.csv")
    with atomic_path(out_dir / IMAGES) as tmp:
        for subset, rows in parts.items():  # one shard in memory at a time
            write_shards(tmp / subset, ({"image": machex.load_images(rows.iloc[i:i + SHARD_SIZE], hr_size, progress=False)}
                                        for i in range(0, len(rows), SHARD_SIZE)))
    ours = machex.table1(table)
    paper, meta = load_reference("weber2023", "table1")
    write_table(table1_side_by_side(paper, ours, sources), table1_stem,
                "MaCheX components: patients, train/test images (all views), frontal train images in the collection "
                "and their share. Each of this run's sources sits in the row of the paper dataset its adapter reads "
                "(its own name in 'source (this run)'); the phantom is written in the MIMIC-CXR layout and stands in "
                "for MIMIC-CXR", scale, paper_table_label(meta), float_format=".6g")
    return ours


class _Resized(torch.utils.data.Dataset):
    """Items of a uint8 image dataset resized to ``size`` (antialiased bicubic, as the stages always did)."""

    def __init__(self, images, size: int):
        self.images, self.size = images, int(size)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        return downsample(np.asarray(self.images[i])[None], self.size)[0]

    def head(self, n: int | None = None) -> np.ndarray:
        n = len(self) if n is None else min(int(n), len(self))
        return np.stack([self[i] for i in range(n)]) if n else np.empty((0, self.size, self.size), np.uint8)


def load_split(machex_dir, subset: str, size: int | None = None) -> tuple[ShardedDataset | _Resized, pd.DataFrame]:
    """The ``subset`` images of a MaCheX folder as a dataset read from disk item by item (uint8 (H, W), resized
    to ``size`` when given; ``.head(n)`` stacks the first n) and its rows."""
    machex_dir = Path(machex_dir)
    if not (machex_dir / IMAGES / subset / INDEX).is_file():
        raise InputError(f"{machex_dir / IMAGES / subset} missing; expected the output of the cheff_machex rule")
    images = ShardedDataset(machex_dir / IMAGES / subset, "image")
    rows = pd.read_csv(machex_dir / f"{subset}.csv", keep_default_na=False, na_values=[""])
    if size is not None and images.item_shape()[-1] != size:
        images = _Resized(images, size)
    return images, rows


def _timed(what: str, fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    log.info("%s: %.1f s wall", what, time.perf_counter() - t0)
    return out


# ------------------------------------------------------------------------------------------------ training
def run_autoencoder(machex_dir, cfg: CheffConfig, out_dir, checkpoint_dir, seed: int = 0):
    images, _ = load_split(machex_dir, "train", cfg.autoencoder.image_size)
    return _timed("autoencoder", train_autoencoder, images, cfg.autoencoder, out_dir, checkpoint_dir, seed,
                  runtime=cfg.runtime)


def run_sdm(machex_dir, ae_dir, cfg: CheffConfig, variant: str, out_dir, checkpoint_dir, seed: int = 0):
    vae = load_autoencoder(ae_dir)
    images, rows = load_split(machex_dir, "train", vae.config.sample_size)
    sdm_cfg = cfg.sdm_for(variant)
    reports = None
    if sdm_cfg.conditioning == "report":
        keep = rows["report"].fillna("").str.strip() != ""
        if not keep.any():
            raise InputError("the report-conditioned SDM needs training images with reports; MaCheX has none")
        images = torch.utils.data.Subset(images, np.flatnonzero(keep.to_numpy()).tolist())
        reports = rows.loc[keep, "report"].tolist()
    return _timed(f"SDM {variant}", train_sdm, vae, images, sdm_cfg, out_dir, reports, checkpoint_dir, seed,
                  runtime=cfg.runtime)


def run_sr(machex_dir, cfg: CheffConfig, out_dir, checkpoint_dir, seed: int = 0, ae_dir=None, init_from=None):
    images, _ = load_split(machex_dir, "train", cfg.sr.hr_size)
    if init_from is None:
        return _timed("SR base", train_sr, images, cfg.sr, out_dir, "bicubic", None, None, checkpoint_dir, seed,
                      runtime=cfg.runtime)
    return _timed("SR fine", train_sr, images, cfg.sr, out_dir, "decoded", load_autoencoder(ae_dir), init_from,
                  checkpoint_dir, seed, runtime=cfg.runtime)


# ------------------------------------------------------------------------------------------------ evaluation
def run_reconstruction(machex_dir, ae_dir, sr_base_dir, sr_fine_dir, cfg: CheffConfig, out_dir, table_stem,
                       figure_stem, scale: str, seed: int = 0) -> pd.DataFrame:
    test, _ = load_split(machex_dir, "test", cfg.sr.hr_size)
    hr = test.head(cfg.evaluation.n_test)
    srs = {"base": SuperResolution.load(sr_base_dir), "fine": SuperResolution.load(sr_fine_dir)}
    per_image, images = ev.reconstruction_workflows(hr, load_autoencoder(ae_dir), srs, cfg.sr.lr_size, seed=seed)
    write_csv_atomic(per_image, Path(out_dir) / "per_image.csv")
    summary = ev.table2(per_image)
    write_csv_atomic(summary, Path(out_dir) / "table2.csv")
    write_table2(summary, table_stem, scale)
    ev.write_grid(images, figure_stem, "Cheff reconstructions (Weber Fig. 3 / Table 2 workflows)")
    return summary


def _fid_extractor(name: str, classifier=None):
    """The FID/KID feature extractor ``cheff.evaluation.fid_extractor`` names (``reference`` loads the reference
    classifier from ``classifier``, a folder or ``xrv:<weights>``)."""
    clf = None
    if name == "reference":
        if classifier is None:
            raise InputError("cheff.evaluation.fid_extractor='reference' needs the reference classifier folder")
        clf = load_reference_classifier(classifier)
    return make_fid_extractor(name, classifier=clf)


def run_synthesis(machex_dir, ae_dir, sdm_dir, sdm_report_dir, sr_dir, cfg: CheffConfig, out_dir, table_stem,
                  grid_stem, report_grid_stem, scale: str, classifier=None, seed: int = 0,
                  fid_n_boot: int = 200) -> pd.DataFrame:
    """Unconditional cascade samples -> FID/KID vs held-out real x_HR; report-conditioned samples per prompt."""
    e = cfg.evaluation
    vae, sr = load_autoencoder(ae_dir), SuperResolution.load(sr_dir)
    sdm = SDM.load(sdm_dir)
    lr, hr = sample_cascade(sdm, vae, sr, e.n_samples, seed=seed)
    # the same cascade with an untrained SDM: the baseline the trained one must beat
    _, untrained_hr = sample_cascade(sdm.untrained(seed), vae, sr, e.n_samples, seed=seed)
    real = load_split(machex_dir, "test", cfg.sr.hr_size)[0]  # the whole test split, FID's real set: read from disk
    ext = _fid_extractor(e.fid_extractor, classifier)
    kid_subset = min(e.kid_subset_size, len(real), len(hr))
    ours = pd.concat([ev.synthesis_metrics(real, hr, ext, kid_subset, seed, fid_n_boot=fid_n_boot),
                      ev.synthesis_metrics(real, untrained_hr, ext, kid_subset, seed, model=ev.UNTRAINED_SDM_ROW,
                                           fid_n_boot=fid_n_boot)], ignore_index=True)
    write_csv_atomic(ours, Path(out_dir) / "fid_kid.csv")
    with atomic_path(Path(out_dir) / "samples.npz") as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, lr=lr, hr=hr)
    write_fid_kid(ours, table_stem, scale)
    ev.write_grid({"real x_HR": real, "x_LR = D(z)": lr, "x_HR = SR(D(z))": hr}, grid_stem,
                  "Unconditional Cheff samples (Weber Fig. 4e)", n=6)
    rep = SDM.load(sdm_report_dir)
    n_each = 4
    prompts = list(e.prompts)
    _, rhr = sample_cascade(rep, vae, sr, n_each * len(prompts), [p for p in prompts for _ in range(n_each)], seed=seed)

    image_grid([list(rhr[i * n_each:(i + 1) * n_each]) for i in range(len(prompts))],
               [ev.grid_label(p) for p in prompts],
               [f"seed {j + 1}" for j in range(n_each)], report_grid_stem,
               title="Report-conditioned Cheff samples (Weber Fig. 8)")
    return ours


def run_synthesis_comparison(cheff_samples, sd_sets: dict, zafar_sets: dict, real_dir, cfg: CheffConfig, out_csv,
                             table_stem, scale: str, classifier=None, seed: int = 0,
                             fid_n_boot: int = 200) -> pd.DataFrame:
    """The Cheff cascade's samples (``samples.npz`` of :func:`run_synthesis`, the SR output) beside every adapted
    Stable Diffusion set (``sd_sets``: method -> folder of :func:`cxrgen.sampling.synthetic_sets.generate_set`) and the
    Zafar models' FID images (``zafar_sets``: model -> folder of :func:`cxrgen.studies.zafar.sample_zafar_sets`, part
    ``fid``), all scored against the real sample ``real_dir`` (:func:`cxrgen.cheff.evaluate.synthesis_comparison`)."""

    with np.load(cheff_samples) as z:
        sets = [{"model": "Cheff", "study": "Weber 2023 (cascade SDM -> D -> SR_fine, trained from scratch)",
                 "images": z["hr"]}]
    for name, folder in sd_sets.items():
        sets.append({"model": name, "study": "Chambon 2022 (adapted Stable Diffusion)", "images": load_set(folder)[0]})
    for name, folder in zafar_sets.items():
        imgs, man = load_zafar_set(folder)
        fid_part = [imgs[i] for i in np.flatnonzero((man["part"] == "fid").to_numpy())]
        if len(fid_part) < 2:
            raise InputError(f"{folder}: {len(fid_part)} images in its fid part; expected zafar.evaluation.n_fid >= 2")
        sets.append({"model": f"{name} (Zafar)", "study": "Zafar 2023 (adapted Stable Diffusion, structured prompts)",
                     "images": np.stack(fid_part)})
    real, _ = load_images(real_dir)
    ext = _fid_extractor(cfg.evaluation.fid_extractor, classifier)
    ours = ev.synthesis_comparison(sets, real, ext, cfg.evaluation.kid_subset_size, seed, fid_n_boot=fid_n_boot)
    write_csv_atomic(ours, out_csv)
    write_synthesis_comparison(ours, table_stem, scale, real_name=f"the real sample {Path(real_dir).name!r}")
    return ours


def run_inpainting(machex_dir, ae_dir, sdm_dir, cfg: CheffConfig, out_dir, inpaint_stem, outpaint_stem,
                   seed: int = 0) -> pd.DataFrame:
    """Fig. 5 (remove a region, refill) and Fig. 7 (several completions of one provided area) + preservation."""

    e = cfg.evaluation
    vae, sdm = load_autoencoder(ae_dir), SDM.load(sdm_dir)
    size = vae.config.sample_size
    test = load_split(machex_dir, "test", size)[0].head(max(1, e.n_inpaint))
    imgs = test[: e.n_inpaint]
    # a device-sized box over the right upper chest (the image's left side), where the phantoms draw devices
    mask = rect_mask(size, 0.2, 0.1, 0.3, 0.3)
    final, decoded = inpaint(sdm, vae, imgs, mask, generator=torch.Generator().manual_seed(seed))
    pres = preservation(imgs, final, decoded, mask).assign(task="inpainting")
    holed = np.where(mask, 0, imgs).astype(np.uint8)
    image_grid([[imgs[i], holed[i], final[i]] for i in range(len(imgs))], [str(i + 1) for i in range(len(imgs))],
               ["original", "region removed", "inpainted"], inpaint_stem, title="Inpainting (Weber Fig. 5)")
    keep = rect_mask(size, 0.0, 0.0, 0.5, 0.5)  # the provided area: the upper-left quarter
    outs, out_dec = outpaint(sdm, vae, test[0], keep, n=e.n_outpaint, seed=seed)
    pres_o = preservation(np.repeat(test[:1], len(outs), 0), outs, out_dec, ~keep).assign(task="outpainting")
    div = diversity(outs, ~keep)
    image_grid([[np.where(keep, test[0], 0).astype(np.uint8), *outs]], ["provided area"],
               ["provided", *[f"completion {j + 1}" for j in range(len(outs))]], outpaint_stem,
               title=f"Outpainting (Weber Fig. 7); diversity (pixel sd in generated area) {div:.1f}")
    df = pd.concat([pres, pres_o], ignore_index=True)
    df["outpainting_diversity"] = div
    write_csv_atomic(df, Path(out_dir) / "preservation.csv")
    return df


BETA_PER_IMAGE = "per_image.csv"  # written beside the beta check's CSV


def run_beta_check(machex_dir, ae_dir, sdm_dir, cfg: CheffConfig, out_csv, figure_stem, seed: int = 0,
                   table_stem=None, scale: str = "miniature") -> pd.DataFrame:
    """Fig. 13: decoded z_T for max beta 0.0195 vs 0.0295 and corr(z_T, z_0) (and, with ``table_stem``, the numbers
    as a CSV/Markdown/LaTeX table; the paper shows the figure only, so the table has no paper columns)."""
    vae = load_autoencoder(ae_dir)
    meta = json.loads((Path(sdm_dir) / "cheff_sdm.json").read_text())
    test = load_split(machex_dir, "test", vae.config.sample_size)[0].head(64)
    s = cfg.sdm
    df, images, per_image = ev.beta_check(vae, test[:64], beta_schedule=s.beta_schedule, beta_start=s.beta_start,
                               num_train_timesteps=s.num_train_timesteps, latent_scale=meta["latent_scale"], seed=seed)
    write_csv_atomic(df, out_csv)
    write_csv_atomic(per_image, Path(out_csv).with_name(BETA_PER_IMAGE))
    ev.write_grid(images, figure_stem, "Forward process check (Weber Fig. 13): decoded z_T", n=4)
    if table_stem is not None:
        write_beta_table(df, table_stem, scale, n_images=len(test[:64]))
    return df


# ------------------------------------------------------------------------------------------------ tables
#: the Table 1 row each adapter's data belongs to (BRAX and VinDr-CXR come in as ``folder`` sources named so)
PAPER_DATASET = {"nih": "ChestX-ray14", "chexpert": "CheXpert", "mimic": "MIMIC-CXR", "padchest": "PadChest"}


TABLE1_VALUES = ["n_patients", "n_train", "n_test", "n_in_machex", "pct_of_machex"]


def table1_side_by_side(paper: pd.DataFrame, ours: pd.DataFrame, sources: Sequence[dict]) -> pd.DataFrame:
    """Table 1 with ``(paper)`` and ``(this run)`` columns: each source of this run is matched to the paper row of
    the dataset its adapter reads (a ``folder`` source by its name); unmatched sources get rows of their own."""

    checked = [machex.check_source(s, i) for i, s in enumerate(sources)]
    paper_of = {s["name"]: PAPER_DATASET.get(s["adapter"], s["name"]) for s in checked}
    ours = ours.copy()
    ours["source"] = ours["dataset"]
    mapped = ours["dataset"].map(paper_of).fillna(ours["dataset"])
    # two sources read by the same adapter keep their own names rather than sharing one paper row
    ours["dataset"] = mapped.where(~mapped.duplicated(keep=False), ours["dataset"])
    df = side_by_side(paper, ours, ["dataset"], TABLE1_VALUES)
    df.insert(1, "source (this run)", df["dataset"].map(dict(zip(ours["dataset"], ours["source"]))).fillna(""))
    df.insert(2, "origin", df["dataset"].map({**dict(zip(ours["dataset"], ours["origin"])),
                                              **dict(zip(paper["dataset"], paper["origin"]))}).fillna(""))
    return df


def write_table2(ours: pd.DataFrame, out_stem, scale: str) -> dict:
    paper, meta = load_reference(PAPER_ID, "table2")
    ours = ours.copy()
    ours["sr_model"] = ours["sr_model"].astype(object).where(ours["sr_model"].notna(), None)
    paper = paper.copy()
    paper["sr_model"] = paper["sr_model"].astype(object).where(paper["sr_model"].notna(), None)
    df = side_by_side(paper.fillna({"sr_model": "-"}), ours.fillna({"sr_model": "-"}), ["workflow_id", "sr_model"],
                      ["mse", "psnr", "ssim"])
    df.insert(1, "workflow", df["workflow_id"].map(ev.WORKFLOWS))
    return write_table(df, out_stem, "Reconstruction workflows of the Cheff cascade on held-out test images "
                       "(MSE on [0,1], PSNR dB, SSIM; per-image means). 'bicubic' is plain bicubic upsampling, a "
                       "baseline the paper does not report", scale, paper_table_label(meta), float_format=".4f")


def _n_columns(df: pd.DataFrame, ours: pd.DataFrame) -> None:
    """Add this run's set sizes beside the FID/KID cells (rows only the paper has stay blank)."""

    extra = ours.set_index("model")
    for col, name in (("n_real", "n real"), ("n_fake", "n synthetic")):
        df[f"{name} {OURS}"] = pd.to_numeric(df["model"].map(extra[col]), errors="coerce").round().astype("Int64").array


def write_fid_kid(ours: pd.DataFrame, out_stem, scale: str) -> dict:
    paper, meta = load_reference(PAPER_ID, "fid_kid")
    df = side_by_side(paper, ours, ["model"], ["fid", "kid"], digits=4)
    _n_columns(df, ours)
    df["extractor (this run)"] = df["model"].map(dict(zip(ours["model"], ours["extractor"]))).fillna("")
    ext = ", ".join(sorted(set(ours["extractor"])))
    return write_table(df, out_stem, f"FID and KID of unconditional cascade samples against held-out real images; "
                       f"features of this run: {ext} (the paper does not state its sample size or extractor). "
                       f"{fid_kid_caption(ours)} KID: mean over {ev.KID_SUBSETS} subsets of "
                       f"{int(ours['kid_subset_size'].iloc[0])}. Numbers from different extractors and sample sizes "
                       "are not comparable", scale, paper_table_label(meta), float_format=".4f")


COMPARISON_COLUMNS = {"study": "study", "n_fake": "n synthetic", "n_real": "n real",
                      "native_resolution": "native px", "resolution": "scored px", "kid_std": "KID sd (this run)"}


def write_synthesis_comparison(ours: pd.DataFrame, out_stem, scale: str, real_name: str = "the real test sample"
                               ) -> dict:
    """The comparison table beside the paper's FID/KID (Weber sec. 5 reports Cheff and the pixel cascade only; the
    adapted Stable Diffusion models have no paper numbers, Weber shows them as images, Fig. 4)."""

    paper, meta = load_reference(PAPER_ID, "fid_kid")
    df = side_by_side(paper[["model", "fid", "kid"]], ours, ["model"], ["fid", "kid"], digits=4)
    extra = ours.set_index("model")
    for col, name in COMPARISON_COLUMNS.items():
        df[name] = df["model"].map(extra[col])
    df["study"] = df["study"].fillna("paper only")
    for col in ("n synthetic", "n real", "native px", "scored px"):
        df[col] = pd.to_numeric(df[col], errors="coerce").round().astype("Int64").array
    metrics = [c for c in df.columns if c.startswith(("fid ", "kid "))]
    df = df[["model", "study", "n synthetic", "n real", "native px", "scored px", *metrics, "KID sd (this run)"]]
    r = ours.iloc[0]
    caption = (f"FID and KID of the Cheff cascade's unconditional samples and of every adapted Stable Diffusion "
               f"model's synthetic set, all against one real set ({real_name}, n real = {int(r['n_real'])}) with "
               f"the same features ({r['extractor']}), the same resizing (antialiased bicubic to "
               f"{int(r['resolution'])} px) and the same number of synthetic images per model (n synthetic, a "
               f"seeded subset of each set); KID: mean and sd over {ev.KID_SUBSETS} subsets of "
               f"{int(r['kid_subset_size'])}. {fid_kid_caption(ours)} Lower is better. The paper's numbers (Cheff and the full pixel-space "
               "cascade, 1024 px, Weber sec. 5) use Inception features and samples of unstated size; it reports "
               "no FID for Stable Diffusion, only images (Fig. 4), so those rows have this run's numbers only. "
               "This Cheff row differs from the weber2023_fid_kid table, which scores the cascade at its own "
               "resolution against the MaCheX test images")
    return write_table(df, out_stem, caption, scale, paper_table_label(meta), float_format=".4f")


BETA_COLUMNS = {
    "beta_end": "max beta", "terminal_signal": "sqrt(alpha_bar_T)", "latent_std_raw": "latent sd (raw)",
    "corr_zT_z0_raw": "corr(z_T, z_0) raw", "expected_corr_raw": "expected corr raw",
    "latent_scale": "latent scale", "corr_zT_z0_scaled": "corr(z_T, z_0) scaled", "expected_corr_scaled": "expected corr scaled",
}


def write_beta_table(df: pd.DataFrame, out_stem, scale: str, n_images: int | None = None) -> dict:
    """The forward-process check as a table (no paper columns: the paper shows Fig. 13 only)."""

    missing = [c for c in BETA_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"beta-check frame lacks columns {missing}; expected beta_check() output")
    out = df[list(BETA_COLUMNS)].rename(columns=BETA_COLUMNS)
    out.insert(0, "schedule", df["beta_schedule"].map({"scaled_linear": "LDM linear (sqrt-linear)"}).fillna(df["beta_schedule"]))
    out.insert(1, "role", df["beta_end"].map({schedules.LDM_BETA_END: "LDM default", schedules.CHEFF_BETA_END: "Cheff"}).fillna(""))
    n = f" on {n_images} held-out latents" if n_images else ""
    return write_table(out, out_stem, "Forward-process check of the SDM schedule (Weber 7.6, Fig. 13): the signal "
                       "coefficient sqrt(alpha_bar_T) left at t = T, and the correlation of z_T with z_0" + n +
                       " measured on the autoencoder's raw latents (as the paper decoded them) and on the latents "
                       "scaled by the SDM's latent scale (what the SDM trains on), beside the correlation "
                       "expected from sqrt(alpha_bar_T) and the latent sd. Near-zero correlation = z_T is close to "
                       "the N(0, I) that sampling starts from", scale, float_format=".4g")
