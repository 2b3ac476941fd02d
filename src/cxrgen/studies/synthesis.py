"""Generation from adapted pipelines and the evaluation of synthetic images (Chambon et al. 2022, 2.8, 3.4, 3.5;
Tables 4 and 5; Figs. 1, 4, 5).

* The *synthetic sets* it scores come from :func:`cxrgen.sampling.synthetic_sets.generate_set`, one per adapted
  model, image ``i`` of every prompt from seed ``seed + i`` (paired starting noise: a model that ignores the prompt
  draws identical normal/effusion pairs and scores an AUC of exactly 0.5 in Table 5).
* Table 4 (:func:`fid_table`): FID of each (method, prompt) set against the real images of the matching class
  (normal prompt vs real No Finding images, effusion prompt vs real Pleural Effusion images, style prompt vs all
  real images); every number carries the extractor's name and both set sizes.
* Table 5 (:func:`classification_table`): the reference classifier on the 2n images of the effusion (positive)
  and normal (negative) prompts: prevalence, AUC, accuracy, F1, precision, recall at the classifier's stored
  threshold, with stratified bootstrap 95% CIs.
* Rendering (:func:`render_synthesis`): both tables beside the published numbers (this run's method names mapped
  to the paper's rows by :func:`paper_rows`), sample grids per method x prompt (Figs. 1/4) and training images
  beside synthetic ones (Fig. 5).
"""

from __future__ import annotations

import logging
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from cxrgen.adapt.methods import get_method
from cxrgen.classify.reference import evaluate_classifier, load_reference_classifier
from cxrgen.data.sampling import FolderImages, load_images
from cxrgen.errors import InputError
from cxrgen.io import write_csv_atomic
from cxrgen.metrics.classification import MIN_CLASS_COUNT
from cxrgen.metrics.features import make_fid_extractor, streamed_features
from cxrgen.metrics.fid import FID_KID_COLUMNS, fid_kid_with_ci
from cxrgen.metrics.prompt_dependence import LOWERS, NO_CHANGE, RAISES, pixel_differences, prompt_dependence_table
from cxrgen.plotting import image_grid
from cxrgen.progress import progress_bar
from cxrgen.render.reference import load_reference, paper_table_label
from cxrgen.render.tables import OURS, PAPER, fid_kid_caption, side_by_side, write_table
from cxrgen.sampling.synthetic_sets import load_set

log = logging.getLogger(__name__)

#: Real images each prompt's FID is measured against: a label column that must be 1, or None for all real images.
PROMPT_REAL_CLASS: dict[str, str | None] = {"normal": "No Finding", "effusion": "Pleural Effusion", "style": None}
#: Prompt names -> the column headers of the paper's Table 4 (reference/chambon2022/table4.csv, ``prompt``).
PAPER_PROMPTS = {
    "normal": "A photo of a lung xray",
    "effusion": "A photo of a lung xray with a visible pleural effusion",
    "style": "A photo in the style of a lung xray",
}
TABLE4_COLUMNS = ["method", "prompt_name", "prompt", "real_subset", *FID_KID_COLUMNS, "extractor", "note"]
TABLE5_METRICS = ("auc", "accuracy", "f1", "precision", "recall")
TABLE5_COLUMNS = (["method", "label", "n", "n_positive", "prevalence", "threshold"]
                  + [c for m in TABLE5_METRICS for c in (m, f"{m}_ci_low", f"{m}_ci_high")] + ["ci_note", "note"])
OWN_GROUP = "(this run only)"
RESULT_FILES = {"table4": "table4.csv", "table5": "table5.csv", "scores": "scores.csv"}


# ------------------------------------------------------------------------------------------------ sets
def _as_set(value, name: str) -> tuple[np.ndarray, pd.DataFrame]:
    if isinstance(value, (str, Path)):
        return load_set(value)
    try:
        images, manifest = value
    except (TypeError, ValueError) as exc:
        raise InputError(f"set {name!r}: expected a folder or an (images, manifest) pair") from exc
    if len(images) != len(manifest):
        raise InputError(f"set {name!r}: {len(images)} images but {len(manifest)} manifest rows; expected one row each")
    return np.asarray(images), manifest.reset_index(drop=True)


