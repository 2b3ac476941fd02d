"""De Wilde et al. 2023, "Medical diffusion on a budget: textual inversion for medical image generation":
per-class multi-vector embeddings, the training / inference sweeps (Tables 1-3), composable diffusion (Figs. 3, 4),
inpainting of disease (Fig. 5) and ResNet-18 with synthetic data (Table 4), at the scale the config sets.

* Embeddings (3.1): one textual-inversion embedding per class (No Finding, Cardiomegaly, Pleural Effusion,
  Pneumonia) trained on single-label AP images, prompted with the token alone (``<healthy>``, ``<cardiomegaly>``,
  ``<pleural-effusion>``, ``<pneumonia>``; :func:`class_token`). Name ``<slug>_v<vectors>_n<cases>``.
* Sweeps (4.1): every point generates ``n_generated`` images of the sweep class from the token alone and scores the
  FID against ``n_real`` real images of that class (paper: 100 vs 100); :func:`run_sweep_point`.
* Composability (4.3): ``(1-w)*<healthy> AND w*<finding>`` for each weight, same seeds for every weight; the
  reference classifier's probability of the finding per weight is the measured curve (:func:`run_composability`).
* Inpainting (4.4): a box of generated healthy images is repainted under a finding's token (latent-mask blending);
  the finding's probability before / after and the pixel change inside / outside the mask (:func:`run_inpainting`).
* Rendering (:func:`render_dewilde`): Tables 1-4 beside the paper (reference/dewilde2023), Figs. 2-5 style images,
  the composability curve and the inpainting change.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from accelerate.state import PartialState
from PIL import Image

from cxrgen.adapt.config import class_embedding_settings
from cxrgen.adapt.methods import EMBEDS_FILE
from cxrgen.adapt.pipeline import load_adapted_pipeline, read_adapter
from cxrgen.adapt.textual_inversion import TextualInversionConfig, train_textual_inversion
from cxrgen.classify.reference import load_reference_classifier
from cxrgen.classify.resnet_study import ResNetStudyConfig, run_study_seed, study_splits, table4_configurations
from cxrgen.data.prompts import HEALTHY, class_slug, class_token
from cxrgen.data.preprocess import crop_nonzero_pad, load_grayscale, resize_square
from cxrgen.data.sampling import FolderImages, load_images, sole_finding
from cxrgen.engine import RuntimeConfig
from cxrgen.errors import InputError
from cxrgen.io import atomic_path, write_csv_atomic
from cxrgen.metrics.classification import MIN_CLASS_COUNT, ci_omission_reason
from cxrgen.metrics.features import make_fid_extractor
from cxrgen.metrics.fid import FID_KID_COLUMNS, fid_kid_with_ci
from cxrgen.plotting import image_grid, save_figure, set_style
from cxrgen.render.reference import load_reference, paper_table_label
from cxrgen.render.tables import OURS, PAPER, fid_kid_caption, side_by_side, write_table
from cxrgen.sampling.composable import composable_generate, format_prompt, load_embeddings_pipeline, parse_prompt
from cxrgen.sampling.inpainting import box_mask, inpaint, latent_mask, pixel_mask_of
from cxrgen.sampling.synthetic_sets import generate_set, load_set

log = logging.getLogger(__name__)

EMBEDS_LIMIT_BYTES = 1_000_000
SWEEP_COLUMNS = ["table", "sweep", "class", "steps", "cfg_scale", "embedding_size", "training_cases",
                 *FID_KID_COLUMNS, "extractor"]


def train_embedding(foundation, sample_dir, label: str, vectors: int, cases: int, settings: Mapping, out_dir,
                    seed: int, progress: bool = True) -> dict:
    """Train one de Wilde embedding on ``cases`` images of ``label`` from the few-shot sample.

    The training prompt is the token alone (de Wilde 3.1): a template list ``["{}"]`` is not a trainer option, so
    the images' prompts are given as ``"{}"`` through :func:`train_textual_inversion`."""
    images, manifest = load_images(sample_dir)
    if "class_label" not in manifest.columns:
        raise InputError(f"{sample_dir}/manifest.csv has no class_label column; expected a few-shot sample")
    keep = (manifest["class_label"].astype(str) == label).to_numpy()
    if not keep.any():
        raise InputError(f"class {label!r} not in {sample_dir} (it holds {sorted(set(manifest['class_label']))})")
    cfg_dict = {**class_embedding_settings(settings, label, vectors, cases), "seed": int(seed)}
    cfg = TextualInversionConfig.from_dict(cfg_dict)
    summary = train_textual_inversion(foundation, images[keep], ["{}"] * int(keep.sum()), cfg, out_dir,
                                      progress=progress)
    size = (Path(out_dir) / EMBEDS_FILE).stat().st_size
    if size >= EMBEDS_LIMIT_BYTES:
        raise InputError(f"{out_dir}: embedding file of {size} bytes; de Wilde's embeddings are < 1 MB")
    return {**summary, "embedding_bytes": int(size)}


