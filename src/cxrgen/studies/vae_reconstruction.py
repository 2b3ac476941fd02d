"""VAE reconstruction study (Chambon et al. 2022, sections 2.3 and 3.2; Tables 1 and 6; Figure 3).

Originals are resized (bicubic, antialiased) to each configured resolution, encoded by the pipeline's
``AutoencoderKL``, a latent is drawn from the posterior (``latent_dist.sample``, as the paper did) or its mode
taken, and decoded "without additional processing" (no scaling factor: encode -> decode is a round trip).
Grayscale is repeated to the VAE's input channels; the decoded channels are averaged back to one.

For every resolution :func:`run_vae_study` measures

* per image: RMSE / PSNR / SSIM on the 0-255 scale for the sampled reconstruction (``rmse``, ``psnr``, ``ssim``)
  and for the posterior mode (``rmse_mode`` ...), and the cosine similarity of the reference classifier's
  penultimate features of original vs reconstruction (``latent_cosine_similarity``);
* a summary in the paper's 3.2 format (mean ± sd; median; range) per metric;
* FID of originals vs reconstructions over the whole set and over paired batches of ``fid_batch_size``
  (mean ± sd over batches, the paper's protocol), with the feature extractor's name on every row;
* Table 1: per label prevalence and AUC / accuracy / F1 on originals vs reconstructions at the classifier's
  stored thresholds, with stratified percentile-bootstrap 95% CIs (same resamples for orig and recon).

Labels: the manifest's binarised label columns (the workflow's label policy decides -1 and blanks; blank
targets are left out per label). A Table 1 label that the classifier does not output, that the manifest lacks
or that has a single class in the sample gets NaN metrics and a ``note``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
import torch

from cxrgen.classify.reference import load_reference_classifier
from cxrgen.data.preprocess import check_uint8_batch, resize_images
from cxrgen.data.sampling import load_images
from cxrgen.data.schema import CHAMBON_TABLE1_LABELS
from cxrgen.engine import default_device
from cxrgen.errors import InputError
from cxrgen.io import atomic_path, write_csv_atomic
from cxrgen.metrics.classification import MIN_CLASS_COUNT, per_label_table
from cxrgen.metrics.features import make_fid_extractor
from cxrgen.metrics.fid import batched_fid_from_features, fid_kid_with_ci
from cxrgen.metrics.image_quality import reconstruction_metrics
from cxrgen.metrics.summary import cosine_similarity_pairs, describe, format_mean_sd
from cxrgen.models.registry import load_pipeline
from cxrgen.plotting import save_figure, set_style
from cxrgen.progress import progress_bar
from cxrgen.render.reference import load_reference, paper_table_label
from cxrgen.render.tables import OURS, fid_kid_caption, side_by_side, write_table

log = logging.getLogger(__name__)

#: Table 1 metrics (orig vs recon), in the paper's column order.
TABLE1_METRICS = ("auc", "accuracy", "f1")
#: Our label name -> the name printed in the paper's Table 1 (reference/chambon2022/table1.csv).
PAPER_FINDING_NAMES = {"Enlarged Cardiomediastinum": "Enlarged Mediastinum"}
#: Summary metric names as in reference/chambon2022/vae_summary.csv, with their format_mean_sd digits.
SUMMARY_METRICS = {"rmse": ("RMSE", 1), "psnr": ("PSNR", 1), "ssim": ("SSIM", 2)}
COSINE = "latent_cosine_similarity"
RESULT_FILES = {"per_image": "per_image.csv", "summary": "summary.csv", "fid": "fid.csv", "table1": "table1.csv"}
EXAMPLES_FILE = "examples.npz"


# ------------------------------------------------------------------------------------------------ images
def _vae_device_dtype(vae) -> tuple[torch.device, torch.dtype]:
    device = getattr(vae, "device", None)
    dtype = getattr(vae, "dtype", None)
    if device is None or dtype is None:
        p = next(iter(vae.parameters()), None) if hasattr(vae, "parameters") else None
        device = device or (p.device if p is not None else torch.device("cpu"))
        dtype = dtype or (p.dtype if p is not None else torch.float32)
    return torch.device(device), dtype


def _vae_in_channels(vae) -> int:
    cfg = getattr(vae, "config", None)
    ch = getattr(cfg, "in_channels", None) if cfg is not None else None
    if ch is None and isinstance(cfg, dict):
        ch = cfg.get("in_channels")
    return int(ch) if ch else 3


def reconstruct(
    vae,
    images,
    resolution: int,
    sample_posterior: bool = True,
    generator: torch.Generator | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> np.ndarray:
    """Encode and decode uint8 grayscale images (N,H,W) with a diffusers ``AutoencoderKL``; returns uint8 (N,res,res).

    Images are resized to ``resolution`` (bicubic), mapped to [-1, 1], repeated to the VAE's input channels,
    encoded; the latent is ``latent_dist.sample(generator)`` (``sample_posterior=True``, Chambon 2.3) or
    ``latent_dist.mode()``; the decoded image is averaged over channels, clamped to [-1, 1] and rounded to 0-255.
    """
    arr = resize_images(images, resolution)
    if batch_size < 1:
        raise InputError(f"batch_size={batch_size}; expected a positive integer")
    device, dtype = _vae_device_dtype(vae)
    channels = _vae_in_channels(vae)
    if hasattr(vae, "eval"):
        vae.eval()
    out = []
    with torch.no_grad():
        bar = progress_bar(range(0, arr.shape[0], batch_size), desc=f"VAE {resolution}px", disable=not progress, leave=False)
        for i in bar:
            x = torch.from_numpy(arr[i : i + batch_size]).float()[:, None] / 127.5 - 1.0
            x = x.expand(-1, channels, -1, -1).to(device=device, dtype=dtype)
            dist = vae.encode(x).latent_dist
            z = dist.sample(generator=generator) if sample_posterior else dist.mode()
            y = vae.decode(z).sample.float().mean(dim=1)
            if tuple(y.shape[-2:]) != (arr.shape[1], arr.shape[2]):
                raise InputError(
                    f"the VAE decoded {tuple(x.shape[-2:])} inputs to {tuple(y.shape[-2:])}; expected the same size "
                    f"(resolution {resolution} must be divisible by the VAE's downsampling factor)"
                )
            out.append(((y.clamp(-1, 1) + 1.0) * 127.5).round().to(torch.uint8).cpu().numpy())
    return np.concatenate(out)


# ------------------------------------------------------------------------------------------------ features / FID
FID_COLUMNS = ["resolution", "scope", "extractor", "dim", "n", "n_real", "n_fake", "batch_size", "n_batches", "fid",
               "fid_ci_low", "fid_ci_high", "kid", "kid_ci_low", "kid_ci_high", "n_boot", "fid_biased", "sd", "median",
               "min", "max", "note"]


def _fid_rows(resolution: int, ext, f_orig, f_recon, batch_size: int, fid_n_boot: int = 200, seed: int = 0) -> list[dict]:
    """FID of all originals vs all reconstructions (with KID and bootstrap CIs) and Chambon's mean over paired
    batches (its spread over batches is the sd / min / max; n_real / n_fake are per batch)."""
    n = int(f_orig.shape[0])
    empty = {c: np.nan for c in FID_COLUMNS}
    base = {**empty, "resolution": resolution, "extractor": ext.name, "dim": int(f_orig.shape[1]), "n": n}
    rows = []
    if n >= 2:
        r = fid_kid_with_ci(f_orig, f_recon, n_boot=fid_n_boot, seed=seed)
        rows.append({**base, **{k: v for k, v in r.items() if k in FID_COLUMNS}, "scope": "all", "batch_size": n,
                     "n_batches": 1, "median": r["fid"], "min": r["fid"], "max": r["fid"], "note": ""})
    else:
        rows.append({**base, "scope": "all", "batch_size": n, "n_batches": 0, "note": "FID needs at least 2 images"})
    if n >= batch_size >= 2:
        b = batched_fid_from_features(f_orig, f_recon, batch_size=batch_size, drop_last=True)
        vals = np.asarray(b["values"])
        rows.append({**base, "scope": "batches", "batch_size": batch_size, "n_batches": b["n_batches"], "n": b["n"],
                     "n_real": batch_size, "n_fake": batch_size, "fid": b["mean"], "sd": b["sd"],
                     "median": b["median"], "min": float(vals.min()), "max": float(vals.max()),
                     "fid_biased": batch_size < int(f_orig.shape[1]), "note": "mean over paired batches (Chambon 2.3)"})
    else:
        rows.append({**base, "scope": "batches", "batch_size": batch_size, "n_batches": 0,
                     "note": f"{n} images give no full batch of {batch_size}"})
    return rows


# ------------------------------------------------------------------------------------------------ Table 1
def table1(
    classifier,
    manifest: pd.DataFrame,
    probs_orig: np.ndarray,
    probs_recon: np.ndarray,
    labels: Sequence[str] = CHAMBON_TABLE1_LABELS,
    n_boot: int = 200,
    seed: int = 0,
    min_class_count: int = MIN_CLASS_COUNT,
) -> pd.DataFrame:
    """Chambon Table 1 layout: one row per label with ``finding`` (paper's name), ``label``, ``n``, ``n_positive``,
    ``prevalence``, ``threshold`` and ``<metric>_{orig,recon}`` plus ``_ci_low``/``_ci_high`` for auc, accuracy, f1,
    ``ci_note`` (why the CIs are empty: fewer than ``min_class_count`` positives or negatives) and ``note``.

    ``probs_*`` are the classifier's (N, L) probabilities in ``classifier.labels`` order.
    """
    rows = []
    for label in labels:
        row = {"finding": PAPER_FINDING_NAMES.get(label, label), "label": label, "n": 0, "n_positive": 0,
               "prevalence": np.nan, "threshold": np.nan, "ci_note": ""}
        for m in TABLE1_METRICS:
            for kind in ("orig", "recon"):
                row.update({f"{m}_{kind}": np.nan, f"{m}_{kind}_ci_low": np.nan, f"{m}_{kind}_ci_high": np.nan})
        notes = []
        try:
            j = classifier.label_index(label)
        except (InputError, ValueError, KeyError):
            j = None
            notes.append(f"not an output of the classifier ({getattr(classifier, 'source', 'classifier')})")
        if label not in manifest.columns:
            notes.append("no such label column in the sample manifest")
        if notes:
            rows.append({**row, "note": "; ".join(notes)})
            continue
        y = manifest[label].astype("float64").to_numpy()
        known = ~np.isnan(y)
        row["n"] = int(known.sum())
        row["prevalence"] = float(y[known].mean()) if known.any() else np.nan
        row["threshold"] = float(classifier.thresholds[classifier.labels[j]])
        n_pos = int(np.nansum(y))
        row["n_positive"] = n_pos
        if not 0 < n_pos < row["n"]:
            rows.append({**row, "note": f"single class in the sample ({n_pos} of {row['n']} positive): metrics undefined"})
            continue
        for kind, probs in (("orig", probs_orig), ("recon", probs_recon)):
            t = per_label_table(y[:, None], np.asarray(probs)[:, [j]], [label], [row["threshold"]], n_boot=n_boot,
                                seed=seed, min_class_count=min_class_count)
            rec = t.iloc[0]
            row["ci_note"] = rec["ci_note"]
            for m in TABLE1_METRICS:
                row[f"{m}_{kind}"] = float(rec[m])
                row[f"{m}_{kind}_ci_low"] = float(rec[f"{m}_ci_low"])
                row[f"{m}_{kind}_ci_high"] = float(rec[f"{m}_ci_high"])
        rows.append({**row, "note": ""})
    cols = ["finding", "label", "n", "n_positive", "prevalence", "threshold"]
    for m in TABLE1_METRICS:
        for kind in ("orig", "recon"):
            cols += [f"{m}_{kind}", f"{m}_{kind}_ci_low", f"{m}_{kind}_ci_high"]
    return pd.DataFrame(rows, columns=cols + ["ci_note", "note"])


def per_image_scores(classifier, manifest: pd.DataFrame, probs_orig, probs_recon,
                     labels: Sequence[str] = CHAMBON_TABLE1_LABELS) -> dict[str, np.ndarray]:
    """Per-image columns behind Table 1 (for paired tests of original vs reconstruction, e.g. the findings
    table): ``target:<label>``, ``p_orig:<label>``, ``p_recon:<label>`` for each label the classifier outputs and
    the manifest has."""
    cols = {}
    for label in labels:
        try:
            j = classifier.label_index(label)
        except (InputError, ValueError, KeyError):
            continue
        if label in manifest.columns:
            cols[f"target:{label}"] = manifest[label].astype("float64").to_numpy()
            cols[f"p_orig:{label}"] = np.asarray(probs_orig)[:, j]
            cols[f"p_recon:{label}"] = np.asarray(probs_recon)[:, j]
    return cols


# ------------------------------------------------------------------------------------------------ summary
def summarise(per_image: pd.DataFrame) -> pd.DataFrame:
    """The paper's 3.2 format per resolution and metric: mean, sd, median, min, max, n, n_nonfinite and ``text``
    ('31.8 ± 6.5; median, 30.2; range, 21.4 - 70.1'). ``latent`` says whether the row is the sampled
    reconstruction (``sample``, the paper's) or the posterior mode (``mode``)."""
    rows = []
    for res, grp in per_image.groupby("resolution", sort=True):
        specs = [(col, name, digits, "sample") for col, (name, digits) in SUMMARY_METRICS.items()]
        specs.append((COSINE, COSINE, 2, "sample"))
        specs += [(f"{col}_mode", name, digits, "mode") for col, (name, digits) in SUMMARY_METRICS.items()]
        for col, name, digits, latent in specs:
            if col not in grp.columns:
                continue
            st = describe(grp[col].to_numpy())
            rows.append({"resolution": int(res), "metric": name, "latent": latent, **st, "text": format_mean_sd(st, digits)})
    cols = ["resolution", "metric", "latent", "mean", "sd", "median", "min", "max", "n", "n_nonfinite", "text"]
    return pd.DataFrame(rows, columns=cols)


# ------------------------------------------------------------------------------------------------ the study
def run_vae_study(
    images,
    manifest: pd.DataFrame,
    vae,
    classifier,
    resolutions: Sequence[int] = (64,),
    fid_extractor_name="reference",
    fid_batch_size: int = 32,
    n_boot: int = 200,
    seed: int = 0,
    sample_posterior: bool = True,
    batch_size: int = 16,
    labels: Sequence[str] = CHAMBON_TABLE1_LABELS,
    n_examples: int = 4,
    progress: bool = True,
    fid_n_boot: int = 200,
    min_class_count: int = MIN_CLASS_COUNT,
) -> dict:
    """Run the study on uint8 grayscale ``images`` (N,H,W) with their ``manifest`` (``image_id`` + label columns).

    Returns a dict of DataFrames ``per_image``, ``summary``, ``fid``, ``table1`` (each with a ``resolution``
    column) and ``examples``: a dict of arrays for Figure 3 (``image_id`` (k,), and per resolution
    ``original_<res>`` / ``reconstruction_<res>`` uint8 (k,res,res)) for the first ``n_examples`` images.
    The posterior is sampled with a CPU ``torch.Generator`` seeded with ``seed`` (per resolution), so results
    do not depend on the device.
    """
    arr = check_uint8_batch(images)
    if len(manifest) != arr.shape[0]:
        raise InputError(f"{arr.shape[0]} images but {len(manifest)} manifest rows; expected one row per image")
    resolutions = [int(r) for r in resolutions]
    if not resolutions:
        raise InputError("resolutions is empty; expected at least one resolution, e.g. [64]")
    ids = manifest["image_id"].astype(str).tolist() if "image_id" in manifest.columns else [str(i) for i in range(len(arr))]
    ext = make_fid_extractor(fid_extractor_name, classifier)
    k = min(int(n_examples), arr.shape[0])
    examples: dict = {"image_id": np.asarray(ids[:k])}
    per_image, fid_rows, tables = [], [], []
    for res in resolutions:
        log.info("resolution %d: reconstructing %d images (%s latent)", res, arr.shape[0], "sampled" if sample_posterior else "mode")
        orig = resize_images(arr, res)
        gen = torch.Generator(device="cpu").manual_seed(int(seed) + res)
        recon = reconstruct(vae, orig, res, sample_posterior, gen, batch_size, progress)
        recon_mode = recon if not sample_posterior else reconstruct(vae, orig, res, False, None, batch_size, progress)
        q = reconstruction_metrics(orig, recon, ids=ids)
        qm = reconstruction_metrics(orig, recon_mode)
        q.insert(1, "resolution", res)
        for col in ("rmse", "psnr", "ssim"):
            q[f"{col}_mode"] = qm[col].to_numpy()
        q["latent"] = "sample" if sample_posterior else "mode"
        f_o, f_r = classifier.features(orig), classifier.features(recon)
        q[COSINE] = cosine_similarity_pairs(f_o, f_r)
        per_image.append(q)

        fid_rows += _fid_rows(res, ext, ext(orig), ext(recon), int(fid_batch_size), fid_n_boot, seed)

        p_o, p_r = classifier.predict_proba(orig), classifier.predict_proba(recon)
        for col, values in per_image_scores(classifier, manifest, p_o, p_r, labels).items():
            q[col] = values
        t = table1(classifier, manifest, p_o, p_r, labels, n_boot=n_boot, seed=seed, min_class_count=min_class_count)
        t.insert(0, "resolution", res)
        tables.append(t)
        examples[f"original_{res}"] = orig[:k]
        examples[f"reconstruction_{res}"] = recon[:k]
    per_image_df = pd.concat(per_image, ignore_index=True)
    return {
        "per_image": per_image_df,
        "summary": summarise(per_image_df),
        "fid": pd.DataFrame(fid_rows, columns=FID_COLUMNS),
        "table1": pd.concat(tables, ignore_index=True),
        "examples": examples,
    }


def save_vae_study(result: dict, out_dir) -> dict[str, Path]:
    """Write per_image.csv, summary.csv, fid.csv, table1.csv and examples.npz into ``out_dir`` (atomically each)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for key, fname in RESULT_FILES.items():
        paths[key] = out_dir / fname
        write_csv_atomic(result[key], paths[key], index=False)
    paths["examples"] = out_dir / EXAMPLES_FILE
    with atomic_path(paths["examples"]) as tmp:
        with open(tmp, "wb") as fh:
            np.savez_compressed(fh, **result["examples"])
    return paths


def load_vae(foundation, device: str | None = None):
    """The ``AutoencoderKL`` of a foundation pipeline (folder, registry name or hub id), on ``device``
    (default :func:`cxrgen.engine.default_device`)."""
    pipe = load_pipeline(foundation)
    return pipe.vae.to(default_device(device)).eval()


def run_vae_study_from_paths(sample_dir, foundation, classifier_spec, study: dict, seed: int, out_dir,
                             progress: bool = True, evaluation: dict | None = None) -> dict:
    """Workflow entry point: load the sample folder, the foundation's VAE and the reference classifier, run
    :func:`run_vae_study` with the ``vae_study`` config block (and the ``evaluation`` block's ``fid_n_boot`` /
    ``min_class_count``) and save the results into ``out_dir``."""
    images, manifest = load_images(sample_dir)
    vae = load_vae(foundation)
    classifier = load_reference_classifier(classifier_spec)
    log.info("VAE study: %d images from %s, foundation %s, classifier %s", len(manifest), sample_dir, foundation, classifier)
    result = run_vae_study(
        images,
        manifest,
        vae,
        classifier,
        resolutions=study.get("resolutions", [64]),
        fid_extractor_name=study.get("fid_extractor", "reference"),
        fid_batch_size=int(study.get("fid_batch_size", 32)),
        n_boot=int(study.get("n_boot", 200)),
        seed=int(seed),
        sample_posterior=bool(study.get("sample_posterior", True)),
        batch_size=int(study.get("batch_size", 16)),
        progress=progress,
        fid_n_boot=int((evaluation or {}).get("fid_n_boot", 200)),
        min_class_count=int((evaluation or {}).get("min_class_count", MIN_CLASS_COUNT)),
    )
    save_vae_study(result, out_dir)
    for _, row in result["summary"].iterrows():
        log.info("%dpx %s (%s): %s", row["resolution"], row["metric"], row["latent"], row["text"])
    for _, row in result["fid"].iterrows():
        log.info("%dpx FID %s [%s]: %s [%s, %s]", row["resolution"], row["scope"], row["extractor"], row["fid"],
                 row["fid_ci_low"], row["fid_ci_high"])
    return result


# ------------------------------------------------------------------------------------------------ rendering
def _largest(df: pd.DataFrame) -> tuple[int, pd.DataFrame]:
    res = int(df["resolution"].max())
    return res, df[df["resolution"] == res].reset_index(drop=True)


def render_vae_study(study_dir, table1_stem, summary_stem, figure_stem, scale: str, paper_table: str = "table1") -> dict:
    """Side-by-side tables vs the paper (Table 1 and the 3.2 summary) and Figure 3, from :func:`save_vae_study`'s
    folder. Uses the largest studied resolution (the paper's is 512 px). ``paper_table`` is ``table1`` (MIMIC-CXR)
    or ``table6`` (CheXpert); the summary compares with the matching dataset's rows."""
    study_dir = Path(study_dir)
    frames = {k: pd.read_csv(study_dir / f, keep_default_na=False, na_values=[""]) for k, f in RESULT_FILES.items()}
    paths = {}

    # Table 1 / 6
    res, ours = _largest(frames["table1"])
    paper, meta = load_reference("chambon2022", paper_table)
    value_cols = ["prevalence"] + [f"{m}_{k}" for m in TABLE1_METRICS for k in ("orig", "recon")]
    t = side_by_side(paper, ours, keys=["finding"], value_cols=value_cols)
    per_finding = ours.set_index("finding")
    t[f"n positive {OURS}"] = per_finding["n_positive"].reindex(t["finding"]).astype("Int64").array
    notes = per_finding["note"].reindex(t["finding"]).fillna("")
    ci_notes = per_finding["ci_note"].reindex(t["finding"]).fillna("")
    t[f"note {OURS}"] = ["; ".join(x for x in pair if x) for pair in zip(notes, ci_notes)]
    dataset = "MIMIC-CXR" if paper_table == "table1" else "CheXpert"
    paths["table1"] = write_table(
        t, table1_stem,
        caption=(f"Reference classifier on original vs VAE-reconstructed images ({res}x{res} px, sampled latent), "
                 f"prevalence, AUC, accuracy and F1 at the classifier's stored thresholds; this run's cells show "
                 f"the value and a stratified bootstrap 95% CI, left out (note) where the positives or negatives are fewer "
                 f"than evaluation.min_class_count. Paper: DenseNet-121 on {dataset}."),
        scale=scale, paper_table=paper_table_label(meta), float_format=".3f",
    )

    # 3.2 summary (+ FID rows, which the paper gives no numbers for)
    res_s, summ = _largest(frames["summary"])
    summ = summ[summ["latent"] == "sample"][["metric", "mean", "sd", "median", "min", "max", "n"]]
    summ = summ.assign(n=[f"{int(n)} images" for n in summ["n"]])
    fid_res = frames["fid"][frames["fid"]["resolution"] == res_s]
    fid_rows = []
    for _, r in fid_res.iterrows():
        scope = "all images" if r["scope"] == "all" else f"batches of {int(r['batch_size'])}"
        if r["scope"] == "all":
            n = "" if pd.isna(r["n_real"]) else f"{int(r['n_real'])} real / {int(r['n_fake'])} reconstructed"
        else:
            n = f"{int(r['n_batches'])} batches of {int(r['batch_size'])} / {int(r['batch_size'])}" if r["n_batches"] else ""
        fid_rows.append({"metric": f"FID ({scope}, extractor {r['extractor']})", "mean": r["fid"], "sd": r["sd"],
                         "median": r["median"], "min": r["min"], "max": r["max"], "n": n,
                         "mean_ci_low": r["fid_ci_low"], "mean_ci_high": r["fid_ci_high"]})
        if r["scope"] == "all":
            fid_rows.append({"metric": f"KID ({scope}, extractor {r['extractor']})", "mean": r["kid"], "n": n,
                             "mean_ci_low": r["kid_ci_low"], "mean_ci_high": r["kid_ci_high"]})
    ours_s = pd.concat([summ, pd.DataFrame(fid_rows, columns=[*summ.columns, "mean_ci_low", "mean_ci_high"])],
                       ignore_index=True)
    ref_s, meta_s = load_reference("chambon2022", "vae_summary")
    ref_s = ref_s[ref_s["dataset"] == dataset].drop(columns=["dataset"])
    s = side_by_side(ref_s, ours_s, keys=["metric"], value_cols=["mean", "sd", "median", "min", "max"])
    s[f"n {OURS}"] = ours_s.set_index("metric")["n"].reindex(s["metric"]).fillna("").to_numpy()
    paths["summary"] = write_table(
        s, summary_stem,
        caption=(f"VAE reconstruction quality per image-reconstruction pair at {res_s}x{res_s} px (sampled latent): "
                 f"RMSE and PSNR on the 0-255 scale, SSIM, cosine similarity of the reference classifier's "
                 f"penultimate features, and FID of originals vs reconstructions (extractor named per row; the "
                 f"paper used Inception V3 on batches of 32 and reports no VAE FID number). All-images rows: "
                 f"{fid_kid_caption(fid_res[fid_res['scope'] == 'all'])} The batched FID's "
                 f"spread over batches is its sd / min / max. Paper rows: {dataset}."),
        scale=scale, paper_table=paper_table_label(meta_s), float_format=".3g",
    )

    # Figure 3
    paths["figure"] = figure3(frames["per_image"], study_dir / EXAMPLES_FILE, figure_stem, scale)
    return paths


def figure3(per_image: pd.DataFrame, examples_npz, out_stem, scale: str = "miniature") -> dict:
    """Chambon Fig. 3: SSIM and PSNR distributions (left) and an original / reconstruction / difference panel (right)."""
    res, df = _largest(per_image)
    with np.load(examples_npz) as z:
        ids = [str(i) for i in z["image_id"]]
        orig = z[f"original_{res}"]
        recon = z[f"reconstruction_{res}"]
    if len(ids) == 0:
        raise InputError(f"{examples_npz} holds no example images; expected at least one")
    set_style()
    fig, axes = plt.subplots(1, 5, figsize=(13.0, 2.9), gridspec_kw={"width_ratios": [1, 1, 1.2, 1.2, 1.2]})
    for ax, col, label in ((axes[0], "ssim", "SSIM"), (axes[1], "psnr", "PSNR (dB)")):
        vals = df[col].replace([np.inf, -np.inf], np.nan).dropna()
        if len(vals):
            sns.violinplot(y=vals.to_numpy(), ax=ax, cut=0, inner="quartile")
        else:
            ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(label)
        ax.set_ylabel(label)
    o, r = orig[0], recon[0]
    diff = r.astype(np.int16) - o.astype(np.int16)
    lim = max(1, int(np.abs(diff).max()))
    for ax, img, title in ((axes[2], o, "original"), (axes[3], r, "reconstruction")):
        ax.imshow(img, cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(title)
    im = axes[4].imshow(diff, cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
    axes[4].set_title("reconstruction - original")
    fig.colorbar(im, ax=axes[4], fraction=0.046, pad=0.04)
    for ax in axes[2:]:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    fig.suptitle(f"VAE reconstruction, {res}x{res} px, image {ids[0]} ({scale})", fontsize=10)
    fig.tight_layout()
    return save_figure(fig, out_stem)
