"""Evaluation of the Cheff cascade (Weber et al. 2023, sec. 5 and 7.6): Table 2 reconstruction workflows, FID/KID of
cascade samples, the forward-process check of Fig. 13, and image grids (the tables beside the paper's are written by
:mod:`cxrgen.studies.cheff`).

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
import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from cxrgen.cheff import schedules
from cxrgen.cheff.autoencoder import decode, encode, reconstruct
from cxrgen.cheff.super_resolution import downsample
from cxrgen.data.preprocess import resize_images
from cxrgen.errors import InputError
from cxrgen.metrics.features import get_extractor, streamed_features
from cxrgen.metrics.fid import fid_kid_with_ci
from cxrgen.metrics.image_quality import reconstruction_metrics
from cxrgen.plotting import image_grid

log = logging.getLogger(__name__)
WORKFLOWS = {
    1: "x_HR -bicubic-> x_LR -E-> z -D-> x^_LR -SR-> x^_HR",
    2: "x_HR -bicubic-> x_LR -E-> z -D-> x^_LR",
    3: "x_HR -bicubic-> x_LR -SR-> x^_HR",
}
KID_SUBSETS = 50  # random subsets the KID is averaged over (its sd is over these)


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


#: the fid_kid table's baseline row: the cascade with the SDM's architecture untrained (not in the paper)
UNTRAINED_SDM_ROW = "Cheff, untrained SDM (baseline)"


def synthesis_metrics(real, fake, extractor, kid_subset: int = 100, seed: int = 0,
                      model: str = "Cheff", fid_n_boot: int = 200) -> pd.DataFrame:
    """FID and KID of ``fake`` against ``real`` (uint8 (N,H,W): arrays or datasets, :func:`streamed_features`) with
    the named extractor (a registry name or a FeatureExtractor), their bootstrap CIs and set sizes
    (:func:`cxrgen.metrics.fid.fid_kid_with_ci`)."""

    ext = get_extractor(extractor) if isinstance(extractor, str) else extractor
    r = fid_kid_with_ci(streamed_features(ext, real), streamed_features(ext, fake), n_boot=fid_n_boot, seed=seed,
                        kid_subsets=KID_SUBSETS, kid_subset_size=kid_subset)
    return pd.DataFrame([{"model": model, **r, "extractor": ext.name}])


def synthesis_comparison(sets: Sequence[Mapping], real: np.ndarray, extractor, kid_subset_size: int = 50,
                         seed: int = 0, resolution: int | None = None, fid_n_boot: int = 200) -> pd.DataFrame:
    """FID and KID of several synthetic sets against ONE real set, on equal terms.

    ``sets``: ``{"model", "study", "images"}`` dicts (images uint8 (N,H,W)). Every set and ``real`` is resized to
    one ``resolution`` (default: the smallest native one among them; antialiased bicubic,
    :func:`cxrgen.data.preprocess.resize_images`), every synthetic set is cut to the size of the
    smallest (a ``seed``-seeded subset; FID's small-sample bias then weighs the same on every row), features come
    from one ``extractor`` with the real features computed once, and KID uses one subset size (the smallest of
    ``kid_subset_size``, the real and the synthetic count) and the same seed for every row. One row per set, with
    bootstrap CIs and set sizes (``n_real``, ``n_fake``; :func:`cxrgen.metrics.fid.fid_kid_with_ci`).
    """

    if not sets:
        raise InputError("synthesis_comparison: no synthetic sets; expected at least one")
    arrays = [np.asarray(s["images"]) for s in sets]
    real = np.asarray(real)
    for name, a in [*((f"synthetic set {s.get('model')!r}", a) for s, a in zip(sets, arrays)), ("real set", real)]:
        if a.dtype != np.uint8 or a.ndim != 3 or len(a) < 2:
            raise InputError(f"{name}: dtype {a.dtype}, shape {a.shape}; expected uint8 (N, H, W) with N >= 2")
    res = int(resolution) if resolution else int(min(a.shape[-1] for a in [real, *arrays]))
    n = int(min(len(a) for a in arrays))
    k = int(min(kid_subset_size, n, len(real)))
    f_real = extractor(resize_images(real, res)).double().numpy()
    rows = []
    for s, a in zip(sets, arrays):
        idx = np.sort(np.random.default_rng(seed).permutation(len(a))[:n])
        f_fake = extractor(resize_images(a[idx], res)).double().numpy()
        r = fid_kid_with_ci(f_real, f_fake, n_boot=fid_n_boot, seed=seed, kid_subsets=KID_SUBSETS, kid_subset_size=k)
        rows.append({"model": s["model"], "study": s["study"], "n_available": len(a),
                     "native_resolution": int(a.shape[-1]), "resolution": res, **r, "extractor": extractor.name})
    return pd.DataFrame(rows)


def beta_check(vae, images: np.ndarray, beta_ends=(schedules.LDM_BETA_END, schedules.CHEFF_BETA_END),
               beta_schedule: str = "scaled_linear", beta_start: float = schedules.LDM_BETA_START,
               num_train_timesteps: int = 1000, latent_scale: float | None = None,
               seed: int = 0) -> tuple[pd.DataFrame, dict, pd.DataFrame]:
    """7.6 / Fig. 13: z_T for each max beta, decoded; terminal signal and corr(z_T, z_0) on raw and scaled latents.

    Returns the summary rows, the decoded images and per image (``image``, ``beta_end``, ``corr_zT_z0_raw``) the
    correlation on its raw latent with the same noise draw (for paired comparisons of the schedules)."""
    z0 = encode(vae, images)
    scale = float(latent_scale) if latent_scale else float(1.0 / z0.std())
    rows, decoded, per_image = [], {"x_0": np.asarray(images), "D(z_0)": decode(vae, z0)}, []
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
        corr = schedules.terminal_correlation_per_sample(z0, betas, torch.Generator().manual_seed(seed))
        per_image.append(pd.DataFrame({"image": np.arange(len(corr)), "beta_end": b, "corr_zT_z0_raw": corr}))
    return pd.DataFrame(rows), decoded, pd.concat(per_image, ignore_index=True)


#: characters per line of a grid label: a 1.6-inch cell holds about 24 characters at 8 pt, less a margin
LABEL_WIDTH = 16
LABEL_LINES = 3


def grid_label(text: str, width: int = LABEL_WIDTH, lines: int = LABEL_LINES) -> str:
    """``text`` wrapped at word boundaries into at most ``lines`` lines of ``width`` characters (cut at a word with
    '...' if longer), so a row or column label of :func:`cxrgen.plotting.image_grid` stays within its cell."""

    text = " ".join(str(text).split())
    short = textwrap.shorten(text, width * lines, placeholder=" ...") if len(text) > width * lines else text
    wrapped = textwrap.wrap(short, width, break_long_words=False) or [""]
    if len(wrapped) > lines:  # long words wrapped onto more lines than the characters suggest
        wrapped = wrapped[:lines - 1] + [textwrap.shorten(" ".join(wrapped[lines - 1:]), width, placeholder=" ...")]
    return "\n".join(wrapped)


def write_grid(images: dict, out_stem, title: str, n: int = 6, transpose: bool = False) -> dict:
    """Columns = the named image sets, rows = the first ``n`` images of each (sets may differ in size); the set
    names are wrapped to fit their column (:func:`grid_label`)."""
    names = list(images)
    n = min(n, min(len(v) for v in images.values()))
    grid = [[images[k][i] for k in names] for i in range(n)]
    return image_grid(grid, [str(i + 1) for i in range(n)], [grid_label(k) for k in names], out_stem, title=title)