# ------------------------------------------------------------------------------------------------ Table 4
def real_subset_mask(real_manifest: pd.DataFrame, prompt_name: str,
                     real_classes: Mapping[str, str | None] | None = None) -> tuple[np.ndarray, str]:
    """Boolean mask of the real images a prompt is compared with, and a description (e.g. ``No Finding == 1``)."""
    classes = PROMPT_REAL_CLASS if real_classes is None else real_classes
    label = classes.get(prompt_name)
    if label is None:
        return np.ones(len(real_manifest), dtype=bool), "all"
    if label not in real_manifest.columns:
        raise InputError(f"real images' manifest has no column {label!r} (needed for prompt {prompt_name!r}); "
                         f"columns: {list(real_manifest.columns)}")
    return (real_manifest[label].astype("float64") == 1.0).to_numpy(), f"{label} == 1"


def fid_table(
    sets: Mapping[str, object],
    real_images,
    real_manifest: pd.DataFrame,
    extractor="reference",
    classifier=None,
    real_classes: Mapping[str, str | None] | None = None,
    progress: bool = True,
    fid_n_boot: int = 200,
    seed: int = 0,
) -> pd.DataFrame:
    """Chambon Table 4 as a long frame: one row per (method, prompt) with the FID and KID against the matching real
    images, their bootstrap CIs (``fid_n_boot`` resamples) and set sizes (:func:`cxrgen.metrics.fid.fid_kid_with_ci`).

    ``sets`` maps this run's method name to a synthetic-set folder or an ``(images, manifest)`` pair;
    ``real_images``: an array or :class:`cxrgen.data.sampling.FolderImages` (features extracted chunk by chunk).
    ``extractor``: ``"reference"`` (the reference classifier's penultimate features; needs ``classifier``),
    ``"inception"``, ``"xrv"`` or a :class:`~cxrgen.metrics.features.FeatureExtractor`. Real features are computed
    once. A pair with fewer than 2 images on a side gets NaN and a ``note``.
    """
    if len(real_images) != len(real_manifest):
        raise InputError(f"{len(real_images)} real images but {len(real_manifest)} manifest rows; expected one row each")
    ext = make_fid_extractor(extractor, classifier)
    f_real = streamed_features(ext, real_images).double().numpy()
    rows = []
    for method, value in progress_bar(sets.items(), desc="FID per method", disable=not progress):
        images, manifest = _as_set(value, method)
        f_fake = ext(images).double().numpy()
        for prompt_name, grp in manifest.groupby("prompt_name", sort=False):
            mask, desc = real_subset_mask(real_manifest, prompt_name, real_classes)
            fr, ff = f_real[mask], f_fake[grp.index.to_numpy()]
            row = {**{c: np.nan for c in FID_KID_COLUMNS}, "method": method, "prompt_name": prompt_name,
                   "prompt": str(grp["prompt"].iloc[0]), "real_subset": desc, "extractor": ext.name,
                   "dim": int(f_real.shape[1]), "n_real": int(fr.shape[0]), "n_fake": int(ff.shape[0]), "note": ""}
            if fr.shape[0] < 2 or ff.shape[0] < 2:
                row["note"] = f"FID needs >= 2 images per side (real {fr.shape[0]}, synthetic {ff.shape[0]})"
            else:
                row.update(fid_kid_with_ci(fr, ff, n_boot=fid_n_boot, seed=seed))
            rows.append(row)
    return pd.DataFrame(rows, columns=TABLE4_COLUMNS)


# ------------------------------------------------------------------------------------------------ Table 5
def classification_table(
    sets: Mapping[str, object],
    classifier,
    label: str = "Pleural Effusion",
    positive: str = "effusion",
    negative: str = "normal",
    n_boot: int = 200,
    seed: int = 0,
    min_class_count: int = MIN_CLASS_COUNT,
) -> pd.DataFrame:
    """Chambon Table 5: per method, the reference classifier's ``label`` scores on the ``positive`` prompt's images
    (target 1) and the ``negative`` prompt's (target 0), at the classifier's stored threshold, with CIs.

    Targets come from the prompt name, not from the manifest's label columns, so any two prompts can be compared.
    """
    rows = []
    for method, value in sets.items():
        images, manifest = _as_set(value, method)
        pos = (manifest["prompt_name"] == positive).to_numpy()
        neg = (manifest["prompt_name"] == negative).to_numpy()
        row = {c: np.nan for c in TABLE5_COLUMNS}
        row.update(method=method, label=label, n=int(pos.sum() + neg.sum()), n_positive=int(pos.sum()), ci_note="",
                   note="")
        if not pos.any() or not neg.any():
            row["note"] = (f"set has {int(pos.sum())} {positive!r} and {int(neg.sum())} {negative!r} images; "
                           "expected both prompts")
            rows.append(row)
            continue
        keep = pos | neg
        targets = pd.DataFrame({label: pos[keep].astype(float)})
        t = evaluate_classifier(classifier, images[keep], targets, [label], n_boot=n_boot, seed=seed,
                                min_class_count=min_class_count).iloc[0]
        row.update({c: t[c] for c in ("n", "prevalence", "threshold", "ci_note") + tuple(
            x for m in TABLE5_METRICS for x in (m, f"{m}_ci_low", f"{m}_ci_high"))})
        rows.append(row)
    return pd.DataFrame(rows, columns=TABLE5_COLUMNS)


