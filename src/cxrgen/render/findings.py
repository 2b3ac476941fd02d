"""Findings: the papers' directional claims (``reference/findings.yaml``) evaluated on one run's result files.

Each claim names an *evaluator*, an entry of :data:`EVALUATORS`: a function that reads the per-item result files
of one study (per-image classifier scores, per-report CheXpert@k hits, per-image PSNR, per-seed AUCs, per-image
features) and returns this run's effect ``a - b`` (the same quantity as the paper's) with a 95% interval. The
verdict then follows from the claim's ``direction`` alone (:func:`verdict`):

* ``greater`` / ``less``: *reproduced* when the interval lies wholly above / below 0, *contradicted* when it lies
  wholly on the other side, otherwise *inconclusive at this n*;
* ``within`` (an equivalence claim with a ``margin``): *reproduced* when the interval lies inside
  ``(-margin, margin)``, *contradicted* when it lies wholly outside ``[-margin, margin]``, otherwise inconclusive;
* *not run*: the config does not run the comparison (its ``studies`` leave the claim's paper out, a study's file is
  absent, or it lacks a model / setting the claim compares); the ``note`` says which.

Intervals: percentile bootstrap (``n_boot`` resamples, seeded, so the table is byte-identical across runs), paired
wherever the two sides score the same items (the same images, reports, seeds or noise draws), resampling within
strata where the statistic needs them (positives and negatives for an AUC, the prompts of the out-of-domain
check). Per-seed effects (de Wilde Table 4) use a paired t interval over seeds instead (a handful of seeds is too
few to bootstrap), and their verdict also needs the exact paired sign-flip test over seeds to reject the null at
``alpha``: with identical differences on every seed a t interval has zero width, while the sign-flip test cannot
reject with fewer than six seeds at alpha 0.05 (its smallest p is 2 / 2^n), so such effects stay inconclusive. An
AUC needs ``min_per_class`` positives and negatives; below that the effect is undefined and
the verdict is inconclusive.

Monotone claims (de Wilde Tables 2/3: more vectors / more training cases lower FID) are tested on their end
points: FID at the largest minus FID at the smallest setting of the run's sweep, with a paired bootstrap over
real and generated images (the settings share their real images and the seeds of their generated images).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import yaml
from scipy import stats

from cxrgen.errors import InputError
from cxrgen.metrics.bootstrap import paired_bootstrap
from cxrgen.metrics.classification import auc_rows
from cxrgen.metrics.fid import frechet_distance

log = logging.getLogger(__name__)

CLAIMS_FILE = "findings.yaml"  # in the reference folder (cxrgen.render.reference.reference_root)
DIRECTIONS = ("greater", "less", "within")
REPRODUCED, CONTRADICTED, INCONCLUSIVE, NOT_RUN = "reproduced", "contradicted", "inconclusive at this n", "not run"
VERDICTS = (REPRODUCED, CONTRADICTED, INCONCLUSIVE, NOT_RUN)
CLAIM_KEYS = ("id", "paper", "table", "section", "claim", "evaluator", "effect", "direction", "test", "published")
SWEEP_FEATURES = "features.npz"  # beside each de Wilde sweep point's fid.csv
COLUMNS = ["claim", "paper", "where", "scope", "effect", "paper effect", "this run", "ci_low", "ci_high", "n",
           "interval", "verdict", "note"]


class NotRun(Exception):
    """The config does not run what a claim compares (the message says what is missing)."""


@dataclass(frozen=True)
class Effect:
    """This run's effect ``a - b`` with its 95% interval; ``scope`` tells rows of one claim apart (e.g. corpus)."""

    value: float
    ci_low: float
    ci_high: float
    n: str
    interval: str
    scope: str = ""
    note: str = ""
    p_value: float | None = None  # a paired test that must also reject (per-seed effects), else None


