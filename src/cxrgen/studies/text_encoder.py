"""Text-encoder study: Tables 2 and 3 of Chambon et al. 2022 (section 3.3) on impression sections.

Similarity between embeddings is the dot product, as in section 2.4 (``similarity="cosine"`` normalises first).
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path
from typing import NamedTuple

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from sklearn.manifold import TSNE

from cxrgen.data.schema import CHEXPERT_LABELS, apply_label_policy
from cxrgen.errors import InputError
from cxrgen.io import atomic_path, write_csv_atomic, write_text_atomic
from cxrgen.plotting import save_figure
from cxrgen.render.reference import load_reference, paper_table_label
from cxrgen.render.tables import OURS, PAPER, side_by_side, write_table
from cxrgen.text.chexpert_at_k import bag_of_words_similarity, bootstrap_macro_ci, chexpert_at_k, primary_classes
from cxrgen.text.encoders import METHOD_TITLES, METHODS, embed_methods, load_encoder

log = logging.getLogger(__name__)
BASE = "Base"


class StudyResult(NamedTuple):
    table2: pd.DataFrame  # index model; columns <method>, <method>_ci_low, <method>_ci_high (percent, NaN=None)
    table3: pd.DataFrame  # index classes + "Macro"; columns "Base" + models (best method each), percent
    n_dropped_empty: int  # reports with an empty impression
    n_dropped_unlabelled: int  # reports with all labels blank (e.g. OpenI "No Indexing")
    n_reports: int  # reports scored
    seconds: dict  # wall time per model
    # one row per scored report: CheXpert@k_i of Base and of each model's best method, class:<name> membership
    per_report: pd.DataFrame | None = None


def corpus_hash(texts) -> str:
    h = hashlib.sha256()
    for t in texts:
        h.update(str(t).encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]


def _similarity(emb: np.ndarray, kind: str) -> np.ndarray:
    emb = emb.astype("float64")
    if kind == "cosine":
        emb = emb / np.clip(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12, None)
    elif kind != "dot":
        raise InputError(f"similarity={kind!r}; expected 'dot' or 'cosine'")
    return emb @ emb.T


_LOADED_ENCODER: dict = {}  # (name, path, trust_remote_code) -> the one encoder kept in memory


def cached_embeddings(texts, spec: dict, methods, cache_dir, progress=False) -> dict:
    """{method: embeddings (None if unavailable)} for one encoder on a corpus, each read from ``cache_dir`` or, for
    those not cached, computed in one pass over the corpus and cached."""
    name = spec["name"]
    corpus, model_path = corpus_hash(texts), hashlib.sha256(str(spec.get("path")).encode()).hexdigest()[:8]
    out, missing = {}, []
    for method in methods:
        key = f"{name}__{method}__{corpus}__{model_path}"
        npy = Path(cache_dir) / f"{key}.npy" if cache_dir else None
        none_marker = Path(cache_dir) / f"{key}.none" if cache_dir else None
        if npy is not None and npy.is_file():
            out[method] = np.load(npy)
        elif none_marker is not None and none_marker.is_file():
            out[method] = None
        else:
            missing.append((method, npy, none_marker))
    if not missing:
        return out
    ident = (name, str(spec.get("path")), bool(spec.get("trust_remote_code", False)))
    if ident not in _LOADED_ENCODER:
        _LOADED_ENCODER.clear()  # keep one model in memory
        _LOADED_ENCODER[ident] = load_encoder(name, spec.get("path"), trust_remote_code=bool(spec.get("trust_remote_code", False)))
    computed = embed_methods(texts, _LOADED_ENCODER[ident], [m for m, _, _ in missing],
                             batch_size=int(spec.get("batch_size", 64)), progress=progress)
    for method, npy, none_marker in missing:
        emb = out[method] = computed[method]
        if npy is None:
            continue
        if emb is None:
            write_text_atomic(none_marker, "method unavailable for this model\n")
        else:
            with atomic_path(npy) as tmp:
                np.save(tmp, emb)
    return out


def prepare_reports(reports_df: pd.DataFrame):
    """(texts, binary (N,14) labels, n_empty, n_unlabelled) from a unified-schema table."""
    missing = [c for c in ("impression", *CHEXPERT_LABELS) if c not in reports_df.columns]
    if missing:
        raise InputError(f"reports table lacks columns {missing}")
    imp = reports_df["impression"].fillna("").astype(str).str.strip()
    empty = imp == ""
    unlabelled = reports_df[list(CHEXPERT_LABELS)].isna().all(axis=1) & ~empty
    keep = ~empty & ~unlabelled
    labels = apply_label_policy(reports_df.loc[keep], uncertain="positive", blank="negative")
    return imp[keep].tolist(), labels[list(CHEXPERT_LABELS)].to_numpy("float64"), int(empty.sum()), int(unlabelled.sum())


def run_text_encoder_study(
    reports_df: pd.DataFrame,
    encoders: list[dict],
    k: int = 10,
    same_label: str = "exact",
    cache_dir=None,
    n_boot: int = 1000,
    seed: int = 0,
    similarity: str = "dot",
    tsne_dir=None,
    progress: bool = False,
) -> StudyResult:
    """Tables 2 and 3. ``encoders``: [{"name": registry name, "path": local folder or None,
    "methods": subset of METHODS (default all), "trust_remote_code": bool (optional)}].
    The bag-of-words IoU baseline (no embeddings) is always computed and appears as Table 3's "Base" column."""
    texts, labels, n_empty, n_unlab = prepare_reports(reports_df)
    if len(texts) <= k:
        raise InputError(f"{len(texts)} reports with an impression; need more than k={k}")
    classes = list(CHEXPERT_LABELS)
    seconds = {}

    t0 = time.perf_counter()
    base = chexpert_at_k(bag_of_words_similarity(texts), labels, k=k, same_label=same_label)
    seconds[BASE] = time.perf_counter() - t0

    rows, best = {}, {}
    for spec in encoders:
        name = spec.get("name")
        if not name:
            raise InputError(f"encoder spec {spec!r} lacks 'name'")
        label = spec.get("label", name)
        methods = spec.get("methods") or list(METHODS)
        t0 = time.perf_counter()
        row = {}
        unknown = [m for m in methods if m not in METHODS]
        if unknown:
            raise InputError(f"{name}: unknown method(s) {unknown}; expected {list(METHODS)}")
        embeddings = cached_embeddings(texts, spec, methods, cache_dir, progress=progress)
        for method in methods:
            emb = embeddings[method]
            if emb is None:
                row.update({method: np.nan, f"{method}_ci_low": np.nan, f"{method}_ci_high": np.nan})
                continue
            res = chexpert_at_k(_similarity(emb, similarity), labels, k=k, same_label=same_label)
            lo, hi = bootstrap_macro_ci(res, n_boot=n_boot, seed=seed)
            row.update({method: 100 * res.macro, f"{method}_ci_low": 100 * lo, f"{method}_ci_high": 100 * hi})
            if label not in best or res.macro > best[label][1].macro:
                best[label] = (method, res, emb)
        rows[label] = row
        seconds[label] = time.perf_counter() - t0
    cols = [c for m in METHODS for c in (m, f"{m}_ci_low", f"{m}_ci_high")]
    table2 = pd.DataFrame.from_dict(rows, orient="index").reindex(columns=cols).astype("float64")
    table2.index.name = "model"
    table2.attrs.update({"k": k, "same_label": same_label, "n_reports": len(texts), "similarity": similarity})

    t3 = {BASE: [100 * base.per_class[c] for c in classes] + [100 * base.macro]}
    for label, (_, res, _) in best.items():
        t3[label] = [100 * res.per_class[c] for c in classes] + [100 * res.macro]
    table3 = pd.DataFrame(t3, index=classes + ["Macro"])
    table3.index.name = "Abnormality"
    table3.attrs.update({"best_method": {l: b[0] for l, b in best.items()}, "class_counts": base.class_counts, "k": k})

    per_report = pd.DataFrame({"report": np.arange(len(texts)), BASE: base.per_report,
                               **{label: res.per_report for label, (_, res, _) in best.items()},
                               **{f"class:{c}": base.membership[:, j] for j, c in enumerate(base.classes)}})

    if tsne_dir is not None:
        prim = primary_classes(labels)
        for label, (method, _, emb) in best.items():
            tsne_figure(emb, prim, Path(tsne_dir) / f"tsne_{label}_{method}.png", title=f"{label} ({METHOD_TITLES[method]})", seed=seed)
    return StudyResult(table2, table3, n_empty, n_unlab, len(texts), seconds, per_report)


