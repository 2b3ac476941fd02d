"""Zafar et al. 2023: full fine-tuning vs DreamBooth + LoRA with structured PadChest-style prompts, evaluated by
FID, attribute controllability, a forgetting check, parameter counts and artefact sizes; training-step grids.

* **Prompts** (:func:`prompt_levels_table`): every Zafar prompt level (:data:`cxrgen.data.prompts.ZAFAR_STYLES`)
  for a few training rows, with the token count under the foundation's tokenizer (a paper-level prompt longer than
  the text encoder's context is truncated, and the diagnosis, printed last, is what goes; the compact prompt lists
  only as many findings as fit, :func:`cxrgen.adapt.dreambooth_lora.fit_zafar_prompts`).
* **Sampling** (:func:`sample_zafar_sets`), per model (the foundation as is, and each adapted model), one folder
  with three parts: ``fid`` (one image per real test row, from that row's own structured prompt), ``attribute``
  (for sex, view and finding: two prompts that differ in that attribute only, image i of both from seed + i) and
  ``ood`` (out-of-domain prompts from the foundation's general corpus, "a photo of a red circle", in RGB).
* **Classifiers** (:mod:`cxrgen.classify.head_classifiers`): the attribute classifier (sex, view) and the corpus
  classifier (colour, shape); the finding is scored with the workflow's reference classifier (Pleural Effusion).
* **Evaluation** (:func:`evaluate_zafar`): per model the FID of the ``fid`` part against the real images (reference
  classifier features), per attribute the AUC of the attribute classifier separating the images of the two prompts
  (0.5 = the prompt has no effect; bootstrap CI), the out-of-domain recognition (:func:`ood_recognition`: shares of
  images whose colour / shape the corpus classifier names as prompted, and the colour AUC across prompts; retained
  knowledge = colour AUC above chance relative to the foundation's, :func:`retained_vs`), trainable and
  total parameters, and the bytes the adaptation adds (LoRA file vs fine-tuned model folders).
* **Rendering** (:func:`render_zafar`): the method table, the prompt-level table, the step grids (samples of
  fixed prompts and seeds at increasing training steps, Zafar Figs. 4-7) and a sample grid (Fig. 8's
  out-of-domain check beside the attribute prompts).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from cxrgen.adapt.dreambooth_lora import artefact_bytes, fit_zafar_prompts, load_step_samples, load_tokenizer, n_tokens
from cxrgen.adapt.methods import ADAPTER_FILE, TRAIN_CONFIG_FILE
from cxrgen.classify.head_classifiers import ATTRIBUTE_HEADS, auc_known, load_head_classifier
from cxrgen.classify.reference import load_reference_classifier
from cxrgen.data.prompts import ZAFAR_STYLES, zafar_findings, zafar_prompt
from cxrgen.data.sampling import FolderImages, read_manifest
from cxrgen.data.schema import CHEXPERT_LABELS
from cxrgen.errors import InputError
from cxrgen.io import atomic_path, write_csv_atomic
from cxrgen.metrics.classification import bootstrap_ci
from cxrgen.metrics.features import make_fid_extractor, streamed_features
from cxrgen.metrics.fid import FID_KID_COLUMNS, fid_kid_with_ci
from cxrgen.models.corpus import parse_corpus_prompt
from cxrgen.plotting import image_grid
from cxrgen.render.reference import load_reference, paper_table_label
from cxrgen.render.tables import OURS, PAPER, fid_kid_caption, format_ci, write_table
from cxrgen.sampling.synthetic_sets import MANIFEST, load_zafar_set

log = logging.getLogger(__name__)

#: attribute -> (manifest column or label, negative value, positive value); the classifier scores the positive.
ATTRIBUTES: dict[str, tuple[str, str, str]] = {
    **ATTRIBUTE_HEADS,  # sex and view, scored by the attribute classifier
    "finding": ("Pleural Effusion", "normal", "pleural effusion"),
}
FINDING_LABEL = "Pleural Effusion"
DEFAULT_BASE = {"sex": "M", "view": "PA", "age": 60}
DEFAULT_OOD_PROMPTS = ("a photo of a red circle", "a photo of a blue square", "a photo of a green triangle",
                       "a photo of a yellow ring")
EVAL_FILES = {"methods": "methods.csv", "controllability": "controllability.csv", "forgetting": "forgetting.csv",
              "ood_scores": "ood_scores.csv"}


# ------------------------------------------------------------------------------------------------ prompts
def _base_row(base: Mapping | None = None, **changes) -> pd.Series:
    row = {label: np.nan for label in CHEXPERT_LABELS}
    row.update({"No Finding": 1.0, **DEFAULT_BASE, **(base or {})})
    row.update(changes)
    return pd.Series(row)


def attribute_prompts(level: str, base: Mapping | None = None) -> dict[str, dict]:
    """For each attribute two prompts that differ in that attribute only (at ``level``; the rest from ``base``).

    Returns ``{prompt_name: {"prompt", "attribute", "value", "positive"}}``, names like ``sex_M`` / ``sex_F``. At a
    level that does not print an attribute (e.g. "sex" has no view) both prompts are the same text.
    """
    if level not in ZAFAR_STYLES:
        raise InputError(f"prompt level {level!r}; expected one of {list(ZAFAR_STYLES)}")
    out = {}
    for attr, (column, neg, pos) in ATTRIBUTES.items():
        for value, positive in ((neg, 0), (pos, 1)):
            if attr == "finding":
                row = _base_row(base, **({"No Finding": np.nan, FINDING_LABEL: 1.0} if positive else {}))
            else:
                row = _base_row(base, **{column: value})
            name = f"{attr}_{re.sub(r'[^A-Za-z0-9]+', '-', value)}"
            out[name] = {"prompt": zafar_prompt(row, level), "attribute": attr, "value": value, "positive": positive}
    return out


def prompt_levels_table(manifest: pd.DataFrame, tokenizer=None, n_rows: int = 2) -> pd.DataFrame:
    """Every prompt level for the first ``n_rows`` rows (plus the row with the most findings, the longest compact
    prompt), with token counts under ``tokenizer`` when given; the compact prompt is then fitted to the context as
    in training (:func:`cxrgen.adapt.dreambooth_lora.fit_zafar_prompts`, findings dropped counted)."""
    shown = manifest.head(n_rows)
    if len(manifest) > n_rows:
        most = int(np.argmax([len(zafar_findings(r)) for _, r in manifest.iterrows()]))
        if most >= n_rows:
            shown = pd.concat([shown, manifest.iloc[[most]]])
    rows = []
    for i, (_, r) in enumerate(shown.iterrows()):
        for level in ZAFAR_STYLES:
            row = {"image": str(r.get("image_id", i)), "level": level}
            if tokenizer is None:
                row["prompt"] = zafar_prompt(r, level)
            else:
                (text,), (dropped,) = fit_zafar_prompts(pd.DataFrame([r]), level, tokenizer)
                n = n_tokens(tokenizer, text)
                row.update(prompt=text, tokens=n, context=int(tokenizer.model_max_length),
                           truncated="yes" if n > tokenizer.model_max_length else "no", findings_dropped=dropped)
            rows.append(row)
    return pd.DataFrame(rows)


# ------------------------------------------------------------------------------------------------ sampling
@torch.no_grad()
def generate_rgb(pipeline, prompts: Sequence[str], seeds: Sequence[int], steps: int = 10, guidance: float = 4.0,
                 batch_size: int = 16, height: int | None = None) -> np.ndarray:
    """uint8 RGB (N,H,W,3): image i from ``prompts[i]`` with its own CPU generator seeded ``seeds[i]``."""
    if len(prompts) != len(seeds):
        raise InputError(f"{len(prompts)} prompts but {len(seeds)} seeds; expected one seed per prompt")
    size = int(height) if height is not None else pipeline.default_size()
    out = []
    for start in range(0, len(prompts), int(batch_size)):
        p = [pipeline.prompt_text(x) for x in prompts[start:start + int(batch_size)]]
        gens = [torch.Generator("cpu").manual_seed(int(s)) for s in seeds[start:start + int(batch_size)]]
        res = pipeline.pipe(prompt=p, num_inference_steps=int(steps), guidance_scale=float(guidance), generator=gens,
                            height=size, width=size, output_type="np").images
        out.append((np.clip(np.asarray(res, np.float32), 0, 1) * 255).round().astype(np.uint8))
    return np.concatenate(out) if out else np.zeros((0, size, size, 3), np.uint8)


def sample_zafar_sets(pipeline, out_dir, real_manifest: pd.DataFrame, model: str, seed: int = 0,
                      prompt_level: str = "full", n_fid: int = 48, n_per_prompt: int = 16,
                      ood_prompts: Sequence[str] = DEFAULT_OOD_PROMPTS, n_ood: int = 6, steps: int = 10,
                      guidance: float = 4.0, batch_size: int = 24, base: Mapping | None = None) -> pd.DataFrame:
    """Write ``out_dir`` (atomically): ``images/*.png`` + ``manifest.csv`` with columns part (fid / attribute / ood),
    prompt_name, prompt, attribute, value, positive, colour, shape, index, seed, file, model, real_image_id."""
    for name, v, low in (("n_fid", n_fid, 0), ("n_per_prompt", n_per_prompt, 2), ("n_ood", n_ood, 1)):
        if int(v) < low:
            raise InputError(f"{name}={v!r}; expected an integer >= {low}")

    rows: list[dict] = []
    real = real_manifest.sort_values("image_id").head(int(n_fid)) if n_fid else real_manifest.head(0)
    real_prompts, _ = fit_zafar_prompts(real, prompt_level, pipeline.pipe.tokenizer)  # as the trainers fit them
    for i, ((_, r), prompt) in enumerate(zip(real.iterrows(), real_prompts)):
        rows.append({"part": "fid", "prompt_name": "real_row", "prompt": prompt, "index": i,
                     "seed": seed + i, "real_image_id": str(r["image_id"])})
    for name, spec in attribute_prompts(prompt_level, base).items():
        for i in range(int(n_per_prompt)):
            rows.append({"part": "attribute", "prompt_name": name, "prompt": spec["prompt"], "attribute": spec["attribute"],
                         "value": spec["value"], "positive": spec["positive"], "index": i, "seed": seed + i})
    for j, prompt in enumerate(ood_prompts):
        colour, shape = parse_corpus_prompt(prompt)
        for i in range(int(n_ood)):
            rows.append({"part": "ood", "prompt_name": f"ood_{j}", "prompt": prompt, "colour": colour, "shape": shape,
                         "index": i, "seed": seed + i})
    man = pd.DataFrame(rows)
    imgs = generate_rgb(pipeline, man["prompt"].tolist(), man["seed"].tolist(), steps, guidance, batch_size)
    with atomic_path(out_dir) as tmp:
        (tmp / "images").mkdir(parents=True)
        files = []
        for row, img in zip(man.itertuples(), imgs):
            f = f"images/{row.part}_{row.prompt_name}_{row.index:04d}.png"
            Image.fromarray(img if row.part == "ood" else img.mean(-1).round().astype(np.uint8)).save(tmp / f)
            files.append(f)
        man["file"] = files
        man["model"] = model
        man["method"] = pipeline.method
        man["prompt_level"] = prompt_level
        man["steps"], man["guidance"] = int(steps), float(guidance)
        man.to_csv(tmp / MANIFEST, index=False)
    return man


# ------------------------------------------------------------------------------------------------ evaluation
def _adapter_info(adapter_dir) -> dict:
    if adapter_dir is None:
        return {"trainable_params": 0, "artefact_bytes": 0}
    a = json.loads((Path(adapter_dir) / ADAPTER_FILE).read_text())
    cfg_path = Path(adapter_dir) / TRAIN_CONFIG_FILE
    seconds = json.loads(cfg_path.read_text()).get("train_seconds") if cfg_path.is_file() else None
    return {"trainable_params": a.get("trainable_params"), "total_params": a.get("total_params"),
            "artefact_bytes": artefact_bytes(adapter_dir), "n_train_images": a.get("n_images"),
            "train_prompt_level": a.get("prompt_level"), "max_tokens": a.get("max_tokens"),
            "context_length": a.get("context_length"), "truncated_share": a.get("truncated_share"),
            "findings_dropped_share": a.get("findings_dropped_share"),
            "train_seconds": seconds, "train_steps": a.get("steps"), "prompt_example": a.get("prompt_example")}


def ood_recognition(probs: Mapping[str, np.ndarray], ood: pd.DataFrame, classes: Mapping[str, Sequence[str]]
                    ) -> tuple[list[dict], dict]:
    """How well one model's out-of-domain images show their prompt's colour and shape under the corpus classifier.

    ``probs``: the classifier's ``{"colour": (N, C), "shape": (N, S)}`` for the rows of ``ood`` (columns prompt,
    colour, shape). Per prompt and over all: the share whose predicted colour / shape / both is the prompt's
    (``colour_share``, ``shape_share``, ``both_share``), and the one-vs-rest AUC of P(prompt's colour) separating
    that prompt's images from the other prompts' (``colour_auc``; ``shape_auc`` likewise), averaged over the
    prompts. A model that draws the same picture for every prompt gets AUC 0.5 but a share of 1/#prompts when that
    picture's colour happens to be one prompt's; the AUC needs two prompts of different colour (else NaN).
    Returns (per-prompt rows, summary with ``recognised_share`` = both_share over all).
    """
    if not len(ood):
        return [], {k: np.nan for k in ("colour_share", "shape_share", "recognised_share", "colour_auc", "shape_auc")}
    ok, auc = {}, {}
    for head in ("colour", "shape"):
        names = list(classes[head])
        p = np.asarray(probs[head], float)
        truth = ood[head].to_numpy()
        ok[head] = np.array(names)[p.argmax(1)] == truth
        auc[head] = {v: auc_known(truth == v, p[:, names.index(v)]) for v in dict.fromkeys(truth)}
    both = ok["colour"] & ok["shape"]
    rows = []
    for prompt, idx in ood.groupby("prompt", sort=False).indices.items():
        first = ood.iloc[idx[0]]
        rows.append({"prompt": prompt, "n": len(idx), "colour_share": float(ok["colour"][idx].mean()),
                     "shape_share": float(ok["shape"][idx].mean()), "both_share": float(both[idx].mean()),
                     "colour_auc": auc["colour"][first["colour"]], "shape_auc": auc["shape"][first["shape"]]})
    mean_auc = {h: float(np.mean(list(a.values()))) if len(a) > 1 else np.nan for h, a in auc.items()}
    return rows, {"colour_share": float(ok["colour"].mean()), "shape_share": float(ok["shape"].mean()),
                  "recognised_share": float(both.mean()), "colour_auc": mean_auc["colour"],
                  "shape_auc": mean_auc["shape"]}


def retained_vs(methods: pd.DataFrame, baseline: str, column: str = "colour_auc") -> pd.Series:
    """Retained knowledge: each model's ``column`` AUC above chance (0.5) as a share of the ``baseline``'s (1 = as
    well as the foundation, 0 = the prompts' colours no longer show); NaN where the baseline is not above chance."""
    base = float(methods.loc[methods["model"] == baseline, column].iloc[0])
    if not np.isfinite(base) or base <= 0.5:
        return pd.Series(np.nan, index=methods.index)
    return (methods[column] - 0.5) / (base - 0.5)


def evaluate_zafar(set_dirs: Mapping[str, object], adapter_dirs: Mapping[str, object], real_dir, reference_spec,
                   attribute_dir, corpus_dir, out_dir, baseline: str = "foundation", n_boot: int = 200,
                   seed: int = 0, fid_n_boot: int = 200, min_class_count: int = 10) -> dict[str, pd.DataFrame]:
    """The three evaluation frames (methods, controllability, forgetting), also written as CSVs into ``out_dir``.

    FID/KID come with bootstrap CIs (``fid_n_boot`` resamples) and ``n_real`` / ``n_fake``; attribute AUC CIs
    (``n_boot``) are left out, with a ``ci_note``, below ``min_class_count`` images per prompt of the pair.

    ``set_dirs``: model name -> folder of :func:`sample_zafar_sets`; ``adapter_dirs``: model name -> adapter folder
    (None for the foundation). ``baseline`` names the foundation's set (retained knowledge is relative to it).
    """
    if baseline not in set_dirs:
        raise InputError(f"baseline {baseline!r} has no synthetic set; expected one of {list(set_dirs)}")
    ref = load_reference_classifier(reference_spec)
    attr_clf = load_head_classifier(attribute_dir)
    corpus_clf = load_head_classifier(corpus_dir)
    ext = make_fid_extractor("reference", ref)
    f_real = streamed_features(ext, FolderImages(real_dir)).double().numpy()  # read chunk by chunk
    ctrl_rows, forget_rows, method_rows, ood_rows = [], [], [], []
    for model, folder in set_dirs.items():
        imgs, man = load_zafar_set(folder)
        # FID of the fid part against all real images
        fid_idx = np.flatnonzero((man["part"] == "fid").to_numpy())
        fid = {**{c: np.nan for c in FID_KID_COLUMNS}, "n_real": len(f_real), "n_fake": len(fid_idx)}
        if len(fid_idx) >= 2:
            f_fake = ext(np.stack([imgs[i] for i in fid_idx])).double().numpy()
            fid = fid_kid_with_ci(f_real, f_fake, n_boot=fid_n_boot, seed=seed)
        # controllability
        att = man[man["part"] == "attribute"]
        scores_by_attr = {}
        for attr, grp in att.groupby("attribute", sort=False):
            x = [imgs[i] for i in grp.index]
            if attr == "finding":
                s = ref.predict_proba(np.stack(x))[:, ref.label_index(FINDING_LABEL)]
                scorer = f"reference classifier ({FINDING_LABEL})"
            else:
                s = attr_clf.predict(x)[attr]
                scorer = f"attribute classifier ({attr}: {attr_clf.meta['positive'][attr]})"
            y = grp["positive"].astype(float).to_numpy()
            ci = bootstrap_ci(y, s, auc_known, n_boot=n_boot, seed=seed, min_class_count=min_class_count)
            same = grp.groupby("positive")["prompt"].first()
            ctrl_rows.append({"model": model, "attribute": attr, "auc": ci["value"], "auc_ci_low": ci["ci_low"],
                              "auc_ci_high": ci["ci_high"], "ci_note": ci["ci_note"], "n": len(grp), "scorer": scorer,
                              "mean_score_negative": float(s[y == 0].mean()), "mean_score_positive": float(s[y == 1].mean()),
                              "prompts_differ": bool(same.nunique() > 1),
                              "negative_prompt": same.get(0, ""), "positive_prompt": same.get(1, "")})
            scores_by_attr[attr] = ci["value"]
        # forgetting
        ood = man[man["part"] == "ood"]
        ood_probs = corpus_clf.predict([imgs[i] for i in ood.index]) if len(ood) else {}
        per_prompt, summary = ood_recognition(ood_probs, ood.reset_index(drop=True), corpus_clf.meta["classes"])
        if len(ood):  # per image, for paired comparisons of models (image i of a prompt shares its seed)
            colours = list(corpus_clf.meta["classes"]["colour"])
            ood_rows.append(ood[["prompt", "colour", "shape", "index"]].reset_index(drop=True).assign(model=model).join(
                pd.DataFrame(np.asarray(ood_probs["colour"], float), columns=[f"p_colour:{c}" for c in colours])))
        forget_rows += [{"model": model, **r} for r in per_prompt]
        info = _adapter_info(adapter_dirs.get(model))
        method_rows.append({"model": model, "method": str(man["method"].iloc[0]), **fid,
                            **{f"{a}_auc": scores_by_attr.get(a, np.nan) for a in ATTRIBUTES},
                            **summary, "n_ood": int(len(ood)), **info})
    methods = pd.DataFrame(method_rows)
    methods["retained_vs_foundation"] = retained_vs(methods, baseline)
    frames = {"methods": methods, "controllability": pd.DataFrame(ctrl_rows), "forgetting": pd.DataFrame(forget_rows),
              "ood_scores": pd.concat(ood_rows, ignore_index=True) if ood_rows else pd.DataFrame(
                  columns=["prompt", "colour", "shape", "index", "model"])}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for key, fname in EVAL_FILES.items():
        write_csv_atomic(frames[key], out / fname)
    for _, r in methods.iterrows():
        log.info("%s: FID %.4g (%d vs %d), AUC sex %.3f view %.3f finding %.3f, OOD colour share %.3f AUC %.3f", r["model"],
                 r["fid"], r["n_real"], r["n_fake"], r["sex_auc"], r["view_auc"], r["finding_auc"], r["colour_share"], r["colour_auc"])
    return frames


# ------------------------------------------------------------------------------------------------ rendering
def methods_table(eval_dir, paper_runs: Mapping[str, str | None] | None = None) -> tuple[pd.DataFrame, dict]:
    """The per-method table: this run's numbers, and the paper's run design (images, prompt) where a method names
    its paper run (``reference/zafar2023/experiments.csv``; the paper reports no FID or other numbers)."""
    eval_dir = Path(eval_dir)
    m = pd.read_csv(eval_dir / EVAL_FILES["methods"], keep_default_na=False, na_values=[""])
    c = pd.read_csv(eval_dir / EVAL_FILES["controllability"], keep_default_na=False, na_values=[""])
    paper, meta = load_reference("zafar2023", "experiments")
    paper = paper.set_index("run")
    runs = dict(paper_runs or {})
    unknown = sorted({r for r in runs.values() if r} - set(paper.index))
    if unknown:
        raise InputError(f"paper_run {unknown} not in reference/zafar2023/experiments.csv; expected one of "
                         f"{list(paper.index)}")
    rows = []
    for _, r in m.iterrows():
        run = runs.get(r["model"])
        row = {"model": r["model"], "method": {"none": "foundation (no adaptation)", "lora": "DreamBooth + LoRA",
                                               "full": "full fine-tuning"}.get(r["method"], r["method"]),
               f"paper run {PAPER}": run or "", f"train images {PAPER}": paper.loc[run, "n_train_images"] if run else None,
               f"train prompt {PAPER}": paper.loc[run, "train_prompt"] if run else "",
               f"train images {OURS}": r.get("n_train_images"), f"prompt level {OURS}": r.get("train_prompt_level") or "",
               f"FID {OURS}": format_ci(r["fid"], r["fid_ci_low"], r["fid_ci_high"]),
               f"KID {OURS}": format_ci(r["kid"], r["kid_ci_low"], r["kid_ci_high"], digits=4),
               f"n real / generated {OURS}": f"{int(r['n_real'])} / {int(r['n_fake'])}"}
        for attr in ATTRIBUTES:
            cc = c[(c["model"] == r["model"]) & (c["attribute"] == attr)]
            cell = ""
            if len(cc):
                cell = format_ci(cc["auc"].iloc[0], cc["auc_ci_low"].iloc[0], cc["auc_ci_high"].iloc[0])
                note = cc["ci_note"].iloc[0]
                cell += f" ({note})" if isinstance(note, str) and note else ""
            row[f"{attr} AUC {OURS}"] = cell
        row.update({f"OOD colour recognised {OURS}": r["colour_share"], f"OOD shape recognised {OURS}":
                    r["shape_share"], f"OOD colour AUC {OURS}": r["colour_auc"],
                    f"retained vs foundation {OURS}": r["retained_vs_foundation"],
                    f"trainable params {OURS}": r["trainable_params"],
                    f"artefact MB {OURS}": float(r["artefact_bytes"]) / 1e6,
                    f"prompt tokens / context {OURS}": (f"{int(r['max_tokens'])} / {int(r['context_length'])}"
                                                        if pd.notna(r.get("max_tokens")) else ""),
                    f"prompts with findings dropped {OURS}": r.get("findings_dropped_share"),
                    f"train steps {OURS}": r.get("train_steps")})  # wall time lives in benchmarks/ (tables stay byte-reproducible)
        rows.append(row)
    out = pd.DataFrame(rows)
    for col in (f"train images {PAPER}", f"train images {OURS}", f"trainable params {OURS}", f"train steps {OURS}"):
        out[col] = pd.to_numeric(out[col], errors="coerce").round().astype("Int64").array
    return out, meta


def step_grid_figure(adapter_dirs: Mapping[str, object], out_stem, title: str | None = None) -> dict:
    """Rows = (model, training step), columns = step-sample prompts x images (Zafar Figs. 4-7)."""
    grid, labels, cols = [], [], None
    for model, folder in adapter_dirs.items():
        imgs, man = load_step_samples(folder)
        if not len(man):
            continue
        keys = man[["prompt_index", "index"]].drop_duplicates().sort_values(["prompt_index", "index"])
        if cols is None:
            cols = [f"prompt {int(p) + 1}, seed +{int(i)}" for p, i in keys.itertuples(index=False)]
        for step, grp in man.groupby("step", sort=True):
            lookup = {(int(p), int(i)): imgs[k] for k, (p, i) in zip(grp.index, grp[["prompt_index", "index"]].itertuples(index=False))}
            row = [lookup.get((int(p), int(i))) for p, i in keys.itertuples(index=False)]
            grid.append((row + [None] * len(cols))[:len(cols)])
            labels.append(f"{model}\nstep {int(step)}")
    if not grid:
        raise InputError("step_grid_figure: no adapter has step samples; set sample_steps in the method settings")
    prompts = {}
    for folder in adapter_dirs.values():
        _, man = load_step_samples(folder)
        for p, t in zip(man["prompt_index"], man["prompt"]):
            prompts.setdefault(int(p), t)
    subtitle = "; ".join(f"prompt {p + 1}: {t}" for p, t in sorted(prompts.items()))
    return image_grid(grid, labels, cols, out_stem, title=f"{title or 'Samples during training'}\n{subtitle}",
                      cell_inches=1.3)


def samples_figure(set_dirs: Mapping[str, object], out_stem, n_show: int = 1, title: str | None = None) -> dict:
    """Rows = models; columns = the attribute prompts, then the out-of-domain prompts (Zafar Fig. 8)."""
    grid, labels, cols = [], [], None
    for model, folder in set_dirs.items():
        imgs, man = load_zafar_set(folder)
        sub = man[man["part"].isin(["attribute", "ood"]) & (man["index"] < n_show)]
        names = list(dict.fromkeys(sub["prompt_name"]))
        if cols is None:
            cols = [(n.split("_", 1)[1].replace("-", " ") if n.startswith("finding_") else n.replace("_", " "))
                    if not n.startswith("ood_") else
                    sub.loc[sub["prompt_name"] == n, "prompt"].iloc[0].replace("a photo of a ", "") for n in names]
            cols = [f"{c} {j + 1}" if n_show > 1 else c for c in cols for j in range(n_show)]
        grid.append([imgs[i] for i in sub.index][:len(cols)])
        labels.append(model)
    return image_grid(grid, labels, cols, out_stem, title=title, cell_inches=1.2)


def render_zafar(eval_dir, set_dirs: Mapping[str, object], adapter_dirs: Mapping[str, object], train_dir, stems: Mapping,
                 scale: str = "miniature", paper_runs: Mapping[str, str | None] | None = None, foundation=None,
                 n_show: int = 1) -> dict:
    """Write the method table, the prompt-level table, the step grid and the sample grid (``stems``: keys methods,
    prompts, step_grid, samples -> output path stems)."""
    missing = sorted({"methods", "prompts", "step_grid", "samples"} - set(stems))
    if missing:
        raise InputError(f"render_zafar: stems lack {missing}")
    paths = {}
    table, meta = methods_table(eval_dir, paper_runs)
    paths["methods"] = write_table(
        table, stems["methods"],
        caption=("Full fine-tuning vs DreamBooth + LoRA. FID and KID: synthetic images from the structured prompts of "
                 "real test rows vs the real test images (reference classifier features; lower is better). "
                 f"{fid_kid_caption(pd.read_csv(Path(eval_dir) / EVAL_FILES['methods']))} sex / view / finding "
                 "AUC: a classifier separating images generated from two prompts that differ only in that attribute "
                 "(F vs M, AP vs PA, pleural effusion vs normal; paired seeds; 0.5 = the prompt has no effect; "
                 "bootstrap 95% CI, left out with the reason where a prompt has fewer images than "
                 "evaluation.min_class_count). Forgetting check (Zafar Fig. 8): out-of-domain prompts of the foundation's corpus "
                 "('a photo of a red circle', ...) scored by a colour + shape classifier trained on corpus images "
                 "degraded the way the foundation draws them (blur, shifted colour); OOD colour / shape recognised: "
                 "share of images whose predicted colour / shape is the prompt's; OOD colour AUC: how well "
                 "P(prompt's colour) separates each prompt's images from the other prompts' (one-vs-rest, mean over "
                 "prompts; 0.5 = the prompt's colour does not show). Retained vs foundation uses colour, not shape, "
                 "and the AUC, not the share: the foundation's own shapes are blobs the classifier cannot name, and a "
                 "model that draws the same picture for every prompt still scores a share when that picture's colour "
                 "matches one prompt; retained = (AUC - 0.5) / (foundation's AUC - 0.5). Prompt tokens: the longest "
                 "training prompt against the text encoder's context; findings dropped: share of training prompts "
                 "that list fewer findings than their image has, to fit the context (compact level). Artefact: bytes "
                 "the adaptation adds to the foundation (LoRA file vs fine-tuned U-Net + text encoder). The paper "
                 "reports no numbers for any of these; its columns give only the run design."),
        scale=scale, paper_table=paper_table_label(meta), float_format=".3f")
    train_manifest = read_manifest(train_dir)
    tokenizer = None
    if foundation is not None:
        tokenizer = load_tokenizer(foundation)
    prompts = prompt_levels_table(train_manifest, tokenizer)
    paths["prompts"] = write_table(
        prompts, stems["prompts"],
        caption=("Zafar et al.'s prompt complexity levels (IV.C) for two training images and the training image with the "
                 "most findings, from 'chest x-ray' to the full structured prompt, plus this project's 'compact' form; "
                 "tokens under the foundation's tokenizer (with start/end), truncated = longer than the text "
                 "encoder's context (the text encoder drops the rest). The compact prompt lists as many of the "
                 "image's findings as fit the context (findings dropped: how many it leaves out, trailing first), "
                 "as in training and in the FID prompts; the paper's levels are never shortened."),
        scale=scale)
    paths["step_grid"] = step_grid_figure(adapter_dirs, stems["step_grid"],
                                          title=f"Samples at increasing training steps ({scale})")
    paths["samples"] = samples_figure(set_dirs, stems["samples"], n_show=n_show,
                                      title=f"Attribute prompts and out-of-domain prompts per model ({scale})")
    return paths


__all__ = ["ATTRIBUTES", "DEFAULT_OOD_PROMPTS", "attribute_prompts", "prompt_levels_table", "generate_rgb",
           "sample_zafar_sets", "ood_recognition", "retained_vs", "evaluate_zafar", "methods_table",
           "step_grid_figure", "samples_figure", "render_zafar"]
