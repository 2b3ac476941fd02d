"""Evaluation of the Cheff cascade (Weber et al. 2023, sec. 5 and 7.6): Table 2 reconstruction workflows, FID/KID of
cascade samples, the forward-process check of Fig. 13, and the figures and side-by-side tables.

Table 2 workflows (x_LR = bicubic downsample of the test image x_HR):

1. x_HR -> x_LR -> E -> D -> SR_{base,fine} -> x^_HR, scored against x_HR;
2. x_HR -> x_LR -> E -> D -> x^_LR, scored against x_LR;
3. x_HR -> x_LR -> SR_{base,fine} -> x^_HR, scored against x_HR (plus plain bicubic upsampling as a baseline row
   that the paper does not have).

MSE is on [0, 1] intensities (the paper's scale, inferred), PSNR/SSIM come from :mod:`cxrgen.metrics.image_quality`
(0-255 scale, the same PSNR); every metric is averaged per image (the paper's PSNR is only consistent with that).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from cxrgen.cheff import schedules
from cxrgen.cheff.autoencoder import decode, encode, reconstruct
from cxrgen.cheff.super_resolution import downsample
from cxrgen.errors import InputError
from cxrgen.metrics.image_quality import reconstruction_metrics

log = logging.getLogger(__name__)
PAPER = "weber2023"
WORKFLOWS = {
    1: "x_HR -bicubic-> x_LR -E-> z -D-> x^_LR -SR-> x^_HR",
    2: "x_HR -bicubic-> x_LR -E-> z -D-> x^_LR",
    3: "x_HR -bicubic-> x_LR -SR-> x^_HR",
}


def _upsample_bicubic(lr: np.ndarray, size: int) -> np.ndarray:
    x = torch.from_numpy(lr).float()[:, None]
    y = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    return y.clamp(0, 255).round().to(torch.uint8)[:, 0].numpy()


def reconstruction_workflows(hr: np.ndarray, vae, sr_models: dict, lr_size: int, steps: int | None = None,
                             seed: int = 0, progress: bool = True) -> tuple[pd.DataFrame, dict]:
    """Per-image metrics of every workflow and the images themselves (for Fig. 3).

    ``sr_models`` maps "base"/"fine" to :class:`~cxrgen.cheff.super_resolution.SuperResolution`.
    """
    hr = np.asarray(hr)
    if hr.dtype != np.uint8 or hr.ndim != 3 or hr.shape[0] < 1:
        raise InputError(f"x_HR of dtype {hr.dtype}, shape {hr.shape}; expected uint8 (N, H, W)")
    lr = downsample(hr, lr_size)
    lr_rec = reconstruct(vae, lr)
    images = {"x_HR": hr, "x_LR": lr, "D(E(x_LR))": lr_rec}
    rows = []

    def score(wid, sr_name, ref, out):
        m = reconstruction_metrics(ref, out)
        m.insert(0, "image", range(len(m)))
        m.insert(0, "sr_model", sr_name)
        m.insert(0, "workflow_id", wid)
        m["mse"] = (m["rmse"] / 255.0) ** 2
        rows.append(m)

    score(2, np.nan, lr, lr_rec)
    for name, sr in sr_models.items():
        for wid, src in ((1, lr_rec), (3, lr)):
            gen = torch.Generator().manual_seed(seed)  # same noise for base and fine: a paired comparison
            out = sr.upscale(src, steps=steps, generator=gen, progress=progress)
            images[f"wf{wid} SR_{name}"] = out
            score(wid, name, hr, out)
    bic = _upsample_bicubic(lr, hr.shape[-1])
    images["bicubic"] = bic
    score(3, "bicubic", hr, bic)
    return pd.concat(rows, ignore_index=True), images


def table2(per_image: pd.DataFrame) -> pd.DataFrame:
    """Mean MSE/PSNR/SSIM per (workflow, SR model) in the paper's row order."""
    g = per_image.groupby(["workflow_id", "sr_model"], dropna=False, sort=False)
    out = g[["mse", "psnr", "ssim"]].mean().reset_index()
    out["n"] = g.size().to_numpy()
    out.insert(1, "workflow", out["workflow_id"].map(WORKFLOWS))
    order = {(1, "base"): 0, (1, "fine"): 1, (2, None): 2, (3, "base"): 3, (3, "fine"): 4, (3, "bicubic"): 5}
    key = [order.get((w, s if isinstance(s, str) else None), 9) for w, s in zip(out["workflow_id"], out["sr_model"])]
    return out.iloc[np.argsort(key, kind="stable")].reset_index(drop=True)


def write_table2(ours: pd.DataFrame, out_stem, scale: str) -> dict:
    from cxrgen.render.reference import load_reference, paper_table_label
    from cxrgen.render.tables import side_by_side, write_table

    paper, meta = load_reference(PAPER, "table2")
    ours = ours.copy()
    ours["sr_model"] = ours["sr_model"].astype(object).where(ours["sr_model"].notna(), None)
    paper = paper.copy()
    paper["sr_model"] = paper["sr_model"].astype(object).where(paper["sr_model"].notna(), None)
    df = side_by_side(paper.fillna({"sr_model": "-"}), ours.fillna({"sr_model": "-"}), ["workflow_id", "sr_model"],
                      ["mse", "psnr", "ssim"])
    df.insert(1, "workflow", df["workflow_id"].map(WORKFLOWS))
    return write_table(df, out_stem, "Reconstruction workflows of the Cheff cascade on held-out test images "
                       "(MSE on [0,1], PSNR dB, SSIM; per-image means). 'bicubic' is plain bicubic upsampling, a "
                       "baseline the paper does not report", scale, paper_table_label(meta), float_format=".4f")