# ------------------------------------------------------------------------------------------------ real images
def dewilde_crop_image(image: np.ndarray) -> np.ndarray:
    """De Wilde 3.3.2 preprocessing (crop to non-zero, longest edge resized, zero-padded) at the image's size."""
    return crop_nonzero_pad(image, image.shape[0])


def dewilde_folder(folder) -> FolderImages:
    """A materialised folder's images with de Wilde's preprocessing, read from disk as they are used."""
    return FolderImages(folder).map(dewilde_crop_image)


def real_class_images(real_dir, label: str, n: int, seed: int) -> np.ndarray:
    """Up to ``n`` real images whose sole finding is ``label`` (seeded choice, de Wilde preprocessing); only the
    chosen images are read."""
    images = dewilde_folder(real_dir)
    manifest = images.manifest
    if "class_label" in manifest.columns:
        mask = (manifest["class_label"].astype(str) == label).to_numpy()
    else:
        mask = sole_finding(manifest, label).to_numpy()
    idx = np.flatnonzero(mask)
    if len(idx) < 2:
        raise InputError(f"{real_dir}: {len(idx)} real images with sole finding {label!r}; FID needs >= 2")
    if len(idx) > n:
        idx = np.sort(np.random.default_rng(seed).choice(idx, int(n), replace=False))
    return np.asarray(np.take(images, idx, axis=0))


def _features(images, classifier, extractor: str):
    ext = make_fid_extractor(extractor, classifier)
    return ext, ext(np.asarray(images)).double().numpy()


# ------------------------------------------------------------------------------------------------ sweeps
def run_sweep_point(foundation, embedding_dir, real_dir, classifier_spec, set_dir, fid_csv, point: Mapping,
                    n_generated: int, n_real: int, seed: int, scheduler: str | None = None, batch_size: int = 100,
                    extractor: str = "reference", progress: bool = True, features_npz=None,
                    fid_n_boot: int = 200) -> pd.DataFrame:
    """One sweep point: ``n_generated`` images of the embedding's token alone at ``point['steps']`` /
    ``point['cfg_scale']``, their FID and KID (bootstrap CIs, ``fid_n_boot`` resamples) vs ``n_real`` real images
    of the class; writes the set and ``fid_csv``, and with ``features_npz`` the ``real`` / ``fake`` feature matrices
    (rows in image order: every point shares its real images and the seeds of its generated ones, so two points
    can be compared by a paired bootstrap)."""
    adapter = read_adapter(embedding_dir)
    label = point["class"]
    if adapter.get("token") != class_token(label):
        raise InputError(f"{embedding_dir}: token {adapter.get('token')!r}; expected {class_token(label)!r}")
    pipeline = load_adapted_pipeline(foundation, embedding_dir, scheduler=scheduler)
    slug = class_slug(label)
    generate_set(pipeline, {slug: class_token(label)}, int(n_generated), int(seed), set_dir,
                 steps=int(point["steps"]), guidance=float(point["cfg_scale"]), batch_size=int(batch_size),
                 method=Path(embedding_dir).name, prompt_labels={slug: {label: 1.0}}, progress=progress)
    fake, _ = load_set(set_dir)
    real = real_class_images(real_dir, label, int(n_real), seed)
    classifier = load_reference_classifier(classifier_spec)
    ext, f_real = _features(real, classifier, extractor)
    f_fake = ext(fake).double().numpy()
    row = {**{k: point.get(k) for k in SWEEP_COLUMNS if k in point},
           **fid_kid_with_ci(f_real, f_fake, n_boot=fid_n_boot, seed=seed), "extractor": ext.name}
    frame = pd.DataFrame([row]).reindex(columns=SWEEP_COLUMNS)
    write_csv_atomic(frame, fid_csv)
    if features_npz is not None:
        with atomic_path(features_npz) as tmp, open(tmp, "wb") as fh:
            np.savez_compressed(fh, real=f_real.astype(np.float32), fake=f_fake.astype(np.float32))
    log.info("sweep point %s: FID %.4g (%d real vs %d generated, %s)", dict(point), row["fid"], len(real), len(fake),
             ext.name)
    return frame


