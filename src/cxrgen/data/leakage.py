"""Train/evaluation leakage: every evaluation set must be patient-disjoint from every training set it is compared with.

Two levels, both driven by the merged workflow config:

* **When the DAG is built** (:func:`check_config`, called from ``rules/common.smk``): :func:`workflow_pairs` lists every
  (training sample, evaluation sample, purpose) pair the workflow builds, :func:`sample_parts` resolves each sample to
  the (dataset, split) parts it draws from, and a pair sharing a part stops the run. The dataset's splits are
  patient-disjoint by construction (``cxrgen.data.sampling.patient_split`` hashes the patient id), so split-disjoint
  samples are patient-disjoint: the check needs no table and no image.
* **At run time** (:func:`check_manifests`): a rule that reads both samples compares their manifests' ``patient_id``.

A paper that overlaps on purpose lists the pair under ``allow_overlap`` with a reason; the reason then goes into the
captions of the tables the pair feeds (:func:`caption_notes`).

Torch-free: imported by the Snakefile when the workflow is parsed.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from cxrgen.errors import InputError

#: few-shot (fine-tuning) samples draw from these splits unless the sample names its own
FEW_SHOT_DEFAULT_SPLITS = ("train",)
#: the MaCheX parts of the Cheff study (not entries of ``samples``; named so in errors and ``allow_overlap``)
MACHEX_TRAIN, MACHEX_TEST = "machex:train", "machex:test"
#: the split MaCheX holds out when it is built from the workflow's own dataset (its other splits train the cascade)
MACHEX_TEST_SPLIT = "test"


def sample_splits(spec: dict, all_splits) -> tuple[str, ...]:
    """The splits a configured sample (``samples.<name>``) draws from.

    ``splits`` (a list) or ``split`` if given; otherwise few-shot samples the train split, every other selector
    every split. A split name missing from ``data.splits`` is an error.
    """
    all_splits = tuple(all_splits)
    if spec.get("splits") is not None:
        chosen = tuple(spec["splits"])
    elif spec.get("split") is not None:
        chosen = (spec["split"],)
    elif spec.get("select") == "few_shot":
        chosen = FEW_SHOT_DEFAULT_SPLITS
    else:
        chosen = all_splits
    unknown = [s for s in chosen if s not in all_splits]
    if unknown or not chosen:
        raise InputError(f"sample split(s) {list(chosen)} of {spec}; expected a non-empty subset of data.splits {list(all_splits)}")
    return chosen


@dataclass(frozen=True)
class Pair:
    """One training set and one evaluation set the workflow compares, with the config keys that name them."""

    trains: str
    trains_key: str
    evaluates: str
    evaluates_key: str
    purpose: str
    tables: tuple[str, ...] = ()  # table stems (results/tables/<stem>.md) whose numbers the pair feeds


def same_dataset_root(a, b) -> bool:
    """Do two dataset roots name the same folder (so the same patients)?"""
    return Path(str(a)).expanduser().resolve() == Path(str(b)).expanduser().resolve()


def machex_sources_share_workflow_split(config: dict) -> list[bool]:
    """Per MaCheX source of the Cheff study: is it the workflow's own dataset (so it takes the workflow's split)?

    No configured source means the workflow's dataset is the only one.
    """
    sources = (config.get("cheff", {}).get("machex") or {}).get("sources") or []
    if not sources:
        return [True]
    return [same_dataset_root(s["root"], config["data"]["root"]) for s in sources]


def sample_parts(config: dict, name: str) -> frozenset[tuple[str, str]]:
    """The (dataset, split) parts a sample draws from; two samples without a common part share no patient."""
    data = config["data"]
    dataset, splits = data["name"], tuple(data["splits"])
    if name in (MACHEX_TRAIN, MACHEX_TEST):
        sources = (config.get("cheff", {}).get("machex") or {}).get("sources") or [{"root": data["root"]}]
        parts = set()
        for src, own in zip(sources, machex_sources_share_workflow_split(config)):
            if own:  # the workflow's patient split: its test split is MaCheX's test, the rest trains the cascade
                held = {MACHEX_TEST_SPLIT}
                parts |= {(dataset, s) for s in (held if name == MACHEX_TEST else set(splits) - held)}
            else:  # another dataset (other patients), split by its own designated subsets
                parts.add((f"machex source {src['root']}", name.split(":")[1]))
        return frozenset(parts)
    if name not in config["samples"]:
        raise InputError(f"{name!r} is not a configured sample; expected one of {sorted(config['samples'])}")
    return frozenset((dataset, s) for s in sample_splits(config["samples"][name], splits))


def workflow_pairs(config: dict) -> list[Pair]:
    """Every (training sample, evaluation sample) pair the workflow builds, read off rules/*.smk."""
    pairs: list[Pair] = []

    def add(trains, trains_key, evaluates, evaluates_key, purpose, tables=()):
        pairs.append(Pair(trains, trains_key, evaluates, evaluates_key, purpose, tuple(tables)))

    syn, rc, vae = config["synthesis"], config["reference_classifier"], config["vae_study"]
    real, real_key = syn["real_sample"], "synthesis.real_sample"
    cheff_tables = ("weber2023_synthesis_comparison",)

    # the reference classifier, when trained here, scores or featurises real sets
    if rc["model"] == "train":
        train, train_key = rc["train_sample"], "reference_classifier.train_sample"
        val, val_key = rc["val_sample"], "reference_classifier.val_sample"
        add(train, train_key, val, val_key, "reference classifier: best epoch and thresholds chosen on the validation sample")
        add(train, train_key, rc["test_sample"], "reference_classifier.test_sample", "reference classifier: test metrics")
        add(val, val_key, rc["test_sample"], "reference_classifier.test_sample", "reference classifier: thresholds chosen on the validation sample, applied to the test sample")
        vae_tables = ("chambon2022_table1", "chambon2022_vae_summary")
        add(train, train_key, vae["sample"], "vae_study.sample", "Chambon Table 1: the classifier scores originals and reconstructions", tables=vae_tables)
        add(val, val_key, vae["sample"], "vae_study.sample", "Chambon Table 1: accuracy/F1 at thresholds chosen on the validation sample", tables=vae_tables)
        add(train, train_key, real, real_key, "Chambon Table 4 FID, memorization calibration, Cheff comparison: classifier features of the real set",
            tables=("chambon2022_table4", "privacy_memorization", *cheff_tables))
        add(train, train_key, config["zafar"]["real_sample"], "zafar.real_sample", "Zafar FID: classifier features of the real set", tables=("zafar2023_methods",))
        dw_sweep = config["dewilde"]["sweep"]
        if dw_sweep["fid_extractor"] == "reference":
            add(train, train_key, dw_sweep["real_sample"], "dewilde.sweep.real_sample", "de Wilde Tables 1-3 FID: classifier features of the real set",
                tables=("dewilde2023_table1", "dewilde2023_table2", "dewilde2023_table3"))
        cheff_eval = config.get("cheff", {}).get("evaluation") or {}
        if cheff_eval.get("fid_extractor", "inception" if config.get("cheff", {}).get("preset") == "paper" else "reference") == "reference":
            add(train, train_key, MACHEX_TEST, "cheff.machex", "Weber FID/KID: classifier features of MaCheX test images", tables=("weber2023_fid_kid",))

    # Chambon adaptation: few-shot fine-tuning samples vs the real set of Table 4, memorization, the Cheff comparison
    adaptation = config["adaptation"]
    for m in adaptation["methods"]:
        if m["method"] in ("textual_inversion", "unet"):
            key = f"adaptation.methods[{m['name']}].sample" if "sample" in m else "adaptation.sample"
            add(m.get("sample", adaptation["sample"]), key, real, real_key,
                f"Chambon Table 4 FID and Cheff comparison: real images vs {m['name']}'s fine-tuning images",
                tables=("chambon2022_table4", *cheff_tables))
    add(adaptation["sample"], "adaptation.sample", real, real_key,
        "memorization: calibration images of other patients vs the fine-tuning images", tables=("privacy_memorization",))

    # Zafar: the methods' training samples vs the FID real set and the Cheff comparison's real set
    zafar = config["zafar"]
    for m in zafar["methods"]:
        sample = m.get("sample", zafar["train_sample"])
        key = f"zafar.methods[{m['name']}].sample" if "sample" in m else "zafar.train_sample"
        add(sample, key, zafar["real_sample"], "zafar.real_sample", f"Zafar FID: real test rows vs {m['name']}'s training images", tables=("zafar2023_methods",))
        add(sample, key, real, real_key, f"Cheff comparison: real set vs Zafar {m['name']}'s training images", tables=cheff_tables)
    add(zafar["train_sample"], "zafar.train_sample", zafar["val_sample"], "zafar.val_sample", "Zafar attribute classifier: validation AUC")

    # de Wilde: the embeddings' (and Table 4 classifier's) training images vs the sweep's real set and Table 4 val/test
    dw = config["dewilde"]
    add(dw["sample"], "dewilde.sample", dw["sweep"]["real_sample"], "dewilde.sweep.real_sample",
        "de Wilde Tables 1-3 FID: real images vs the embeddings' training images",
        tables=("dewilde2023_table1", "dewilde2023_table2", "dewilde2023_table3"))
    for part in ("val_sample", "test_sample"):
        add(dw["sample"], "dewilde.sample", dw["classifier"][part], f"dewilde.classifier.{part}",
            f"de Wilde Table 4: ResNet-18 {'checkpoint selection' if part == 'val_sample' else 'test AUC'} vs its real training images",
            tables=("dewilde2023_table4",))

    # Cheff: the cascade trains on MaCheX train; its test part and the comparison's real set evaluate it
    add(MACHEX_TRAIN, "cheff.machex", MACHEX_TEST, "cheff.machex", "Weber Table 2 and FID/KID: MaCheX test vs train",
        tables=("weber2023_table2", "weber2023_fid_kid"))
    add(MACHEX_TRAIN, "cheff.machex", real, real_key, "Cheff comparison: real set vs the cascade's MaCheX training images", tables=cheff_tables)
    return pairs


class LeakageError(InputError):
    """A training and an evaluation sample share patients without an ``allow_overlap`` entry."""


def allowed_overlaps(config: dict) -> dict[frozenset, str]:
    """``allow_overlap`` as {frozenset({trains, evaluates}): reason}; entries must name known samples."""
    known = set(config["samples"]) | {MACHEX_TRAIN, MACHEX_TEST}
    out = {}
    for i, entry in enumerate(config.get("allow_overlap") or []):
        names = [entry.get("trains"), entry.get("evaluates")]
        reason = str(entry.get("reason") or "").strip()
        bad = [n for n in names if n not in known]
        if bad or not reason:
            raise InputError(f"config allow_overlap[{i}]={entry}: {'unknown sample(s) ' + str(bad) if bad else 'empty reason'}; "
                             f"expected trains/evaluates among {sorted(known)} and a non-empty reason")
        out[frozenset(names)] = reason
    return out


def _describe(config: dict, name: str) -> str:
    return ", ".join(f"{d}:{s}" for d, s in sorted(sample_parts(config, name)))


def check_config(config: dict) -> list[tuple[Pair, str]]:
    """Raise :class:`LeakageError` naming every leaking pair; return the allowed overlaps as (pair, reason)."""
    allowed = allowed_overlaps(config)
    leaks, overlaps, seen = [], [], set()
    for p in workflow_pairs(config):
        shared = sample_parts(config, p.trains) & sample_parts(config, p.evaluates)
        if not shared or (p.trains, p.evaluates, p.purpose) in seen:
            continue
        seen.add((p.trains, p.evaluates, p.purpose))
        reason = allowed.get(frozenset((p.trains, p.evaluates)))
        if reason is not None:
            overlaps.append((p, reason))
            continue
        splits = sorted(f"{d}:{s}" for d, s in shared)
        leaks.append(f"- {p.purpose}: training sample {p.trains!r} ({p.trains_key}; draws from {_describe(config, p.trains)}) "
                     f"and evaluation sample {p.evaluates!r} ({p.evaluates_key}; draws from {_describe(config, p.evaluates)}) "
                     f"share split(s) {splits}")
    if leaks:
        raise LeakageError(
            f"{len(leaks)} training/evaluation pair(s) of this config may share patients:\n" + "\n".join(leaks) +
            "\nExpected every evaluation sample to draw from splits its training sample does not use: give the "
            "samples disjoint `split:`/`splits:` (samples.<name>; few-shot samples default to the train split), point "
            "the evaluation key at a held-out sample (e.g. test), or, where a paper overlaps on purpose, add "
            "`allow_overlap: [{trains: <sample>, evaluates: <sample>, reason: ...}]` (the reason is printed in the "
            "affected tables' captions)."
        )
    return overlaps


def caption_notes(config: dict) -> dict[str, list[str]]:
    """{table stem: caption sentences} stating each allowed overlap the table's numbers rest on."""
    notes: dict[str, list[str]] = {}
    for p, reason in check_config(config):
        text = f"Overlap allowed by the config: {p.evaluates!r} shares patients with training sample {p.trains!r} ({reason})."
        for stem in p.tables:
            if text not in notes.setdefault(stem, []):
                notes[stem].append(text)
    return notes


def check_manifests(trains_manifest: pd.DataFrame, evaluates_manifest: pd.DataFrame, trains: str, evaluates: str,
                    purpose: str, allowed_reason: str | None = None) -> set[str]:
    """Run-time check: raise :class:`LeakageError` naming the shared patients unless the overlap is allowed.

    Returns the shared patient ids (empty when disjoint, or the allowed overlap).
    """
    for name, manifest in ((trains, trains_manifest), (evaluates, evaluates_manifest)):
        if "patient_id" not in manifest.columns:
            raise InputError(f"manifest of {name!r} has no patient_id column; expected a sample written by cxrgen.data.sampling.materialise")
    shared = set(trains_manifest["patient_id"].astype(str)) & set(evaluates_manifest["patient_id"].astype(str))
    if shared and allowed_reason is None:
        raise LeakageError(
            f"{purpose}: {len(shared)} patient(s) of evaluation sample {evaluates!r} are also in training sample {trains!r}, "
            f"e.g. {sorted(shared)[:5]}; expected patient-disjoint samples (disjoint splits), or an allow_overlap entry "
            "with a reason"
        )
    return shared


def _patients(path, rows=()) -> pd.DataFrame:
    """``patient_id`` of a sample folder's manifest, or of the rows of a table CSV where every ``rows`` column is true."""
    path = Path(path)
    csv = path / "manifest.csv" if path.is_dir() else path
    if not csv.is_file():
        raise InputError(f"{csv} missing; expected a sample folder with manifest.csv or a table CSV")
    frame = pd.read_csv(csv, dtype={"patient_id": str}, usecols=lambda c: c in ("patient_id", *rows))
    return frame[frame[list(rows)].astype(bool).all(axis=1)] if rows else frame


def check_sample_dirs(checks: list[dict]) -> None:
    """:func:`check_manifests` over ``[{trains, trains_dir, evaluates, evaluates_dir, purpose, allowed_reason}]``
    (built by ``manifest_checks`` in rules/common.smk); reads patient ids only. ``trains_dir`` may be a table CSV
    (MaCheX's table.csv) whose training rows are those where every ``trains_rows`` column is true."""
    for c in checks:
        check_manifests(_patients(c["trains_dir"], c.get("trains_rows", ())), _patients(c["evaluates_dir"]),
                        c["trains"], c["evaluates"], c["purpose"], c.get("allowed_reason"))


__all__ = ["FEW_SHOT_DEFAULT_SPLITS", "MACHEX_TRAIN", "MACHEX_TEST", "Pair", "LeakageError", "sample_splits",
           "sample_parts", "workflow_pairs", "allowed_overlaps", "check_config", "caption_notes", "check_manifests",
           "check_sample_dirs", "machex_sources_share_workflow_split", "same_dataset_root"]