def format_table2(table2: pd.DataFrame, ci: bool = True) -> pd.DataFrame:
    """Paper-style strings: '61.1 [58.0, 64.2]' or 'None' where a model lacks the method."""
    out = {}
    for m in METHODS:
        def fmt(r, m=m):
            if pd.isna(r[m]):
                return "None"
            return f"{r[m]:.1f} [{r[m + '_ci_low']:.1f}, {r[m + '_ci_high']:.1f}]" if ci and not pd.isna(r[m + "_ci_low"]) else f"{r[m]:.1f}"
        out[METHOD_TITLES[m]] = table2.apply(fmt, axis=1)
    return pd.DataFrame(out, index=table2.index)


def tsne_figure(embeddings, labels, out_png, title: str | None = None, seed: int = 0, perplexity: float = 30.0):
    """2-D t-SNE of ``embeddings`` coloured by primary abnormality (``labels``: class names per report, or an
    (N,14) binary matrix reduced with ``primary_classes``). Writes ``out_png`` and the same figure as PDF."""

    emb = np.asarray(embeddings, dtype="float64")
    lab = np.asarray(labels, dtype=object)
    if lab.ndim == 2:
        lab = primary_classes(lab)
    if len(lab) != len(emb) or len(emb) < 5:
        raise InputError(f"t-SNE needs >= 5 embeddings with one label each; got {len(emb)} embeddings, {len(lab)} labels")
    xy = TSNE(n_components=2, perplexity=min(perplexity, (len(emb) - 1) / 3), random_state=seed, init="pca").fit_transform(emb)
    fig, ax = plt.subplots(figsize=(7, 6))
    sns.scatterplot(x=xy[:, 0], y=xy[:, 1], hue=lab, s=8, linewidth=0, ax=ax, palette="tab20")
    ax.set(xticks=[], yticks=[], title=title or "t-SNE")
    ax.legend(fontsize=6, markerscale=2, loc="center left", bbox_to_anchor=(1, 0.5))
    out_png = Path(out_png)
    save_figure(fig, out_png.with_suffix(""))
    return out_png