def _paper_table1(paper: pd.DataFrame) -> pd.DataFrame:
    """Paper Table 1 with its two sweeps told apart: the steps sweep (CFG 2) and the CFG sweep (100 steps)."""
    p = paper.copy()
    notes = p.get("notes", pd.Series([""] * len(p))).fillna("").astype(str)
    p["sweep"] = np.where((p["cfg_scale"] != 2) | notes.str.contains("duplicate"), "cfg scale", "steps")
    return p


def _sweep_beside_paper(ours: pd.DataFrame, table: str, keys: list[str]):
    paper, meta = load_reference("dewilde2023", table)
    if table == "table1":
        paper = _paper_table1(paper)
    t = ours[ours["table"] == table].copy()
    for k in keys:
        if k in ("steps", "embedding_size", "training_cases"):
            t[k] = t[k].astype(int)
            paper[k] = paper[k].astype(int)
        elif k == "cfg_scale":
            t[k], paper[k] = t[k].astype(float), paper[k].astype(float)
    out = side_by_side(paper.assign(kid=np.nan), t, keys=keys, value_cols=["fid", "kid"], digits=4)
    out = out.drop(columns=[f"kid {PAPER}"])  # the paper reports FID only
    extra = t.set_index(keys)
    idx = pd.MultiIndex.from_frame(out[keys]) if len(keys) > 1 else pd.Index(out[keys[0]])
    fixed = [c for c in ("steps", "cfg_scale", "embedding_size", "training_cases") if c not in keys]
    for c in fixed:
        vals = extra[c].reindex(idx)
        out[f"{c} {OURS}"] = vals.astype("Int64").array if c != "cfg_scale" else vals.to_numpy()
    out[f"n real / generated {OURS}"] = [
        "" if pd.isna(a) else f"{int(a)} / {int(b)}"
        for a, b in zip(extra["n_real"].reindex(idx), extra["n_fake"].reindex(idx))]
    return out, meta


TABLE_KEYS = {"table1": ["sweep", "steps", "cfg_scale"], "table2": ["embedding_size"], "table3": ["training_cases"]}


# ------------------------------------------------------------------------------------------------ images on disk
def _write_images(tmp: Path, rows: list[dict], images) -> pd.DataFrame:
    (tmp / "images").mkdir(parents=True, exist_ok=True)
    for row, img in zip(rows, images):
        row["file"] = f"images/{row['image_id']}.png"
        Image.fromarray(np.asarray(img, dtype=np.uint8)).save(tmp / row["file"])
    return pd.DataFrame(rows)


def _read_images(folder, manifest: pd.DataFrame) -> np.ndarray:
    return np.stack([load_grayscale(Path(folder) / f) for f in manifest["file"]])


def _probs(classifier, images, finding: str) -> np.ndarray:
    return classifier.predict_proba(images)[:, classifier.label_index(finding)]


# ------------------------------------------------------------------------------------------------ composability
def interpolation_prompt(healthy: str, finding: str, weight: float) -> str:
    """``'0.75*<healthy> AND 0.25*<cardiomegaly>'`` for weight 0.25 (de Wilde 4.3)."""
    return format_prompt([(class_token(healthy), round(1.0 - float(weight), 10)), (class_token(finding), float(weight))])


