"""Privacy check of synthetic images: are they copies of the images the generator was fine-tuned on?

Runs :func:`cxrgen.metrics.memorization.memorization_table` over the synthetic sets of the adaptation study, with the
adaptation's training sample as the training set and real held-out images of *other* patients (calibration images
whose patient is in the training sample are dropped) as the calibration set; renders the table and a figure of the
closest synthetic/training pairs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.classify.reference import load_reference_classifier
from cxrgen.data.preprocess import resize_images
from cxrgen.data.sampling import load_images
from cxrgen.errors import InputError
from cxrgen.io import write_csv_atomic
from cxrgen.metrics.memorization import memorization_table
from cxrgen.plotting import image_grid
from cxrgen.render.tables import write_table
from cxrgen.sampling.synthetic_sets import load_set

log = logging.getLogger(__name__)

SUMMARY_FILE = "memorization.csv"
PER_IMAGE_FILE = "memorization_per_image.csv"


def _patients(manifest: pd.DataFrame) -> set:
    return set(manifest["patient_id"].astype(str)) if "patient_id" in manifest.columns else set()


def run_memorization(set_dirs: Mapping[str, object], train_dir, real_dir, classifier_spec, out_dir,
                     quantile: float = 0.99, ssim_candidates: int = 16) -> pd.DataFrame:
    """Write ``memorization.csv`` (one row per method) and ``memorization_per_image.csv`` into ``out_dir``."""
    classifier = load_reference_classifier(classifier_spec)
    train_images, train_manifest = load_images(train_dir)
    real_images, real_manifest = load_images(real_dir)
    keep = ~real_manifest["patient_id"].astype(str).isin(_patients(train_manifest)).to_numpy() \
        if "patient_id" in real_manifest.columns else np.ones(len(real_manifest), bool)
    real_images = real_images[keep]
    if len(real_images) < 2:
        raise InputError(f"{real_dir}: {len(real_images)} calibration images of patients outside {train_dir}; "
                         "expected at least 2")

    def feats(images):
        return classifier.features(images).double().numpy()

    sets = {}
    for method, folder in set_dirs.items():
        images, _ = load_set(folder)
        sets[method] = (images, feats(images))
    # compare at the generator's resolution (the trainers resize the sample to it, too)
    size = next(iter(sets.values()))[0].shape[1]
    train_images, real_images = (resize_images(x, size, mode="bilinear") for x in (train_images, real_images))
    summary, per_image = memorization_table(sets, (train_images, feats(train_images)), (real_images, feats(real_images)),
                                            quantile=quantile, ssim_candidates=ssim_candidates)
    ids = train_manifest["image_id"].astype(str).to_numpy()
    per_image["feature_nn_image"] = ids[per_image["feature_nn_index"].to_numpy()]
    per_image["ssim_nn_image"] = ids[per_image["ssim_nn_index"].to_numpy()]
    out = Path(out_dir)
    write_csv_atomic(summary, out / SUMMARY_FILE)
    write_csv_atomic(per_image, out / PER_IMAGE_FILE)
    for _, r in summary.iterrows():
        log.info("memorization %s: feature NN median %.3f (share above real q%.2f: %.3f), SSIM NN median %.3f "
                 "(share above: %.3f)", r["method"], r["feature_nn_median"], quantile, r["feature_share_above"],
                 r["ssim_nn_median"], r["ssim_share_above"])
    return summary


def render_memorization(eval_dir, set_dirs: Mapping[str, object], train_dir, table_stem, figure_stem,
                        scale: str = "miniature", n_pairs: int = 6) -> dict:
    """The memorization table (this run only: none of the papers measures it) and the closest pairs figure."""
    eval_dir = Path(eval_dir)
    summary = pd.read_csv(eval_dir / SUMMARY_FILE)
    per_image = pd.read_csv(eval_dir / PER_IMAGE_FILE)
    q = float(summary["quantile"].iloc[0])
    paths = {"table": write_table(
        summary, table_stem,
        caption=(f"Memorization check (none of the papers reports it): for every synthetic image, the most similar "
                 f"fine-tuning image by reference-classifier feature cosine similarity and by pixel SSIM. Thresholds are "
                 f"the {q:.2f} quantile of the same nearest-training similarity of real held-out images of other "
                 f"patients; 'share above' is the fraction of synthetic images closer to a training image than that "
                 f"(about {1 - q:.2f} for real images by construction, near 1 for a generator that copies)."),
        scale=scale, float_format=".3f")}
    train_images, train_manifest = load_images(train_dir)
    index = {str(i): k for k, i in enumerate(train_manifest["image_id"].astype(str))}
    closest = per_image.sort_values("ssim_nn", ascending=False).head(int(n_pairs))
    grid, rows = [], []
    cache = {}
    for _, r in closest.iterrows():
        method = str(r["method"])
        if method not in cache:
            cache[method] = load_set(set_dirs[method])[0]
        grid.append([cache[method][int(r["index"])], train_images[index[str(r["ssim_nn_image"])]]])
        rows.append(f"{method} #{int(r['index'])}\nSSIM {r['ssim_nn']:.2f}, cos {r['feature_nn']:.2f}")
    paths["figure"] = image_grid(grid, rows, ["synthetic", "nearest training image"], figure_stem,
                                 title=f"Synthetic images closest to a fine-tuning image ({scale})")
    return paths


__all__ = ["run_memorization", "render_memorization"]