@dataclass(frozen=True)
class Settings:
    """How intervals are computed, and what the config says about the models a claim compares."""

    n_boot: int = 1000
    seed: int = 0
    alpha: float = 0.05
    min_per_class: int = 2
    adaptation_methods: tuple = ()  # config adaptation.methods: ({name, method, settings}, ...)
    zafar_methods: tuple = ()  # config zafar.methods
    dewilde_cases: int | None = None  # config dewilde.cases (the default embedding of Table 4)
    studies: tuple | None = None  # config studies: the papers the run selects (None: every paper)

    @property
    def bootstrap(self) -> dict:
        """Keyword arguments of :func:`cxrgen.metrics.bootstrap.paired_bootstrap`."""
        return {"n_boot": self.n_boot, "seed": self.seed, "alpha": self.alpha}


# ------------------------------------------------------------------------------------------------ verdicts
def verdict(effect: Effect | None, direction: str, margin: float | None = None, alpha: float = 0.05) -> str:
    """The verdict of one effect under the claim's direction (see the module docstring)."""
    if effect is None:
        return NOT_RUN
    lo, hi = effect.ci_low, effect.ci_high
    if direction not in DIRECTIONS:
        raise InputError(f"direction {direction!r}; expected one of {DIRECTIONS}")
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return INCONCLUSIVE
    if direction == "greater":
        result = REPRODUCED if lo > 0 else CONTRADICTED if hi < 0 else INCONCLUSIVE
    elif direction == "less":
        result = REPRODUCED if hi < 0 else CONTRADICTED if lo > 0 else INCONCLUSIVE
    else:
        m = float(margin)
        result = REPRODUCED if -m < lo and hi < m else CONTRADICTED if lo > m or hi < -m else INCONCLUSIVE
    if effect.p_value is not None and not effect.p_value < alpha:
        return INCONCLUSIVE
    return result


# ------------------------------------------------------------------------------------------------ intervals
def paired_t_interval(differences, alpha: float = 0.05) -> tuple[float, float, float]:
    """(mean, low, high) of paired differences with a t interval (n - 1 degrees of freedom); NaN bounds below 2."""
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return np.nan, np.nan, np.nan
    mean = float(d.mean())
    if d.size < 2:
        return mean, np.nan, np.nan
    half = float(stats.t.ppf(1 - alpha / 2, d.size - 1) * d.std(ddof=1) / np.sqrt(d.size))
    return mean, mean - half, mean + half