def run_composability(foundation, adapter_dirs: Sequence, classifier_spec, out_dir, findings: Sequence[str],
                      weights: Sequence[float], n_images: int, seed: int, steps: int, guidance: float,
                      multi: Sequence[Mapping] = (), scheduler: str | None = None, batch_size: int = 50,
                      healthy: str = HEALTHY) -> dict:
    """Healthy -> finding interpolation for every finding and weight (same seeds everywhere), the classifier's
    probability of the finding per weight (``curve.csv``), and multi-pathology prompts (``multi.csv``, each
    finding's probability per prompt). Images and ``manifest.csv`` go to ``out_dir`` (atomic)."""
    pipeline = load_embeddings_pipeline(foundation, adapter_dirs, scheduler=scheduler)
    classifier = load_reference_classifier(classifier_spec)
    known = set(pipeline.adapter["tokens"])
    for f in [healthy, *findings]:
        if class_token(f) not in known:
            raise InputError(f"composability: no embedding for {f!r} (token {class_token(f)}); have {sorted(known)}")
    rows, curve, all_images, multi_rows = [], [], [], []
    for finding in findings:
        for w in weights:
            prompt = interpolation_prompt(healthy, finding, w)
            images = composable_generate(pipeline, prompt, int(n_images), int(seed), steps=int(steps),
                                         guidance=float(guidance), batch_size=int(batch_size))
            p = _probs(classifier, images, finding)
            curve.append({"finding": finding, "weight": float(w), "prompt": prompt, "n": int(len(p)),
                          "p_mean": float(p.mean()), "p_sd": float(p.std(ddof=1)) if len(p) > 1 else np.nan,
                          "p_sem": float(p.std(ddof=1) / np.sqrt(len(p))) if len(p) > 1 else np.nan,
                          "steps": int(steps), "guidance": float(guidance)})
            for i, (img, pi) in enumerate(zip(images, p)):
                rows.append({"image_id": f"{class_slug(finding)}_w{float(w):.2f}_{i:03d}", "kind": "interpolation",
                             "finding": finding, "weight": float(w), "prompt": prompt, "index": i,
                             "seed": int(seed) + i, "guidance": float(guidance), "p_finding": float(pi)})
                all_images.append(img)
            log.info("composability %s w=%.2f: p=%.3f", finding, w, p.mean())
    for k, spec in enumerate(multi):
        prompt, g = str(spec["prompt"]), float(spec.get("guidance", guidance))
        parse_prompt(prompt)
        images = composable_generate(pipeline, prompt, int(n_images), int(seed), steps=int(steps), guidance=g,
                                     batch_size=int(batch_size))
        probs = classifier.predict_proba(images)
        row = {"order": k, "prompt": prompt, "guidance": g, "n": int(len(images))}
        for f in findings:
            row[f"p {f}"] = float(probs[:, classifier.label_index(f)].mean())
        multi_rows.append(row)
        for i, img in enumerate(images):
            rows.append({"image_id": f"multi{k}_{i:03d}", "kind": "multi", "finding": "", "weight": np.nan,
                         "prompt": prompt, "index": i, "seed": int(seed) + i, "guidance": g, "p_finding": np.nan})
            all_images.append(img)
    out = Path(out_dir)
    with atomic_path(out) as tmp:
        manifest = _write_images(tmp, rows, all_images)
        manifest.to_csv(tmp / "manifest.csv", index=False)
        pd.DataFrame(curve).to_csv(tmp / "curve.csv", index=False)
        pd.DataFrame(multi_rows).to_csv(tmp / "multi.csv", index=False)
    return {"curve": pd.DataFrame(curve), "multi": pd.DataFrame(multi_rows)}


# ------------------------------------------------------------------------------------------------ inpainting
def run_inpainting(foundation, adapter_dirs: Sequence, classifier_spec, out_dir, findings: Sequence[str],
                   box: Sequence[float], n_images: int, seed: int, steps: int, guidance: float,
                   scheduler: str | None = None, batch_size: int = 50, healthy: str = HEALTHY) -> pd.DataFrame:
    """Generate ``n_images`` healthy images, repaint ``box`` under each finding's token, and measure per image the
    finding's probability before / after and the mean absolute pixel change inside / outside the mask, plus the
    largest latent change outside the mask (0 by construction). Writes ``per_image.csv``, ``summary.csv``,
    ``mask.png`` and the images into ``out_dir``."""

    pipeline = load_embeddings_pipeline(foundation, adapter_dirs, scheduler=scheduler)
    classifier = load_reference_classifier(classifier_spec)
    healthy_imgs, lat = composable_generate(pipeline, class_token(healthy), int(n_images), int(seed), steps=int(steps),
                                            guidance=float(guidance), batch_size=int(batch_size), return_latents=True)
    size = healthy_imgs.shape[-1]
    pmask = box_mask(size, box)
    rows, imgs, per = [], [], []
    for i, img in enumerate(healthy_imgs):
        rows.append({"image_id": f"healthy_{i:03d}", "kind": "healthy", "finding": "", "index": i})
        imgs.append(img)
    for finding in findings:
        before = _probs(classifier, healthy_imgs, finding)
        out_imgs, new_lat, lm = inpaint(pipeline, lat, pmask, class_token(finding), int(seed), steps=int(steps),
                                        guidance=float(guidance), batch_size=int(batch_size))
        after = _probs(classifier, out_imgs, finding)
        covered = pixel_mask_of(lm, size)
        diff = np.abs(out_imgs.astype(np.float64) - healthy_imgs.astype(np.float64))
        keep = ~lm.bool().expand_as(new_lat)
        lat_out = (new_lat - lat).abs()[keep].reshape(len(lat), -1).amax(dim=1) if keep.any() else torch.zeros(len(lat))
        for i in range(len(out_imgs)):
            per.append({"finding": finding, "index": i, "seed": int(seed) + i, "p_before": float(before[i]),
                        "p_after": float(after[i]), "delta_p": float(after[i] - before[i]),
                        "pixel_change_inside": float(diff[i][covered].mean()),
                        "pixel_change_outside": float(diff[i][~covered].mean()) if (~covered).any() else 0.0,
                        "latent_change_outside_max": float(lat_out[i])})
            rows.append({"image_id": f"{class_slug(finding)}_{i:03d}", "kind": "inpainted", "finding": finding,
                         "index": i})
            imgs.append(out_imgs[i])
        log.info("inpainting %s: p %.3f -> %.3f", finding, before.mean(), after.mean())
    per_image = pd.DataFrame(per)
    summary = summarise_inpainting(per_image)
    with atomic_path(Path(out_dir)) as tmp:
        manifest = _write_images(tmp, rows, imgs)
        manifest.to_csv(tmp / "manifest.csv", index=False)
        per_image.to_csv(tmp / "per_image.csv", index=False)
        summary.to_csv(tmp / "summary.csv", index=False)
        Image.fromarray((pixel_mask_of(latent_mask_of(pmask, lat), size) * 255).astype(np.uint8)).save(tmp / "mask.png")
        (tmp / "settings.json").write_text(json.dumps({"box": list(map(float, box)), "steps": int(steps),
                                                       "guidance": float(guidance), "n_images": int(n_images)}))
    return summary


