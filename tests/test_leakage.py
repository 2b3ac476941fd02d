"""Leakage-free by construction (issue 17): every evaluation sample of every shipped config is split- (so patient-)
disjoint from the training samples it is compared with; a leaking config is refused when the workflow is parsed;
allow_overlap with a reason lets a run through and puts the reason in the captions; the run-time manifest check
catches shared patients."""

import copy
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from snakemake.utils import validate
from test_configs import REPO, SCHEMA, merged
from test_workflow import failed_dry_run, run_snakemake, workdir  # noqa: F401 (workdir is a fixture)

from cxrgen.data import leakage
from cxrgen.data.sampling import patient_split, select_sample
from cxrgen.errors import InputError

SHIPPED = [REPO / "config.yaml", *sorted((REPO / "configs").glob("*.yaml"))]
SPLITS = {"train": 0.7, "validate": 0.15, "test": 0.15}


@pytest.mark.parametrize("config_file", SHIPPED, ids=lambda p: p.name)
def test_every_shipped_config_is_leak_free(config_file):
    config = merged(config_file)
    assert leakage.check_config(config) == []  # no leak, and none of them needs an allowed overlap
    pairs = leakage.workflow_pairs(config)
    for p in pairs:
        assert not leakage.sample_parts(config, p.trains) & leakage.sample_parts(config, p.evaluates), p
    # the pairs the issue names are among those checked
    named = {(p.trains_key, p.evaluates_key) for p in pairs}
    for pair in [("adaptation.sample", "synthesis.real_sample"), ("dewilde.sample", "dewilde.sweep.real_sample"),
                 ("dewilde.sample", "dewilde.classifier.test_sample"), ("zafar.train_sample", "zafar.real_sample"),
                 ("cheff.machex", "synthesis.real_sample"), ("cheff.machex", "cheff.machex")]:
        assert pair in named, pair
    if config["reference_classifier"]["model"] == "train":
        assert ("reference_classifier.train_sample", "vae_study.sample") in named


def test_sample_splits_default_and_bad_names():
    assert leakage.sample_splits({"select": "few_shot"}, SPLITS) == ("train",)
    assert leakage.sample_splits({"select": "frontal_with_reports"}, SPLITS) == ("train", "validate", "test")
    assert leakage.sample_splits({"select": "few_shot", "splits": ["validate", "test"]}, SPLITS) == ("validate", "test")
    assert leakage.sample_splits({"select": "split", "split": "test"}, SPLITS) == ("test",)
    with pytest.raises(InputError, match="holdout"):
        leakage.sample_splits({"select": "split", "split": "holdout"}, SPLITS)


def _table(n_patients=60):
    rows = []
    for p in range(n_patients):
        for s in range(2):
            label = "Pleural Effusion" if p % 3 == 0 else "No Finding"
            rows.append({"image_id": f"i{p}_{s}", "patient_id": f"p{p}", "view": "PA", "impression": "x", "findings": "",
                         **{c: 0.0 for c in ("No Finding", "Pleural Effusion", "Atelectasis", "Cardiomegaly", "Consolidation",
                                             "Edema", "Enlarged Cardiomediastinum", "Fracture", "Lung Lesion", "Lung Opacity",
                                             "Pleural Other", "Pneumonia", "Pneumothorax", "Support Devices")},
                         label: 1.0})
    table = pd.DataFrame(rows)
    table["split"] = patient_split(table, SPLITS, seed=0)
    return table


def test_samples_draw_from_their_splits_only():
    table = _table()
    few = select_sample(table, {"select": "few_shot", "classes": ["No Finding", "Pleural Effusion"], "n_per_class": 3}, 0, SPLITS)
    assert set(few["split"]) == {"train"}  # few-shot default: the train split
    held = select_sample(table, {"select": "frontal_with_reports", "n": 10, "splits": ["validate", "test"]}, 0, SPLITS)
    assert set(held["split"]) <= {"validate", "test"} and not set(held["patient_id"]) & set(few["patient_id"])
    with pytest.raises(InputError, match=r"split\(s\) \['test'\]"):  # too few images says where they were drawn from
        select_sample(table, {"select": "frontal_with_reports", "n": 1000, "split": "test"}, 0, SPLITS)


def _leaking_config():
    config = merged(REPO / "config.yaml")
    config["synthesis"]["real_sample"] = "train"  # the fine-tuning sample's own split
    return config


def test_leaking_config_names_both_samples_split_and_purpose():
    with pytest.raises(leakage.LeakageError) as err:
        leakage.check_config(_leaking_config())
    msg = str(err.value)
    assert "'fewshot_chambon'" in msg and "adaptation.sample" in msg and "synthesis.real_sample" in msg
    assert "phantom:train" in msg and "Chambon Table 4" in msg and "allow_overlap" in msg


def test_allowed_overlap_is_returned_with_its_reason_and_must_name_samples():
    config = _leaking_config()
    config["allow_overlap"] = [{"trains": "fewshot_chambon", "evaluates": "train", "reason": "as in the paper"},
                               {"trains": "train", "evaluates": "train", "reason": "classifier features"},
                               {"trains": "machex:train", "evaluates": "train", "reason": "cascade"}]
    overlaps = leakage.check_config(config)
    assert {(p.trains, p.evaluates) for p, _ in overlaps} == {("fewshot_chambon", "train"), ("train", "train"), ("machex:train", "train")}
    notes = leakage.caption_notes(config)
    assert any("as in the paper" in n for n in notes["chambon2022_table4"])
    config["allow_overlap"] = [{"trains": "fewshot_chambon", "evaluates": "nosuchsample", "reason": "x"}]
    with pytest.raises(InputError, match="nosuchsample"):
        leakage.check_config(config)
    bad = yaml.safe_load((REPO / "config.yaml").read_text())
    bad["allow_overlap"] = [{"trains": "train", "evaluates": "test", "reason": " "}]
    with pytest.raises(Exception, match="reason"):
        validate(bad, schema=SCHEMA)