def sign_flip_p(differences) -> float:
    """Two-sided p of the exact paired sign-flip (permutation) test of mean 0: the share of the 2^n sign patterns
    whose |mean| is at least the observed one (n <= 16; seeds are few)."""
    d = np.asarray(differences, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return np.nan
    if d.size > 16:
        raise InputError(f"{d.size} paired differences; the exact sign-flip test enumerates at most 16")
    flips = np.array(list(itertools.product((1.0, -1.0), repeat=d.size)))
    return float(np.mean(np.abs(flips @ d) >= abs(d.sum()) - 1e-12))


def bootstrap_label(settings: Settings, what: str) -> str:
    return f"paired bootstrap over {what}, {settings.n_boot} resamples, {100 * (1 - settings.alpha):g}%"


# ------------------------------------------------------------------------------------------------ file helpers
def _read_csv(files: Mapping, key: str, what: str) -> pd.DataFrame:
    path = files.get(key)
    if not path:
        raise NotRun(f"no {what} in this run")
    if not Path(path).is_file():
        raise InputError(f"{path}: missing {what} ({key}); expected the study's output file")
    return pd.read_csv(path)


def _require(frame: pd.DataFrame, columns: Sequence[str], where: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InputError(f"{where} lacks columns {missing}; expected {list(columns)}")


def _auc(y: np.ndarray, s: np.ndarray, min_per_class: int) -> float:
    """AUC of scores ``s`` for binary targets ``y``; NaN unless each class has ``min_per_class`` items."""
    n_pos = int(y.sum())
    if n_pos < min_per_class or y.size - n_pos < min_per_class:
        return np.nan
    return float(auc_rows(y[None, :].astype(bool), s[None, :])[0])


def _models(config_methods: Sequence[Mapping], method: str, **settings) -> list[str]:
    """Names of the configured models of ``method`` whose settings match ``settings`` (a missing setting = False)."""
    return [m["name"] for m in config_methods if m.get("method") == method
            and all(bool((m.get("settings") or {}).get(k, False)) == v for k, v in settings.items())]


# ------------------------------------------------------------------------------------------------ evaluators
def vae_auc_change(files: Mapping, claim: Mapping, settings: Settings) -> list[Effect]:
    """Chambon Table 1: mean over labels of AUC(reconstruction) - AUC(original), paired over images.

    Reads ``vae_per_image`` (``target:<label>``, ``p_orig:<label>``, ``p_recon:<label>`` per image and resolution;
    the largest resolution is used, as in Table 1)."""
    df = _read_csv(files, "vae_per_image", "VAE study")
    df = df[df["resolution"] == df["resolution"].max()].reset_index(drop=True)
    labels = [c.split(":", 1)[1] for c in df.columns if c.startswith("target:")]
    if not labels:
        raise InputError(f"{files['vae_per_image']} has no target:<label> / p_orig:<label> / p_recon:<label> columns; "
                         "expected the VAE study's per-image classifier scores")
    y = {l: df[f"target:{l}"].to_numpy(float) for l in labels}
    p_o = {l: df[f"p_orig:{l}"].to_numpy(float) for l in labels}
    p_r = {l: df[f"p_recon:{l}"].to_numpy(float) for l in labels}

    def stat(idx):
        (i,) = idx
        diffs = []
        for l in labels:
            yi = y[l][i]
            keep = np.isfinite(yi)
            a = _auc(yi[keep], p_r[l][i][keep], settings.min_per_class)
            b = _auc(yi[keep], p_o[l][i][keep], settings.min_per_class)
            if np.isfinite(a) and np.isfinite(b):
                diffs.append(a - b)
        return float(np.mean(diffs)) if diffs else np.nan

    value, lo, hi = paired_bootstrap(stat, [np.arange(len(df))], **settings.bootstrap)
    scored = [l for l in labels if np.isfinite(_auc(y[l][np.isfinite(y[l])], p_o[l][np.isfinite(y[l])], settings.min_per_class))]
    note = f"{len(scored)} of {len(labels)} labels with >= {settings.min_per_class} positives and negatives"
    return [Effect(value, lo, hi, f"{len(df)} images", bootstrap_label(settings, "images"), note=note)]


def text_encoder_vs_base(files: Mapping, claim: Mapping, settings: Settings) -> list[Effect]:
    """Chambon Tables 2/3: macro CheXpert@k of the best encoder minus the bag-of-words baseline, per corpus.

    Reads ``text_per_report`` (corpus -> CSV with one row per report: CheXpert@k_i of ``Base`` and of every
    encoder's best method, and ``class:<name>`` membership columns)."""
    corpora = files.get("text_per_report") or {}
    if not corpora:
        raise NotRun("no text-encoder study in this run")
    effects = []
    for corpus, path in corpora.items():
        df = _read_csv({"f": path}, "f", f"per-report CheXpert@k of corpus {corpus}")
        member = df[[c for c in df.columns if c.startswith("class:")]].to_numpy(float)
        encoders = [c for c in df.columns if c not in ("report", "Base") and not c.startswith("class:")]
        _require(df, ["Base"], str(path))
        if not encoders:
            effects.append(Effect(np.nan, np.nan, np.nan, f"{len(df)} reports", "", scope=corpus,
                                  note="no encoder besides the baseline"))
            continue

        def macro(col, i, member=member, df=df):
            w = member[i]
            den = w.sum(0)
            num = (w * df[col].to_numpy(float)[i][:, None]).sum(0)
            return float(np.mean(num[den > 0] / den[den > 0])) if (den > 0).any() else np.nan

        all_idx = np.arange(len(df))
        best = max(encoders, key=lambda c: macro(c, all_idx))

        def stat(idx, best=best):
            (i,) = idx
            return 100 * (macro(best, i) - macro("Base", i))

        value, lo, hi = paired_bootstrap(stat, [all_idx], **settings.bootstrap)
        effects.append(Effect(value, lo, hi, f"{len(df)} reports", bootstrap_label(settings, "reports"),
                              scope=f"corpus {corpus}", note=f"best encoder: {best}"))
    return effects


def _synthesis_scores(files: Mapping) -> pd.DataFrame:
    df = _read_csv(files, "synthesis_scores", "synthesis evaluation")
    _require(df, ["method", "index", "target", "score"], str(files["synthesis_scores"]))
    return df


def _score_matrix(df: pd.DataFrame, methods: Sequence[str]) -> tuple[dict, np.ndarray, np.ndarray]:
    """Per method (N,) scores aligned by (target, index), and the positive / negative positions."""
    out = {}
    keys = None
    for m in methods:
        sub = df[df["method"] == m].sort_values(["target", "index"])
        k = list(zip(sub["target"], sub["index"]))
        if keys is None:
            keys = k
        elif k != keys:
            raise InputError(f"synthesis scores of {m!r} cover other (prompt, index) pairs than {methods[0]!r}; "
                             "expected every model scored on the same image indices")
        out[m] = sub["score"].to_numpy(float)
    target = np.array([t for t, _ in keys], dtype=float)
    return out, np.flatnonzero(target == 1), np.flatnonzero(target == 0)


def _synthesis_effect(df: pd.DataFrame, a: str, others: Sequence[str], settings: Settings, note: str) -> Effect:
    scores, pos, neg = _score_matrix(df, [a, *others])
    y = np.r_[np.ones(len(pos)), np.zeros(len(neg))].astype(bool)

    def auc_of(m, p, n):
        return _auc(y, np.r_[scores[m][p], scores[m][n]], settings.min_per_class)

    def stat(idx):
        p, n = idx
        best_other = max((auc_of(m, p, n) for m in others), default=np.nan)
        return auc_of(a, p, n) - best_other

    value, lo, hi = paired_bootstrap(stat, [pos, neg], **settings.bootstrap)
    if not np.isfinite(value):
        note += f"; AUC needs >= {settings.min_per_class} images per prompt"
    return Effect(value, lo, hi, f"{len(pos)} + {len(neg)} images per model",
                  bootstrap_label(settings, "image indices (stratified by prompt)"), note=note)


def synthesis_auc_vs_original(files: Mapping, claim: Mapping, settings: Settings) -> list[Effect]:
    """Chambon Table 5: AUC of the first configured model of ``claim['method']`` minus the original model's."""
    df = _synthesis_scores(files)
    treated = _models(settings.adaptation_methods, claim["method"])
    original = _models(settings.adaptation_methods, "none")
    if not treated or not original:
        raise NotRun(f"needs a {claim['method']!r} model and the original model (method none); configured: "
                     f"{[m['name'] for m in settings.adaptation_methods]}")
    return [_synthesis_effect(df, treated[0], [original[0]], settings, f"{treated[0]} vs {original[0]}")]


def synthesis_auc_best(files: Mapping, claim: Mapping, settings: Settings) -> list[Effect]:
    """Chambon Table 5: AUC of U-Net fine-tuning with prior preservation minus the best other method's."""
    df = _synthesis_scores(files)
    prior = _models(settings.adaptation_methods, "unet", prior_preservation=True)
    if not prior:
        raise NotRun("needs a U-Net model with prior_preservation: true")
    others = [m["name"] for m in settings.adaptation_methods if m["name"] != prior[0]]
    if not others:
        raise NotRun("needs at least one other adaptation method")
    return [_synthesis_effect(df, prior[0], others, settings, f"{prior[0]} vs the best of {len(others)} others")]


def zafar_ood_retention(files: Mapping, claim: Mapping, settings: Settings) -> list[Effect]:
    """Zafar Fig. 8: out-of-domain colour AUC of DreamBooth + LoRA minus full fine-tuning.

    Reads ``zafar_ood`` (one row per out-of-domain image: model, prompt, colour, index, ``p_colour:<c>``)."""
    lora = _models(settings.zafar_methods, "lora")
    full = _models(settings.zafar_methods, "full")
    if not lora or not full:
        raise NotRun(f"needs a lora and a full model; configured: {[m['name'] for m in settings.zafar_methods]}")
    df = _read_csv(files, "zafar_ood", "Zafar evaluation")
    _require(df, ["model", "prompt", "colour", "index"], str(files["zafar_ood"]))
    keyed = {m: df[df["model"] == m].sort_values(["prompt", "index"]).reset_index(drop=True) for m in (lora[0], full[0])}
    ref = keyed[lora[0]]
    if list(zip(ref["prompt"], ref["index"])) != list(zip(keyed[full[0]]["prompt"], keyed[full[0]]["index"])):
        raise InputError(f"{files['zafar_ood']}: {lora[0]} and {full[0]} cover other out-of-domain images; expected the same prompts and indices")
    colours = list(dict.fromkeys(ref["colour"]))
    strata = [np.flatnonzero((ref["prompt"] == p).to_numpy()) for p in dict.fromkeys(ref["prompt"])]

    def colour_auc(frame, idx):
        truth = frame["colour"].to_numpy()[idx]
        aucs = [_auc((truth == c).astype(float), frame[f"p_colour:{c}"].to_numpy(float)[idx], settings.min_per_class)
                for c in colours]
        return float(np.mean(aucs)) if len(colours) > 1 and all(np.isfinite(aucs)) else np.nan

    def stat(idx):
        i = np.concatenate(idx)
        return colour_auc(keyed[lora[0]], i) - colour_auc(keyed[full[0]], i)

    value, lo, hi = paired_bootstrap(stat, strata, **settings.bootstrap)
    note = f"{lora[0]} vs {full[0]}"
    if len(colours) < 2:
        note += "; the out-of-domain prompts need two colours"
    return [Effect(value, lo, hi, f"{len(ref)} images per model ({len(strata)} prompts)",
                   bootstrap_label(settings, "image indices within prompts"), note=note)]


def beta_signal(files: Mapping, claim: Mapping, settings: Settings) -> list[Effect]:
    """Weber 7.6: per-image corr(z_T, z_0) with max beta 0.0195 minus with 0.0295, paired over images."""
    df = _read_csv(files, "cheff_beta", "Cheff forward-process check")
    _require(df, ["image", "beta_end", "corr_zT_z0_raw"], str(files["cheff_beta"]))
    wide = df.pivot(index="image", columns="beta_end", values="corr_zT_z0_raw")
    low, high = float(claim.get("beta_low", 0.0195)), float(claim.get("beta_high", 0.0295))
    if low not in wide.columns or high not in wide.columns:
        raise NotRun(f"needs max beta {low} and {high}; the check ran {sorted(wide.columns)}")
    d = (wide[low] - wide[high]).to_numpy(float)
    value, lo, hi = paired_bootstrap(lambda idx: float(d[idx[0]].mean()), [np.arange(len(d))], **settings.bootstrap)
    return [Effect(value, lo, hi, f"{len(d)} images", bootstrap_label(settings, "images"))]


def sr_fine_vs_base(files: Mapping, claim: Mapping, settings: Settings) -> list[Effect]:
    """Weber Table 2, workflow 1: per-image PSNR of SR_fine minus SR_base, paired over images."""
    df = _read_csv(files, "cheff_reconstruction", "Cheff reconstruction")
    _require(df, ["workflow_id", "sr_model", "image", "psnr"], str(files["cheff_reconstruction"]))
    wf = df[df["workflow_id"] == 1].pivot(index="image", columns="sr_model", values="psnr")
    if not {"base", "fine"} <= set(wf.columns):
        raise NotRun("needs workflow 1 with SR_base and SR_fine")
    d = (wf["fine"] - wf["base"]).to_numpy(float)
    d = d[np.isfinite(d)]  # a perfect reconstruction has PSNR inf: no difference defined
    value, lo, hi = paired_bootstrap(lambda idx: float(d[idx[0]].mean()), [np.arange(len(d))], **settings.bootstrap)
    return [Effect(value, lo, hi, f"{len(d)} images", bootstrap_label(settings, "images"))]


def dewilde_sweep_trend(files: Mapping, claim: Mapping, settings: Settings) -> list[Effect]:
    """De Wilde Tables 2/3: FID at the largest minus the smallest setting of one sweep, paired bootstrap over images.

    Reads ``dewilde_sweep`` (the sweep points' ``fid.csv`` files: rows with ``sweep`` and the setting column
    ``claim['setting']``) and each point's ``features.npz`` beside it (``real`` and ``fake`` feature matrices)."""
    points = {}
    for path in files.get("dewilde_sweep") or []:
        frame = _read_csv({"f": path}, "f", "de Wilde sweep point")
        _require(frame, ["sweep", claim["setting"]], str(path))
        for value in frame.loc[frame["sweep"] == claim["sweep"], claim["setting"]]:
            points[value] = Path(path).with_name(SWEEP_FEATURES)
    if len(points) < 2:
        raise NotRun(f"the {claim['sweep']} sweep has {len(points)} setting(s) {sorted(points)}; needs two")
    small, large = min(points), max(points)
    feats = {}
    for name, value in (("small", small), ("large", large)):
        if not points[value].is_file():
            raise InputError(f"{points[value]}: missing sweep-point features; expected the de Wilde sweep's {SWEEP_FEATURES}")
        with np.load(points[value]) as z:
            feats[name] = (z["real"].astype(np.float64), z["fake"].astype(np.float64))
    n_real = min(len(feats["small"][0]), len(feats["large"][0]))
    n_fake = min(len(feats["small"][1]), len(feats["large"][1]))

    def stat(idx):
        r, f = idx
        try:
            return (frechet_distance(feats["large"][0][r], feats["large"][1][f])
                    - frechet_distance(feats["small"][0][r], feats["small"][1][f]))
        except InputError:  # a resample with < 2 images
            return np.nan

    value, lo, hi = paired_bootstrap(stat, [np.arange(n_real), np.arange(n_fake)], **settings.bootstrap)
    return [Effect(value, lo, hi, f"{n_fake} generated vs {n_real} real images per setting",
                   bootstrap_label(settings, "real and generated images"),
                   note=f"{claim['sweep']} {large} vs {small}")]


def dewilde_augmentation(files: Mapping, claim: Mapping, settings: Settings) -> list[Effect]:
    """De Wilde Table 4: per-seed test AUC of real + most synthetic minus real only, paired t interval over seeds."""
    paths = files.get("dewilde_classifier") or []
    if not paths:
        raise NotRun("no de Wilde classifier in this run")
    df = pd.concat([pd.read_csv(p) for p in paths], ignore_index=True)
    _require(df, ["seed", "real_cases", "synthetic_cases", "synthetic_embedding_cases", "test_auc"], "de Wilde classifier CSVs")
    real = int(df["real_cases"].max())
    syn = df[(df["real_cases"] == real) & (df["synthetic_cases"] > 0)]
    if settings.dewilde_cases is not None:
        syn = syn[syn["synthetic_embedding_cases"] == settings.dewilde_cases]
    base = df[(df["real_cases"] == real) & (df["synthetic_cases"] == 0)]
    if syn.empty or base.empty:
        raise NotRun("needs a real-only and a real + synthetic configuration")
    syn = syn[syn["synthetic_cases"] == syn["synthetic_cases"].max()]
    paired = syn.set_index("seed")["test_auc"].to_frame("a").join(base.set_index("seed")["test_auc"].to_frame("b"), how="inner")
    diffs = paired["a"] - paired["b"]
    mean, lo, hi = paired_t_interval(diffs, settings.alpha)
    p = sign_flip_p(diffs)
    note = f"{real} real + {int(syn['synthetic_cases'].iloc[0])} synthetic vs {real} real"
    if len(paired) < 2:
        note += "; a t interval needs >= 2 seeds"
    return [Effect(mean, lo, hi, f"{len(paired)} seeds",
                   f"paired t interval over seeds, {100 * (1 - settings.alpha):g}%; exact sign-flip test p = {p:.3g}",
                   note=note, p_value=p)]


#: evaluator name (``evaluator:`` in findings.yaml) -> function(files, claim, settings) -> [Effect, ...]
EVALUATORS: dict[str, Callable[[Mapping, Mapping, Settings], list[Effect]]] = {
    "vae_auc_change": vae_auc_change,
    "text_encoder_vs_base": text_encoder_vs_base,
    "synthesis_auc_vs_original": synthesis_auc_vs_original,
    "synthesis_auc_best": synthesis_auc_best,
    "zafar_ood_retention": zafar_ood_retention,
    "beta_signal": beta_signal,
    "sr_fine_vs_base": sr_fine_vs_base,
    "dewilde_sweep_trend": dewilde_sweep_trend,
    "dewilde_augmentation": dewilde_augmentation,
}


# ------------------------------------------------------------------------------------------------ claims
def load_claims(path=None) -> list[dict]:
    """The claims of ``findings.yaml`` (default: the reference folder's), checked: every key present, a known evaluator and direction, a margin for
    ``within``, a published value that is a number or null (with a text saying why)."""
    from cxrgen.render.reference import reference_root

    path = Path(path) if path is not None else reference_root() / CLAIMS_FILE
    with open(path) as fh:
        doc = yaml.safe_load(fh) or {}
    claims = doc.get("claims")
    if not isinstance(claims, list) or not claims:
        raise InputError(f"{path}: expected a non-empty 'claims' list")
    for c in claims:
        where = f"{path}: claim {c.get('id', '?')!r}"
        missing = [k for k in CLAIM_KEYS if k not in c]
        if missing:
            raise InputError(f"{where} lacks {missing}; expected keys {list(CLAIM_KEYS)}")
        if c["evaluator"] not in EVALUATORS:
            raise InputError(f"{where}: unknown evaluator {c['evaluator']!r}; expected one of {sorted(EVALUATORS)}")
        if c["direction"] not in DIRECTIONS:
            raise InputError(f"{where}: direction {c['direction']!r}; expected one of {DIRECTIONS}")
        if c["direction"] == "within" and not isinstance(c.get("margin"), (int, float)):
            raise InputError(f"{where}: direction 'within' needs a numeric margin")
        pub = c["published"] or {}
        if pub.get("value") is not None and not isinstance(pub["value"], (int, float)):
            raise InputError(f"{where}: published value {pub['value']!r}; expected a number or null")
        if not pub.get("text"):
            raise InputError(f"{where}: published needs a text (the cells or figure the value comes from)")
    return claims


def published_from_reference(derivation: Mapping, root=None) -> float:
    """Recompute a published effect ``a - b`` from the transcribed tables (``derivation`` of findings.yaml):
    each side selects a ``row`` (column -> value; none = every row) and a ``column``; ``reduce: mean`` averages
    the row-wise differences, ``reduce: max_of_others`` on side b takes the maximum over the rows other than a's."""
    from cxrgen.render.reference import load_reference

    paper, table = derivation["reference"].split("/")
    frame, _ = load_reference(paper, table, root)

    def rows(sel):
        mask = np.ones(len(frame), dtype=bool)
        for k, v in (sel.get("row") or {}).items():
            numeric = isinstance(v, (int, float)) and pd.api.types.is_numeric_dtype(frame[k])
            mask &= (frame[k] == v).to_numpy() if numeric else (frame[k].astype(str) == str(v)).to_numpy()
        return mask

    a, b = derivation["a"], derivation["b"]
    a_rows = rows(a)
    if derivation.get("reduce") == "mean":
        return float((frame.loc[a_rows, a["column"]] - frame.loc[rows(b), b["column"]]).mean())
    if a_rows.sum() != 1:
        raise InputError(f"{derivation['reference']}: {int(a_rows.sum())} rows match {a.get('row')}; expected one")
    value_a = float(frame.loc[a_rows, a["column"]].iloc[0])
    if b.get("reduce") == "max_of_others":
        return value_a - float(frame.loc[~a_rows, b["column"]].max())
    b_rows = rows(b)
    if b_rows.sum() != 1:
        raise InputError(f"{derivation['reference']}: {int(b_rows.sum())} rows match {b.get('row')}; expected one")
    return value_a - float(frame.loc[b_rows, b["column"]].iloc[0])


def _where(claim: Mapping) -> str:
    table = claim.get("table")
    return f"Table {table}; {claim['section']}" if table is not None else str(claim["section"])


def evaluate_claims(claims: Sequence[Mapping], files: Mapping, settings: Settings) -> pd.DataFrame:
    """One row per claim (several where a claim has scopes, e.g. one per corpus) with this run's effect, interval
    and verdict; see :data:`COLUMNS`."""
    rows = []
    for claim in claims:
        base = {"claim": claim["claim"], "paper": claim["paper"], "where": _where(claim), "effect": claim["effect"],
                "paper effect": claim["published"].get("value"), "scope": ""}
        if claim["direction"] == "within":
            base["effect"] += f" (claim: |effect| < {claim['margin']})"
        try:
            if settings.studies is not None and claim["paper"] not in settings.studies:
                raise NotRun(f"config studies {list(settings.studies)} do not select {claim['paper']}")
            effects = EVALUATORS[claim["evaluator"]](files, claim, settings)
        except NotRun as why:
            rows.append({**base, "this run": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n": "", "interval": "",
                         "verdict": NOT_RUN, "note": str(why)})
            continue
        for e in effects:
            rows.append({**base, "scope": e.scope, "this run": e.value, "ci_low": e.ci_low, "ci_high": e.ci_high,
                         "n": e.n, "interval": e.interval,
                         "verdict": verdict(e, claim["direction"], claim.get("margin"), settings.alpha),
                         "note": e.note})
        log.info("%s: %s", claim["id"], [r["verdict"] for r in rows[-len(effects):]] if effects else "no effect")
    return pd.DataFrame(rows, columns=COLUMNS)


def write_findings(frame: pd.DataFrame, out_stem, scale: str, n_boot: int) -> dict:
    """``findings.{csv,md,tex}``: the claims, the paper's effect, this run's with its interval, and the verdict."""
    from cxrgen.render.tables import write_table

    caption = (
        "Findings: each directional claim of the four papers that this workflow can test (reference/findings.yaml, "
        "cited by table and section), the paper's effect as published (empty where the paper shows it in a figure "
        "only), this run's effect with a 95% interval (paired bootstrap over images, reports or seeds with "
        f"{n_boot} seeded resamples, or a paired t interval over seeds) and the verdict: reproduced (interval on the "
        "paper's side of the null), contradicted (on the other side), inconclusive at this n (interval covers the "
        "null), not run (this config does not run the comparison). This run's effects are measured on this run's "
        "data and models, never the papers' numbers; the paper column is the published effect for comparison of "
        "direction, not of size"
    )
    return write_table(frame, out_stem, caption, scale, float_format=".4g")