def classifier_scores(
    sets: Mapping[str, object],
    classifier,
    label: str = "Pleural Effusion",
    positive: str = "effusion",
    negative: str = "normal",
) -> pd.DataFrame:
    """Per image behind Table 5: method, prompt_name, index (the noise index shared across models), target (1 for
    the ``positive`` prompt, 0 for the ``negative``) and the classifier's ``label`` score, for paired comparisons
    of models (the findings table)."""
    frames = []
    for method, value in sets.items():
        images, manifest = _as_set(value, method)
        keep = manifest["prompt_name"].isin([positive, negative]).to_numpy()
        if not keep.any():
            continue
        sub = manifest.loc[keep, ["prompt_name", "index"]].reset_index(drop=True)
        sub.insert(0, "method", method)
        sub["target"] = (sub["prompt_name"] == positive).astype(int)
        sub["score"] = classifier.predict_proba(images[keep])[:, classifier.label_index(label)]
        frames.append(sub)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(
        columns=["method", "prompt_name", "index", "target", "score"])


# ------------------------------------------------------------------------------------------------ workflow entry
def run_synthesis_evaluation(
    set_dirs: Mapping[str, object],
    real_dir,
    classifier_spec,
    out_dir,
    extractor: str = "reference",
    n_boot: int = 200,
    seed: int = 0,
    label: str = "Pleural Effusion",
    progress: bool = True,
    fid_n_boot: int = 200,
    min_class_count: int = MIN_CLASS_COUNT,
) -> dict[str, pd.DataFrame]:
    """Tables 4 and 5 for synthetic-set folders (method name -> folder) against the real sample ``real_dir``;
    writes ``table4.csv`` and ``table5.csv`` into ``out_dir``. ``classifier_spec``: a folder or ``xrv:<weights>``."""
    if not set_dirs:
        raise InputError("set_dirs is empty; expected at least one method -> synthetic-set folder")
    classifier = load_reference_classifier(classifier_spec)
    real_images = FolderImages(real_dir)  # read chunk by chunk for the FID features
    real_manifest = real_images.manifest
    sets = {m: _as_set(v, m) for m, v in set_dirs.items()}
    result = {
        "table4": fid_table(sets, real_images, real_manifest, extractor, classifier, progress=progress,
                            fid_n_boot=fid_n_boot, seed=seed),
        "table5": classification_table(sets, classifier, label=label, n_boot=n_boot, seed=seed,
                                       min_class_count=min_class_count),
        "scores": classifier_scores(sets, classifier, label=label),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for key, fname in RESULT_FILES.items():
        write_csv_atomic(result[key], out / fname)
    for _, r in result["table4"].iterrows():
        log.info("FID %s / %s vs real %s [%s, n %d vs %d]: %.4g [%.4g, %.4g], KID %.4g", r["method"], r["prompt_name"],
                 r["real_subset"], r["extractor"], r["n_real"], r["n_fake"], r["fid"], r["fid_ci_low"], r["fid_ci_high"],
                 r["kid"])
    for _, r in result["table5"].iterrows():
        log.info("Table 5 %s: AUC %.3f (n %d)", r["method"], r["auc"], r["n"])
    return result


# ------------------------------------------------------------------------------------------------ paper rows
def default_paper_rows(method: str, settings: Mapping | None = None) -> dict:
    """The paper's rows a model of adaptation ``method`` trained with ``settings`` stands for: ``{"table4":
    (strategy_group, method) | None, "table5": name | None}``, as its entry in :data:`cxrgen.adapt.methods.METHODS`
    says (e.g. textual inversion's template and initializer word pick its Table 4 row)."""
    return get_method(method).rows(settings)


def paper_rows(methods: Sequence[str], overrides: Mapping[str, Mapping] | None = None,
               models: Mapping[str, Mapping] | None = None) -> dict[str, dict]:
    """Paper rows for each run method name, in order: :func:`default_paper_rows` of its config entry in ``models``
    (name -> ``{method, settings}``; names without one have no paper row) unless ``overrides[name]`` gives ``table4``
    (``[strategy_group, method]`` or null) and/or ``table5`` (a name or null).

    A paper row is claimed by the first method that maps to it; later methods mapping to the same row (e.g. a second
    textual-inversion variant for Table 5's single "Textual Inversion" row) are listed under their own names.
    """
    overrides, models = overrides or {}, models or {}
    unknown = sorted(set(overrides) - set(methods))
    if unknown:
        raise InputError(f"paper-name overrides for unknown methods {unknown}; expected some of {list(methods)}")
    out, claimed = {}, {"table4": set(), "table5": set()}
    for m in methods:
        entry = models.get(m)
        rows = default_paper_rows(entry["method"], entry.get("settings")) if entry else {"table4": None, "table5": None}
        for key, value in (overrides.get(m) or {}).items():
            if key not in ("table4", "table5"):
                raise InputError(f"paper-name override for {m!r} has key {key!r}; expected 'table4' and/or 'table5'")
            if key == "table4" and value is not None:
                if len(value) != 2:
                    raise InputError(f"paper-name override {m}.table4={value!r}; expected [strategy_group, method]")
                value = tuple(value)
            rows[key] = value
        for key in ("table4", "table5"):
            if rows[key] is not None and rows[key] in claimed[key]:
                rows[key] = None
            if rows[key] is not None:
                claimed[key].add(rows[key])
        out[m] = rows
    return out


def _display_name(method: str, rows: dict) -> str:
    if rows.get("table4"):
        return rows["table4"][1]
    return rows.get("table5") or method


# ------------------------------------------------------------------------------------------------ rendering
def table4_beside_paper(ours: pd.DataFrame, rows: Mapping[str, dict]) -> tuple[pd.DataFrame, dict]:
    """This run's Table 4 frame joined with the paper's on (strategy_group, method, prompt)."""
    paper, meta = load_reference("chambon2022", "table4")
    t = ours.copy()
    t["run_method"] = t["method"]
    t["strategy_group"] = [rows[m]["table4"][0] if rows[m]["table4"] else OWN_GROUP for m in t["run_method"]]
    t["method"] = [rows[m]["table4"][1] if rows[m]["table4"] else m for m in t["run_method"]]
    t["prompt"] = [PAPER_PROMPTS.get(p, txt) for p, txt in zip(t["prompt_name"], t["prompt"])]
    keys = ["strategy_group", "method", "prompt"]
    t["kid"] = t["kid"].astype(float)
    paper = paper.assign(kid=np.nan)  # the paper reports FID only
    out = side_by_side(paper, t, keys=keys, value_cols=["fid", "kid"]).drop(columns=[f"kid {PAPER}"])
    extra = t.set_index(keys)
    idx = pd.MultiIndex.from_frame(out[keys])
    out[f"extractor {OURS}"] = extra["extractor"].reindex(idx).to_numpy()
    out[f"n real {OURS}"] = extra["n_real"].reindex(idx).astype("Int64").array
    out[f"n synthetic {OURS}"] = extra["n_fake"].reindex(idx).astype("Int64").array
    out[f"real subset {OURS}"] = extra["real_subset"].reindex(idx).to_numpy()
    out["run method"] = extra["run_method"].reindex(idx).to_numpy()
    return out, meta


def table5_beside_paper(ours: pd.DataFrame, rows: Mapping[str, dict]) -> tuple[pd.DataFrame, dict]:
    """This run's Table 5 frame joined with the paper's on the method name (CI cells: ``value [low, high]``)."""
    paper, meta = load_reference("chambon2022", "table5")
    t = ours.copy()
    t["run_method"] = t["method"]
    t["method"] = [rows[m]["table5"] or m for m in t["run_method"]]
    out = side_by_side(paper, t, keys=["method"], value_cols=["prevalence"] + list(TABLE5_METRICS))
    extra = t.set_index("method")
    out[f"n {OURS}"] = extra["n"].reindex(out["method"]).astype("Int64").array
    out[f"n positive {OURS}"] = extra["n_positive"].reindex(out["method"]).astype("Int64").array
    out[f"CI note {OURS}"] = extra["ci_note"].reindex(out["method"]).fillna("").to_numpy()
    out[f"threshold {OURS}"] = extra["threshold"].reindex(out["method"]).to_numpy()
    out["run method"] = extra["run_method"].reindex(out["method"]).to_numpy()
    return out, meta


def samples_figure(sets: Mapping[str, object], out_stem, prompt_names: Sequence[str] | None = None, n_show: int = 4,
                   row_names: Mapping[str, str] | None = None, title: str | None = None) -> dict:
    """Chambon Figs. 1 / 4: one row per method; the columns go noise index by noise index (the first ``n_show``
    indices of the sets), each index showing every prompt side by side, so the images next to each other start
    from the same noise and differ only by the prompt (blank where a set lacks that prompt or index)."""
    loaded = {m: _as_set(v, m) for m, v in sets.items()}
    if not loaded:
        raise InputError("samples_figure: no synthetic sets given")
    if prompt_names is None:
        prompt_names = list(dict.fromkeys(p for _, man in loaded.values() for p in man["prompt_name"]))
    noise = sorted({int(i) for _, man in loaded.values() for i in man["index"]})[:n_show]
    grid, labels = [], []
    for m, (images, manifest) in loaded.items():
        where = {(p, int(i)): k for k, (p, i) in enumerate(zip(manifest["prompt_name"], manifest["index"]))}
        grid.append([images[where[p, i]] if (p, i) in where else None for i in noise for p in prompt_names])
        # long paper names wrapped, so a row label stays beside its row
        labels.append(textwrap.fill((row_names or {}).get(m, m), 24))
    cols = [f"{p}\nnoise {i}" for i in noise for p in prompt_names]
    return image_grid(grid, labels, cols, out_stem, title=title)


def training_vs_synthetic_figure(real_images, real_manifest: pd.DataFrame, synthetic, out_stem, n_show: int = 4,
                                 prompt_classes: Mapping[str, str] | None = None, title: str | None = None) -> dict:
    """Chambon Fig. 5: per class, ``n_show`` real (training) images on the left, synthetic ones on the right.

    ``prompt_classes`` maps a prompt name to the real label column it depicts (default: normal -> No Finding,
    effusion -> Pleural Effusion); real images are the first ``n_show`` rows with that label equal to 1.
    """
    classes = prompt_classes or {p: c for p, c in PROMPT_REAL_CLASS.items() if c}
    syn_images, syn_manifest = _as_set(synthetic, "synthetic")
    grid, labels = [], []
    for prompt, label in classes.items():
        mask, _ = real_subset_mask(real_manifest, prompt, {prompt: label})
        real = [real_images[i] for i in np.flatnonzero(mask)[:n_show]]
        syn = [syn_images[i] for i in np.flatnonzero((syn_manifest["prompt_name"] == prompt).to_numpy())[:n_show]]
        grid.append(real + [None] * (n_show - len(real)) + syn + [None] * (n_show - len(syn)))
        labels.append(label)
    cols = [f"real {j + 1}" for j in range(n_show)] + [f"synthetic {j + 1}" for j in range(n_show)]
    return image_grid(grid, labels, cols, out_stem, title=title)


def prompt_dependence_frame(scores: pd.DataFrame, sets: Mapping[str, object], positive: str = "effusion",
                            negative: str = "normal", n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """:func:`cxrgen.metrics.prompt_dependence.prompt_dependence_table` of the classifier scores behind Table 5,
    with every set's paired pixel differences."""
    pixels = {}
    for method, value in sets.items():
        images, manifest = _as_set(value, method)
        pixels[method] = pixel_differences(images, manifest, positive, negative)
    return prompt_dependence_table(scores, positive, negative, pixel_diffs=pixels, n_boot=n_boot, seed=seed)


def render_synthesis(
    eval_dir,
    set_dirs: Mapping[str, object],
    table4_stem,
    table5_stem,
    samples_stem,
    fig5_stem=None,
    train_dir=None,
    fig5_method: str | None = None,
    scale: str = "miniature",
    paper_names: Mapping[str, Mapping] | None = None,
    n_show: int = 4,
    models: Mapping[str, Mapping] | None = None,
    prompt_dependence_stem=None,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Tables 4 and 5 beside the paper's (CSV + Markdown + LaTeX), the sample grid (Figs. 1/4) and, given
    ``train_dir`` (the fine-tuning images), Fig. 5 for ``fig5_method`` (default: the last method, usually the
    most adapted). ``eval_dir`` holds :func:`run_synthesis_evaluation`'s CSVs. ``models``: each method name's config
    entry (``{method, settings}``), which maps it onto the paper's rows (:func:`paper_rows`). Given
    ``prompt_dependence_stem``, also the prompt-dependence table (:func:`prompt_dependence_frame`; ``n_boot``
    resamples seeded ``seed``)."""
    eval_dir = Path(eval_dir)
    frames = {k: pd.read_csv(eval_dir / f, keep_default_na=False, na_values=[""]) for k, f in RESULT_FILES.items()}
    methods = list(dict.fromkeys(list(set_dirs) + list(frames["table4"]["method"]) + list(frames["table5"]["method"])))
    rows = paper_rows(methods, paper_names, models)
    paths = {}

    t4, meta4 = table4_beside_paper(frames["table4"], rows)
    ext = ", ".join(sorted(frames["table4"]["extractor"].dropna().unique())) or "none"
    paths["table4"] = write_table(
        t4, table4_stem,
        caption=(f"FID of synthetic images per adaptation method and prompt, each against real images of the matching "
                 f"class (normal prompt: No Finding; effusion prompt: Pleural Effusion; style prompt: all); lower is "
                 f"better. This run's features: {ext}. {fid_kid_caption(frames['table4'])} The paper's values (< 1, "
                 f"normalisation not stated; FID only) are not on the same scale as this run's, so compare rankings, "
                 f"not values."),
        scale=scale, paper_table=paper_table_label(meta4), float_format=".3f",
    )
    t5, meta5 = table5_beside_paper(frames["table5"], rows)
    paths["table5"] = write_table(
        t5, table5_stem,
        caption=("Reference classifier (DenseNet-121) on synthetic images: Pleural Effusion scores of images from the "
                 "effusion prompt (positive) and the normal prompt (negative), at the classifier's stored threshold; "
                 "this run's cells show the value and a stratified bootstrap 95% CI, left out (CI note) where the "
                 "positives or negatives are fewer than evaluation.min_class_count. A threshold chosen on real "
                 "images can be miscalibrated on synthetic ones: AUC is the threshold-free comparison."),
        scale=scale, paper_table=paper_table_label(meta5), float_format=".3f",
    )
    names = {m: _display_name(m, rows[m]) for m in methods}
    if prompt_dependence_stem is not None:
        table = prompt_dependence_frame(frames["scores"], set_dirs, n_boot=n_boot, seed=seed)
        table.insert(0, "model", [names.get(m, m) for m in table["method"]])
        paths["prompt_dependence"] = write_table(
            table.rename(columns={"method": "run method"}), prompt_dependence_stem,
            caption=(f"Does the prompt change the image? Per adapted model, image i of the effusion and of the normal "
                     f"prompt start from the same noise; score_difference is the reference classifier's mean Pleural "
                     f"Effusion score of the effusion image minus that of the normal image over those pairs, with a "
                     f"paired percentile bootstrap 95% CI over noise indices ({n_boot} resamples); "
                     f"share_positive_higher is the share of pairs where the effusion image scores higher; "
                     f"pixel_difference the pairs' mean absolute pixel difference (0-255; exactly 0 for a model "
                     f"that ignores the prompt). Verdict: '{RAISES}' when the CI lies above 0, '{LOWERS}' when "
                     f"below, '{NO_CHANGE}' when it holds 0."),
            scale=scale, float_format=".3f",
        )
    paths["samples"] = samples_figure(set_dirs, samples_stem, n_show=n_show, row_names=names,
                                      title=f"Synthetic images per method and prompt ({scale})")
    if fig5_stem is not None:
        if train_dir is None:
            raise InputError("render_synthesis: fig5_stem given without train_dir (the fine-tuning images)")
        method = fig5_method or list(set_dirs)[-1]
        if method not in set_dirs:
            raise InputError(f"fig5_method={method!r}; expected one of {list(set_dirs)}")
        real_images, real_manifest = load_images(train_dir)
        paths["fig5"] = training_vs_synthetic_figure(
            real_images, real_manifest, set_dirs[method], fig5_stem, n_show=n_show,
            title=f"Training images (left) and synthetic images of {names[method]} (right) ({scale})")
    return paths


__all__ = [
    "PROMPT_REAL_CLASS", "PAPER_PROMPTS",
    "real_subset_mask", "fid_table", "classification_table", "run_synthesis_evaluation", "default_paper_rows",
    "paper_rows", "table4_beside_paper", "table5_beside_paper", "prompt_dependence_frame", "samples_figure", "training_vs_synthetic_figure",
    "render_synthesis",
]