def test_allowed_overlap_reason_reaches_the_table_caption(tmp_path):
    from cxrgen.render.tables import write_table
    from cxrgen.workflow import script_context

    config = _leaking_config()
    config["allow_overlap"] = [{"trains": "fewshot_chambon", "evaluates": "train", "reason": "deliberate, see paper 2.8"},
                               {"trains": "train", "evaluates": "train", "reason": "same classifier features"},
                               {"trains": "machex:train", "evaluates": "train", "reason": "cascade"}]
    smk = SimpleNamespace(log=[], threads=1, config=config, rule="render_synthesis", params=SimpleNamespace())
    frame = pd.DataFrame({"method": ["a"], "fid": [1.0]})
    with script_context(smk):
        paths = write_table(frame, tmp_path / "chambon2022_table4", "FID per method", "miniature")
        other = write_table(frame, tmp_path / "zafar2023_prompts", "prompts", "miniature")
    assert "deliberate, see paper 2.8" in paths["md"].read_text()
    assert "deliberate" not in other["md"].read_text()
    after = write_table(frame, tmp_path / "later" / "chambon2022_table4", "FID per method", "miniature")
    assert "deliberate" not in after["md"].read_text()  # the notes belong to the rule's context only


def _sample_dir(root: Path, name: str, patients) -> Path:
    folder = root / name
    folder.mkdir()
    pd.DataFrame({"image_id": [f"{name}{i}" for i in range(len(patients))], "patient_id": patients}).to_csv(folder / "manifest.csv", index=False)
    return folder


def test_run_time_manifest_check_raises_on_shared_patients(tmp_path):
    train = _sample_dir(tmp_path, "fewshot", ["p1", "p2", "p3"])
    real = _sample_dir(tmp_path, "test", ["p3", "p9"])
    clean = _sample_dir(tmp_path, "heldout", ["p8", "p9"])
    check = {"trains": "fewshot", "trains_dir": train, "evaluates": "test", "evaluates_dir": real, "purpose": "Table 4 FID"}
    with pytest.raises(leakage.LeakageError, match=r"Table 4 FID: 1 patient.*'test'.*'fewshot'.*p3"):
        leakage.check_sample_dirs([check])
    leakage.check_sample_dirs([{**check, "evaluates": "heldout", "evaluates_dir": clean}])
    leakage.check_sample_dirs([{**check, "allowed_reason": "deliberate"}])
    # MaCheX: only its training rows of the workflow's own dataset count (another source's "p9" is another patient)
    table = tmp_path / "machex_table.csv"
    pd.DataFrame({"patient_id": ["p9", "p9", "p5"], "in_machex": [True, False, True],
                  "workflow_dataset": [False, True, True]}).to_csv(table, index=False)
    machex = {**check, "trains": "machex:train", "trains_dir": table, "trains_rows": ["in_machex", "workflow_dataset"]}
    leakage.check_sample_dirs([machex])
    with pytest.raises(leakage.LeakageError, match="p9"):
        leakage.check_sample_dirs([{**machex, "trains_rows": ["workflow_dataset"]}])
    # script_context runs a rule's params.leakage before the rule's code
    from cxrgen.workflow import script_context

    smk = SimpleNamespace(log=[], threads=1, config={"seed": 0}, rule="evaluate_synthesis", params={"leakage": [check]})
    with pytest.raises(leakage.LeakageError, match="p3"):
        with script_context(smk):
            pytest.fail("the rule body ran despite the overlap")


def test_machex_from_the_workflow_dataset_holds_out_its_test_split(monkeypatch):
    from cxrgen.cheff import machex
    from cxrgen.cheff.config import MaCheXConfig

    table = _table().drop(columns="split").assign(split="train")  # the source's own split: all train
    monkeypatch.setattr(machex, "load_dataset", lambda adapter, root, **kw: table.copy())
    data = {"name": "phantom", "source": "phantom", "root": "data/x", "splits": SPLITS}
    built = machex.build_machex(MaCheXConfig.preset("default").resolve_sources(data), seed=0)
    workflow_test = set(table["patient_id"][patient_split(table, SPLITS, seed=0) == "test"])
    assert set(built["patient_id"][built["in_test"]]) == workflow_test
    assert not set(built["patient_id"][built["in_machex"]]) & workflow_test
    # a configured source at the workflow dataset's root is split the same way; another root keeps its own split
    sources = [{"adapter": "mimic", "root": "data/x"}, {"adapter": "nih", "root": "/elsewhere"}]
    resolved = MaCheXConfig.preset("default", sources=copy.deepcopy(sources)).resolve_sources(data)
    assert resolved[0]["workflow_splits"] == SPLITS and "workflow_splits" not in resolved[1]


@pytest.mark.slow
def test_dry_run_refuses_a_leaking_config_and_accepts_an_allowed_one(workdir):  # noqa: F811
    out = failed_dry_run(workdir, "leak.yaml", "dewilde:\n  sweep:\n    real_sample: train\n")
    assert "leakage" in out and "'fewshot_dewilde'" in out and "dewilde.sweep.real_sample" in out and "phantom:train" in out
    allowed = workdir / "allowed.yaml"
    allowed.write_text("dewilde:\n  sweep:\n    real_sample: train\nallow_overlap:\n"
                       "  - {trains: fewshot_dewilde, evaluates: train, reason: test of a deliberate overlap}\n"
                       "  - {trains: train, evaluates: train, reason: classifier features}\n")
    run_snakemake("-n", "--quiet", "rules", "--configfile", str(allowed), cwd=workdir)