def latent_mask_of(pmask, lat):
    return latent_mask(pmask, tuple(lat.shape[-2:]))


def summarise_inpainting(per_image: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for finding, g in per_image.groupby("finding", sort=False):
        rows.append({"finding": finding, "n": int(len(g)), "p_before": g["p_before"].mean(),
                     "p_after": g["p_after"].mean(), "delta_p": g["delta_p"].mean(),
                     "delta_p_sd": g["delta_p"].std(ddof=1) if len(g) > 1 else np.nan,
                     "share_increased": float((g["delta_p"] > 0).mean()),
                     "pixel_change_inside": g["pixel_change_inside"].mean(),
                     "pixel_change_outside": g["pixel_change_outside"].mean(),
                     "latent_change_outside_max": g["latent_change_outside_max"].max()})
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ Table 4
def generate_class_set(foundation, embedding_dir, label: str, n: int, seed: int, out_dir, steps: int,
                       guidance: float, scheduler: str | None = None, batch_size: int = 100) -> pd.DataFrame:
    """``n`` synthetic training images of ``label`` from its embedding (Table 4's synthetic cases)."""
    pipeline = load_adapted_pipeline(foundation, embedding_dir, scheduler=scheduler)
    slug = class_slug(label)
    return generate_set(pipeline, {slug: class_token(label)}, int(n), int(seed), out_dir, steps=int(steps),
                        guidance=float(guidance), batch_size=int(batch_size), method=Path(embedding_dir).name,
                        prompt_labels={slug: {label: 1.0}}, progress=False)


def run_classifier_seed(train_dir, val_dir, test_dir, synthetic_dirs: Mapping[int, Mapping[str, str]], finding: str,
                        settings: Mapping, real_per_class: int, synthetic_per_class: Sequence[int],
                        default_cases: int, few_cases: int, seed: int, out_csv, negative: str = HEALTHY) -> pd.DataFrame:
    """All Table 4 configurations with one seed. ``synthetic_dirs``: embedding cases -> {class label -> set dir}."""
    def read(folder):  # from disk as the study uses them: a configuration's training images, batches of val / test
        images = dewilde_folder(folder)
        return images, images.manifest

    splits = study_splits(read(train_dir), read(val_dir), read(test_dir), finding, negative)
    synthetic = {}
    for cases, by_class in synthetic_dirs.items():
        xs, ys = [], []
        for label, folder in by_class.items():
            if label not in (finding, negative):
                raise InputError(f"synthetic set {folder} is of class {label!r}; expected {negative!r} or {finding!r}")
            images, _ = load_set(folder)
            size = splits["train"][0].shape[-1]
            if images.shape[-1] != size:  # generated at the model's native size; real samples may be smaller
                images = np.stack([resize_square(im, size) for im in images])
            xs.append(images)
            ys.append(np.full(len(images), int(label == finding)))
        synthetic[int(cases)] = (np.concatenate(xs), np.concatenate(ys))
    runtime, settings = RuntimeConfig.split(settings, "dewilde.classifier.training")
    cfg = ResNetStudyConfig.from_dict(settings)
    confs = table4_configurations(real_per_class, synthetic_per_class, default_cases, few_cases)
    frame = run_study_seed(splits, synthetic, confs, cfg, seed, runtime)
    frame["finding"] = finding
    frame["dropped_val"], frame["dropped_test"] = splits["dropped"]["val"], splits["dropped"]["test"]

    if PartialState().is_main_process:  # every process of a distributed run holds the same table
        write_csv_atomic(frame, out_csv)
    return frame


def summarise_table4(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """Mean and sd (ddof 1) of the test AUC over seeds per configuration."""
    df = pd.concat(list(frames), ignore_index=True)
    df["synthetic_embedding_cases"] = df["synthetic_embedding_cases"].astype("Int64")
    keys = ["real_cases", "synthetic_cases", "synthetic_embedding_cases"]
    g = df.groupby(keys, dropna=False, sort=False)
    out = g["test_auc"].agg(auc_mean="mean", auc_sd=lambda s: s.std(ddof=1) if len(s) > 1 else np.nan,
                            n_seeds="count").reset_index()
    out["best_val_auc_mean"] = g["best_val_auc"].mean().to_numpy()
    out["n_test"] = g["n_test"].first().to_numpy()
    if "n_test_positive" in df.columns:
        out["n_test_positive"] = g["n_test_positive"].first().to_numpy()
    return out


def _configuration_name(real: int, syn: int, emb, large: int, default_cases: int) -> str:
    if not syn:
        return "real only"
    size = "large" if syn >= large else "small"
    few = "" if pd.isna(emb) or int(emb) == int(default_cases) else ", few-case embedding"
    return f"{'real + ' if real else ''}synthetic ({size}{few})"


def table4_beside_paper(summary: pd.DataFrame, default_cases: int, min_class_count: int = MIN_CLASS_COUNT):
    paper, meta = load_reference("dewilde2023", "table4")
    p = paper.copy()
    p["configuration"] = [_configuration_name(r, s, e, 2000, 100) for r, s, e in
                          zip(p["real_cases"], p["synthetic_cases"], p["synthetic_embedding_cases"])]
    t = summary.copy()
    large = int(t["synthetic_cases"].max()) if len(t) else 0
    t["configuration"] = [_configuration_name(r, s, e, large, default_cases) for r, s, e in
                          zip(t["real_cases"], t["synthetic_cases"], t["synthetic_embedding_cases"])]
    merged = p.merge(t, on="configuration", how="left", suffixes=(" p", " t"), sort=False)  # the paper's row order
    only_ours = t[~t["configuration"].isin(p["configuration"])].rename(
        columns={c: f"{c} t" for c in t.columns if c != "configuration" and c in p.columns})
    merged = pd.concat([merged, only_ours], ignore_index=True, sort=False)
    out = pd.DataFrame({"configuration": merged["configuration"]})
    for col in ("real_cases", "synthetic_cases", "synthetic_embedding_cases"):
        out[f"{col} {PAPER}"] = merged[f"{col} p"].astype("Int64").array
        out[f"{col} {OURS}"] = merged[f"{col} t"].astype("Int64").array
    out[f"AUC {PAPER}"] = [f"{m:.3f} ± {s:.3f}" if pd.notna(m) else "" for m, s in
                           zip(merged["auc_mean p"], merged["auc_sd p"])]
    out[f"AUC {OURS}"] = [("" if pd.isna(m) else f"{m:.3f} ± {s:.3f}" if pd.notna(s) else f"{m:.3f}") for m, s in
                          zip(merged["auc_mean t"], merged["auc_sd t"])]
    out[f"seeds {OURS}"] = merged["n_seeds"].astype("Int64").array
    out[f"n test {OURS}"] = merged["n_test"].astype("Int64").array
    if "n_test_positive" in merged.columns:
        pos, n = merged["n_test_positive"], merged["n_test"]
        out[f"test positives / negatives {OURS}"] = ["" if pd.isna(p) else f"{int(p)} / {int(k - p)}" for p, k in zip(pos, n)]
        # the spread is over training seeds on one test set: too few test cases make every seed's AUC unreliable
        out[f"note {OURS}"] = ["" if pd.isna(p) else ci_omission_reason([1] * int(p) + [0] * int(k - p), min_class_count)
                               .replace("CI omitted", "too few test cases for a CI") for p, k in zip(pos, n)]
    return out, meta


# ------------------------------------------------------------------------------------------------ rendering
def _curve_figure(curve: pd.DataFrame, out_stem, title: str):
    set_style()
    fig, ax = plt.subplots(figsize=(5, 3.4))
    for finding, g in curve.groupby("finding", sort=False):
        ax.errorbar(g["weight"], g["p_mean"], yerr=g["p_sem"].fillna(0), marker="o", capsize=3, label=finding)
    ax.set_xlabel("weight of the finding's embedding (1 - weight on <healthy>)")
    ax.set_ylabel("reference classifier P(finding)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    return save_figure(fig, out_stem)


def _inpainting_figure(summary: pd.DataFrame, out_stem, title: str):
    set_style()
    fig, axes = plt.subplots(1, 2, figsize=(7, 3.2))
    x = np.arange(len(summary))
    axes[0].bar(x - 0.2, summary["p_before"], 0.4, label="healthy (before)")
    axes[0].bar(x + 0.2, summary["p_after"], 0.4, label="inpainted (after)")
    axes[0].set_ylabel("reference classifier P(finding)")
    axes[1].bar(x - 0.2, summary["pixel_change_inside"], 0.4, label="inside mask")
    axes[1].bar(x + 0.2, summary["pixel_change_outside"], 0.4, label="outside mask")
    axes[1].set_ylabel("mean |pixel change| (0-255)")
    for ax in axes:
        ax.set_xticks(x, summary["finding"], fontsize=7)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return save_figure(fig, out_stem)


def render_dewilde(sweep_csvs: Sequence, sweep_sets: Sequence, composability_dir, inpainting_dir,
                   classifier_csvs: Sequence, stems: Mapping[str, object], default_cases: int, scale: str = "miniature",
                   n_show: int = 3, min_class_count: int = MIN_CLASS_COUNT) -> dict:
    """Tables 1-4 beside the paper and the figures (stems: table1..table4, fig2, fig3, fig4, fig5,
    composability, inpainting)."""
    paths = {}
    csvs = list(dict.fromkeys(str(p) for p in sweep_csvs))  # the shared default point serves several tables
    sweep = pd.concat([pd.read_csv(p).assign(_set=str(Path(p).parent / "set")) for p in csvs], ignore_index=True)
    sweep = sweep.drop_duplicates(["table", "sweep", "steps", "cfg_scale", "embedding_size", "training_cases"])
    sweep = sweep.reset_index(drop=True)
    ext = ", ".join(sorted(sweep["extractor"].dropna().unique()))
    what = {
        "table1": "FID per number of sampling steps and classifier-free guidance (CFG) scale (two sweeps sharing the "
                  "default point)",
        "table2": "FID per embedding size (vectors per token)",
        "table3": "FID per number of training cases of the embedding",
    }
    for table, keys in TABLE_KEYS.items():
        frame, meta = _sweep_beside_paper(sweep, table, keys)
        paths[table] = write_table(
            frame, stems[table], scale=scale, paper_table=paper_table_label(meta), float_format=".1f",
            caption=(f"{what[table]}; lower is better. Generated images from the token alone vs real images of the "
                     f"same class (sole finding); this run's features: {ext}; KID beside FID (the paper reports FID "
                     f"only). {fid_kid_caption(sweep[sweep['table'] == table])} Rows match the "
                     "paper's only where the setting is the same; the paper's values (Inception FID on prostate MRI) "
                     "are not on this run's scale, so compare trends, not values."))
    frames = [pd.read_csv(p) for p in classifier_csvs]
    summary = summarise_table4(frames)
    t4, meta4 = table4_beside_paper(summary, default_cases, min_class_count)
    finding = frames[0]["finding"].iloc[0]
    paths["table4"] = write_table(
        t4, stems["table4"], scale=scale, paper_table=paper_table_label(meta4),
        caption=(f"Test AUC (mean ± sd over seeds) of ResNet-18 classifiers of {finding} vs No Finding trained on "
                 "real, synthetic or real + synthetic images; best-validation checkpoint, patient-disjoint real test "
                 "set. The sd is over training seeds on one fixed test set (test positives / negatives per row), so "
                 "it leaves out the test set's own sampling error; the note says where that set has fewer cases of a "
                 "class than evaluation.min_class_count. Cases count both classes. The paper's task is prostate cancer on MRI with ImageNet weights."))

    # Fig. 2 style: the first image of every sweep point, one row per sweep
    grid_rows, labels, width = [], [], 0
    for table in TABLE_KEYS:
        sub = sweep.reset_index(drop=True)
        for sw in (sub[sub["table"] == table]["sweep"].unique()):
            idx = np.flatnonzero(((sweep["table"] == table) & (sweep["sweep"] == sw)).to_numpy())
            cells = []
            for i in idx:
                imgs, _ = load_set(sweep.loc[i, "_set"])
                r = sweep.iloc[i]
                cells.append((imgs[0], {"steps": f"{int(r['steps'])} steps", "cfg scale": f"CFG {r['cfg_scale']:g}",
                                        "embedding size": f"{int(r['embedding_size'])} vectors",
                                        "training cases": f"{int(r['training_cases'])} cases"}[sw]))
            grid_rows.append(cells)
            labels.append(sw)
            width = max(width, len(cells))
    grid = [[c[0] for c in row] + [None] * (width - len(row)) for row in grid_rows]
    cols = [f"setting {j + 1}" for j in range(width)]
    titled = [" / ".join(c[1] for c in row) for row in grid_rows]
    paths["fig2"] = image_grid(grid, [f"{l}\n{t}" for l, t in zip(labels, titled)], cols,
                               stems["fig2"], title=f"Sweep settings, same seed (de Wilde Fig. 2 style; {scale})")

    comp = Path(composability_dir)
    man = pd.read_csv(comp / "manifest.csv", keep_default_na=False, na_values=[""])
    images = _read_images(comp, man)
    curve = pd.read_csv(comp / "curve.csv")
    inter = man[man["kind"] == "interpolation"]
    findings = list(dict.fromkeys(inter["finding"]))
    weights = sorted(inter["weight"].unique())
    grid = []
    for f in findings:
        grid.append([images[int(inter[(inter.finding == f) & (inter.weight == w) & (inter["index"] == 0)].index[0])]
                     for w in weights])
    paths["fig3"] = image_grid(grid, findings, [f"{int(round((1 - w) * 100))}% healthy" for w in weights],
                               stems["fig3"], title=f"Healthy -> finding by composable diffusion, one seed ({scale})")
    multi = man[man["kind"] == "multi"]
    multi_csv = pd.read_csv(comp / "multi.csv")
    if len(multi):
        orders = sorted(multi_csv["order"])
        grid = [[images[int(multi[(multi.prompt == multi_csv.loc[multi_csv.order == o, "prompt"].iloc[0])
                                  & (multi["index"] == j)].index[0])] for o in orders] for j in range(n_show)
                if (multi["index"] == j).any()]
        cols = [multi_csv.loc[multi_csv.order == o, "prompt"].iloc[0] for o in orders]
        paths["fig4"] = image_grid(grid, [f"seed +{j}" for j in range(len(grid))], [c[:38] for c in cols],
                                   stems["fig4"], title=f"Multiple findings composed (de Wilde Fig. 4 style; {scale})")
    paths["composability"] = _curve_figure(curve, stems["composability"],
                                           f"P(finding) vs interpolation weight, mean ± sem ({scale})")

    inp = Path(inpainting_dir)
    man = pd.read_csv(inp / "manifest.csv", keep_default_na=False, na_values=[""])
    images = _read_images(inp, man)
    summary_inp = pd.read_csv(inp / "summary.csv")
    mask = np.asarray(Image.open(inp / "mask.png")) > 127
    finds = list(summary_inp["finding"])
    grid = []
    for j in range(min(n_show, int((man.kind == "healthy").sum()))):
        h = images[int(man[(man.kind == "healthy") & (man["index"] == j)].index[0])]
        shown = h.copy()
        edge = mask & ~np.roll(mask, 1, 0) | mask & ~np.roll(mask, -1, 0) | mask & ~np.roll(mask, 1, 1) | \
            mask & ~np.roll(mask, -1, 1)
        shown[edge] = 255
        row = [h, shown] + [images[int(man[(man.kind == "inpainted") & (man.finding == f) & (man["index"] == j)].index[0])]
                            for f in finds]
        grid.append(row)
    paths["fig5"] = image_grid(grid, [f"seed +{j}" for j in range(len(grid))], ["healthy", "mask"] + finds,
                               stems["fig5"], title=f"Inpainting a finding into a healthy image ({scale})")
    paths["inpainting"] = _inpainting_figure(summary_inp, stems["inpainting"],
                                             f"Inpainting: P(finding) and pixel change, n per finding ({scale})")
    return paths


__all__ = ["train_embedding", "dewilde_crop_image", "dewilde_folder", "real_class_images", "run_sweep_point",
           "interpolation_prompt", "run_composability",
           "run_inpainting", "summarise_inpainting", "generate_class_set", "run_classifier_seed", "summarise_table4",
           "table4_beside_paper", "render_dewilde"]