def save_study(result: StudyResult, out_dir) -> None:
    out_dir = Path(out_dir)
    write_csv_atomic(result.table2, out_dir / "table2.csv", index=True)
    write_csv_atomic(result.table3, out_dir / "table3.csv", index=True)
    if result.per_report is not None:
        write_csv_atomic(result.per_report, out_dir / "per_report.csv", index=False)
    write_text_atomic(
        out_dir / "study_info.json",
        json.dumps(
            {
                "n_reports": result.n_reports,
                "n_dropped_empty": result.n_dropped_empty,
                "n_dropped_unlabelled": result.n_dropped_unlabelled,
                "seconds": result.seconds,
                "best_method": result.table3.attrs.get("best_method"),
            },
            indent=2,
        ),
    )


def render_study(study_dir, table2_stem, table3_stem, scale: str, corpus: str) -> dict:
    """Tables 2 and 3 of this run beside Chambon et al.'s (``reference/chambon2022``), as CSV/Markdown/LaTeX.

    Table 2 is joined on (model, method): the paper's encoders come first, then the ones this run used (the
    miniature's encoders are not the paper's, so their rows stand apart). Table 3 puts the paper's columns
    and this run's side by side per abnormality class.
    """

    study_dir = Path(study_dir)
    table2 = pd.read_csv(study_dir / "table2.csv", index_col="model")
    table3 = pd.read_csv(study_dir / "table3.csv", index_col="Abnormality")
    info = json.loads((study_dir / "study_info.json").read_text())
    metric = "macro_chexpert_at_10"
    ours2 = pd.DataFrame(
        [
            {"model": model, "method": METHOD_TITLES[m], metric: row[m], "ci_low": row[f"{m}_ci_low"], "ci_high": row[f"{m}_ci_high"]}
            for model, row in table2.iterrows()
            for m in METHODS
        ]
    )
    paper2, meta2 = load_reference("chambon2022", "table2")
    t2 = side_by_side(paper2, ours2, ["model", "method"], [metric], digits=1)
    t2.columns = [c.replace(metric, "Macro CheXpert@k") for c in t2.columns]
    where = f"{info['n_reports']} {corpus} impression sections"
    paths = write_table(
        t2, table2_stem, f"Macro CheXpert@k per text encoder and extraction method on {where}; empty = None "
        f"(the model lacks the method), this run's 95% bootstrap CI in brackets", scale, paper_table_label(meta2),
        float_format=".1f",
    )
    paper3, meta3 = load_reference("chambon2022", "table3")
    paper3 = paper3.drop(columns=["notes"], errors="ignore").set_index("abnormality")
    t3 = pd.concat([paper3.add_suffix(f" {PAPER}"), table3.add_suffix(f" {OURS}")], axis=1)
    t3.index.name = "Abnormality"
    best = ", ".join(f"{m}: {METHOD_TITLES.get(b, b)}" for m, b in (info.get("best_method") or {}).items())
    paths3 = write_table(
        t3.reset_index(), table3_stem, f"CheXpert@k per abnormality class on {where}, best extraction method per "
        f"model ({best}); Base = bag-of-words IoU", scale, paper_table_label(meta3), float_format=".1f",
    )
    return {"table2": paths, "table3": paths3}