def synthesis_metrics(real: np.ndarray, fake: np.ndarray, extractor, kid_subset: int = 100, seed: int = 0,
                      model: str = "Cheff") -> pd.DataFrame:
    """FID and KID of ``fake`` against ``real`` with the named extractor (both uint8 (N,H,W))."""
    from cxrgen.metrics.fid import fid, kid

    f = fid(real, fake, extractor)
    k = kid(real, fake, extractor, subsets=50, subset_size=kid_subset, seed=seed)
    return pd.DataFrame([{"model": model, "fid": f["value"], "kid": k["mean"], "kid_std": k["std"],
                          "extractor": f["extractor"], "n_real": f["n_real"], "n_fake": f["n_fake"],
                          "kid_subset_size": k["subset_size"]}])


def write_fid_kid(ours: pd.DataFrame, out_stem, scale: str) -> dict:
    from cxrgen.render.reference import load_reference, paper_table_label
    from cxrgen.render.tables import side_by_side, write_table

    paper, meta = load_reference(PAPER, "fid_kid")
    df = side_by_side(paper, ours, ["model"], ["fid", "kid"])
    df["extractor (this run)"] = df["model"].map(dict(zip(ours["model"], ours["extractor"]))).fillna("")
    ext = ", ".join(sorted(set(ours["extractor"])))
    return write_table(df, out_stem, f"FID and KID of unconditional cascade samples against held-out real images; "
                       f"features of this run: {ext} (the paper does not state its sample size or extractor). "
                       "Numbers from different extractors and sample sizes are not comparable", scale,
                       paper_table_label(meta), float_format=".4f")


def beta_check(vae, images: np.ndarray, beta_ends=(schedules.LDM_BETA_END, schedules.CHEFF_BETA_END),
               beta_schedule: str = "scaled_linear", beta_start: float = schedules.LDM_BETA_START,
               num_train_timesteps: int = 1000, latent_scale: float | None = None,
               seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """7.6 / Fig. 13: z_T for each max beta, decoded; terminal signal and corr(z_T, z_0) on raw and scaled latents."""
    z0 = encode(vae, images)
    scale = float(latent_scale) if latent_scale else float(1.0 / z0.std())
    rows, decoded = [], {"x_0": np.asarray(images), "D(z_0)": decode(vae, z0)}
    for b in beta_ends:
        betas = schedules.make_betas(num_train_timesteps, beta_start, b, beta_schedule)
        sig = schedules.terminal_signal(betas)
        gen = torch.Generator().manual_seed(seed)
        zt_raw = schedules.forward_to_T(z0, betas, gen)  # as the paper decoded it: D(z_T) on the AE's own latents
        decoded[f"D(z_T), max beta {b}"] = decode(vae, zt_raw)
        rows.append({
            "beta_schedule": beta_schedule, "beta_end": b, "terminal_signal": sig,
            "terminal_signal_closed_form": float(np.sqrt(schedules.closed_form_alpha_bar_T(num_train_timesteps, beta_start, b, beta_schedule))),
            "latent_std_raw": float(z0.std()), "corr_zT_z0_raw": schedules.terminal_correlation(z0, betas, torch.Generator().manual_seed(seed)),
            "expected_corr_raw": schedules.expected_terminal_correlation(sig, float(z0.std())),
            "latent_scale": scale, "corr_zT_z0_scaled": schedules.terminal_correlation(z0 * scale, betas, torch.Generator().manual_seed(seed)),
            "expected_corr_scaled": schedules.expected_terminal_correlation(sig, float((z0 * scale).std())),
        })
    return pd.DataFrame(rows), decoded


BETA_COLUMNS = {
    "beta_end": "max beta", "terminal_signal": "sqrt(alpha_bar_T)", "latent_std_raw": "latent sd (raw)",
    "corr_zT_z0_raw": "corr(z_T, z_0) raw", "expected_corr_raw": "expected corr raw",
    "latent_scale": "latent scale", "corr_zT_z0_scaled": "corr(z_T, z_0) scaled", "expected_corr_scaled": "expected corr scaled",
}


def write_beta_table(df: pd.DataFrame, out_stem, scale: str, n_images: int | None = None) -> dict:
    """The forward-process check as a table (no paper columns: the paper shows Fig. 13 only)."""
    from cxrgen.render.tables import write_table

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


def write_grid(images: dict, out_stem, title: str, n: int = 6, transpose: bool = False) -> dict:
    """Columns = the named image sets, rows = the first ``n`` images of each (sets may differ in size)."""
    from cxrgen.render.figures import image_grid

    names = list(images)
    n = min(n, min(len(v) for v in images.values()))
    grid = [[images[k][i] for k in names] for i in range(n)]
    return image_grid(grid, [str(i + 1) for i in range(n)], names, out_stem, title=title)
