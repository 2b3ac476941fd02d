"""Generation from adapted pipelines (adapter.json contract) and the synthetic-image study (Chambon Tables 4, 5;
Figs. 1, 4, 5). One tiny 32 px foundation per module; adapters are written by hand."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pandas as pd
import pytest
import torch

from cxrgen.adapt.pipeline import TI_PHRASE, load_adapted_pipeline, read_adapter, set_scheduler, substitute_token
from cxrgen.classify.reference import ReferenceClassifier
from cxrgen.data.prompts import CHAMBON_PROMPTS
from cxrgen.data.sampling import load_images
from cxrgen.errors import InputError
from cxrgen.models.foundation import FoundationConfig, build_foundation
from cxrgen.sampling.synthetic_sets import MANIFEST_COLUMNS, generate_set
from cxrgen.studies.synthesis import (
    TABLE4_COLUMNS,
    TABLE5_COLUMNS,
    classification_table,
    classifier_scores,
    default_paper_rows,
    fid_table,
    paper_rows,
    render_synthesis,
    run_synthesis_evaluation,
)
from threads import TEST_THREADS

SIZE, STEPS, TOKEN = 32, 2, "<lung-xray>"
GEN = dict(steps=STEPS, guidance=3.0, height=SIZE, progress=False)


@pytest.fixture(scope="module")
def foundation(tmp_path_factory):
    torch.set_num_threads(TEST_THREADS)
    out = tmp_path_factory.mktemp("synthesis") / "foundation"
    cfg = FoundationConfig.preset("smoke", image_size=SIZE, n_images=32, vae_steps=2, unet_steps=2, vae_crop=0,
                                  checkpoint_every=1000, preview_per_prompt=0)
    build_foundation(cfg, out, progress=False)
    return out


@pytest.fixture(scope="module")
def baseline(foundation):
    return load_adapted_pipeline(foundation)


def _write_adapter(folder, **fields):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter.json").write_text(json.dumps(fields))
    return folder


@pytest.fixture(scope="module")
def ti_dir(foundation, baseline, tmp_path_factory):
    from safetensors.torch import save_file

    folder = _write_adapter(tmp_path_factory.mktemp("ti") / "ti_object_radiology", method="textual_inversion",
                            foundation=str(foundation), token=TOKEN, num_vectors=1, template="a photo of a {}",
                            initializer="xray")
    dim = baseline.pipe.text_encoder.get_input_embeddings().weight.shape[1]
    vec = torch.randn(dim, generator=torch.Generator().manual_seed(0)) * 3.0
    save_file({TOKEN: vec}, str(folder / "learned_embeds.safetensors"))
    return folder


@pytest.fixture(scope="module")
def unet_dir(foundation, baseline, tmp_path_factory):
    from diffusers import UNet2DConditionModel

    folder = _write_adapter(tmp_path_factory.mktemp("unet") / "unet_prior", method="unet", foundation=str(foundation))
    unet = UNet2DConditionModel.from_pretrained(foundation / "unet")
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in unet.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    unet.save_pretrained(folder / "unet")
    return folder


class _TinyNet(torch.nn.Module):
    def __init__(self, n_labels):
        super().__init__()
        torch.manual_seed(0)
        self.features = torch.nn.Sequential(torch.nn.Conv2d(1, 8, 3, stride=2), torch.nn.ReLU(),
                                            torch.nn.Conv2d(8, 16, 3, stride=2))
        self.classifier = torch.nn.Linear(16, n_labels)


@pytest.fixture(scope="module")
def classifier():
    labels = ["No Finding", "Pleural Effusion"]
    return ReferenceClassifier(_TinyNet(2), labels, {l: 0.5 for l in labels}, image_size=SIZE, source="tests/tiny")


@pytest.fixture(scope="module")
def sets(baseline, ti_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("sets")
    out = {}
    for name, pipe in (("baseline", baseline), ("ti_object_radiology", load_adapted_pipeline(None, ti_dir))):
        generate_set(pipe, CHAMBON_PROMPTS, 3, seed=10, out_dir=root / name, batch_size=4, method=name, **GEN)
        out[name] = root / name
    return out


# ------------------------------------------------------------------------------------------------ generation
def test_generation_is_deterministic_per_seed_and_batch_independent(baseline):
    a = baseline.generate("a photo of a lung xray", 3, seed=5, batch_size=3, **GEN)
    b = baseline.generate("a photo of a lung xray", 3, seed=5, batch_size=2, **GEN)
    c = baseline.generate("a photo of a lung xray", 2, seed=6, batch_size=2, steps=STEPS, guidance=3.0, progress=False)
    assert a.shape == (3, SIZE, SIZE) and a.dtype == np.uint8
    assert np.abs(a.astype(int) - b).max() <= 1  # batched kernels may round differently
    assert np.abs(a[1:].astype(int) - c).max() <= 1  # image i is seeded seed + i
    assert np.abs(a[0].astype(int) - a[1]).mean() > 1  # different seeds, different images
    assert baseline.method == "none" and baseline.scheduler_name == "DDIMScheduler" and baseline.default_size() == SIZE


def test_textual_inversion_adapter_loads_and_changes_output(baseline, ti_dir):
    ti = load_adapted_pipeline(None, ti_dir)  # foundation taken from adapter.json
    assert ti.method == "textual_inversion" and ti.token == TOKEN
    assert TOKEN in ti.pipe.tokenizer.get_vocab()
    assert ti.prompt_text(CHAMBON_PROMPTS["normal"]) == f"a photo of a {TOKEN}"
    assert ti.prompt_text(CHAMBON_PROMPTS["effusion"]) == f"a photo of a {TOKEN} with a visible pleural effusion"
    assert ti.prompt_text(CHAMBON_PROMPTS["style"]) == f"a photo in the style of a {TOKEN}"
    assert ti.prompt_text(f"{TOKEN} with cardiomegaly") == f"{TOKEN} with cardiomegaly"
    assert substitute_token("A photo of a Lung Xray", "<t>") == "A photo of a <t>"
    assert substitute_token("a photo of a house", "<t>") == "a photo of a house"
    assert TI_PHRASE == "lung xray"
    a = baseline.generate(CHAMBON_PROMPTS["normal"], 2, seed=0, batch_size=2, **GEN)
    b = ti.generate(CHAMBON_PROMPTS["normal"], 2, seed=0, batch_size=2, **GEN)
    assert np.abs(a.astype(int) - b).mean() > 0.5


def test_unet_adapter_loads(foundation, baseline, unet_dir):
    un = load_adapted_pipeline(foundation, unet_dir)
    assert un.method == "unet" and un.scheduler_name == "DDIMScheduler"
    p0 = next(baseline.pipe.unet.parameters())
    p1 = next(un.pipe.unet.parameters())
    assert not torch.allclose(p0, p1)
    a = baseline.generate(CHAMBON_PROMPTS["normal"], 2, seed=0, batch_size=2, **GEN)
    b = un.generate(CHAMBON_PROMPTS["normal"], 2, seed=0, batch_size=2, **GEN)
    assert np.abs(a.astype(int) - b).mean() > 0.5
    # a named sampler replaces the foundation's DDIM, keeping its training config (v-prediction, zero SNR)
    assert set_scheduler(un.pipe, "euler") == "EulerDiscreteScheduler"
    assert un.pipe.scheduler.config.prediction_type == "v_prediction"


def test_textual_projection_adapter_uses_prompt_encoder(foundation, baseline, tmp_path, monkeypatch):
    dim = baseline.pipe.unet.config.cross_attention_dim
    calls = []

    class Encoder:
        def encode(self, prompts):
            calls.append(list(prompts))
            seed = sum(map(ord, prompts[0]))
            g = torch.Generator().manual_seed(seed)
            return torch.randn(len(prompts), 8, dim, generator=g)

    fake = types.ModuleType("cxrgen.adapt.textual_projection")
    fake.load_prompt_encoder = lambda folder, device=None: Encoder()
    monkeypatch.setitem(sys.modules, "cxrgen.adapt.textual_projection", fake)
    folder = _write_adapter(tmp_path / "proj_doc", method="textual_projection", foundation=str(foundation))
    tp = load_adapted_pipeline(foundation, folder)
    imgs = tp.generate("a photo of a lung xray", 2, seed=0, batch_size=2, **GEN)
    assert imgs.shape == (2, SIZE, SIZE) and imgs.dtype == np.uint8
    assert ["a photo of a lung xray"] in calls and [""] in calls
    tp.prompt_encoder = types.SimpleNamespace(encode=lambda p: torch.zeros(len(p), 8, dim + 1))
    with pytest.raises(InputError, match="expected"):
        tp.generate("x", 1, 0, **GEN)


def test_bad_adapters_and_arguments_raise(foundation, baseline, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="adapter.json"):
        load_adapted_pipeline(foundation, tmp_path / "empty")
    with pytest.raises(InputError, match="does not exist"):
        load_adapted_pipeline(foundation, tmp_path / "nowhere")
    bad = _write_adapter(tmp_path / "bad", method="magic", foundation=str(foundation))
    with pytest.raises(InputError, match="magic"):
        read_adapter(bad)
    ti = _write_adapter(tmp_path / "ti", method="textual_inversion", foundation=str(foundation), token="<x>")
    with pytest.raises(InputError, match="learned_embeds"):
        load_adapted_pipeline(foundation, ti)
    with pytest.raises(InputError, match="scheduler"):
        load_adapted_pipeline(foundation, scheduler="warp-drive")
    with pytest.raises(InputError, match="n=0"):
        baseline.generate("a photo", 0, seed=0, **GEN)
    with pytest.raises(InputError, match="height"):
        baseline.generate("a photo", 1, seed=0, steps=STEPS, height=30, progress=False)


def test_adapter_moved_together_with_its_foundation_still_loads(foundation, ti_dir, tmp_path):
    import shutil

    from cxrgen.adapt.adapter_file import foundation_reference

    models = tmp_path / "run" / "models"
    shutil.copytree(foundation, models / "foundation")
    adapter = shutil.copytree(ti_dir, models / "adapted" / "ti")
    meta = json.loads((adapter / "adapter.json").read_text())
    assert meta["foundation"] == str(foundation)  # an old adapter: the foundation's absolute path still loads
    assert load_adapted_pipeline(None, adapter).foundation == str(foundation.resolve())
    meta["foundation"] = foundation_reference(models / "foundation", adapter)
    assert meta["foundation"] == "../../foundation"
    (adapter / "adapter.json").write_text(json.dumps(meta))
    moved = shutil.move(tmp_path / "run", tmp_path / "elsewhere")  # the whole tree moves; the reference follows
    loaded = load_adapted_pipeline(None, moved / "models" / "adapted" / "ti")
    assert loaded.foundation == str((moved / "models" / "foundation").resolve()) and loaded.token == TOKEN
    shutil.rmtree(moved / "models" / "foundation")
    with pytest.raises(InputError, match=r"names foundation '../../foundation'.*relative to the adapter"):
        load_adapted_pipeline(None, moved / "models" / "adapted" / "ti")
    assert foundation_reference("CompVis/stable-diffusion-v1-4", adapter) == "CompVis/stable-diffusion-v1-4"


# ------------------------------------------------------------------------------------------------ sets and tables
def test_generate_set_manifest(sets):
    images, manifest = load_images(sets["ti_object_radiology"])
    assert images.shape == (9, SIZE, SIZE)
    assert list(manifest.columns) == MANIFEST_COLUMNS + ["No Finding", "Pleural Effusion"]
    assert list(manifest["prompt_name"].unique()) == ["normal", "effusion", "style"]
    assert (manifest["method"] == "ti_object_radiology").all() and (manifest["adaptation"] == "textual_inversion").all()
    assert manifest["seed"].tolist() == [10, 11, 12] * 3  # paired noise across prompts
    assert manifest["prompt_used"].str.contains(TOKEN, regex=False).all()
    assert (manifest["scheduler"] == "DDIMScheduler").all() and (manifest["steps"] == STEPS).all()
    eff = manifest[manifest.prompt_name == "effusion"]
    assert (eff["Pleural Effusion"] == 1).all() and (eff["No Finding"] == 0).all()
    assert manifest.loc[manifest.prompt_name == "style", "Pleural Effusion"].isna().all()
    assert not list(sets["baseline"].parent.glob(".*tmp"))  # atomic: no leftovers


def test_fid_and_classification_tables(sets, classifier):
    real_images, real_manifest = load_images(sets["baseline"])  # the baseline set as "real": FID with itself ~0
    t4 = fid_table(sets, real_images, real_manifest, extractor="reference", classifier=classifier, progress=False)
    assert list(t4.columns) == TABLE4_COLUMNS and len(t4) == 6
    own = t4[t4.method == "baseline"].set_index("prompt_name")
    assert own.loc["normal", "fid"] == pytest.approx(0.0, abs=1e-6)
    assert own.loc["effusion", "fid"] == pytest.approx(0.0, abs=1e-6)
    assert own.loc["normal", "real_subset"] == "No Finding == 1" and own.loc["style", "real_subset"] == "all"
    assert own.loc["normal", "n_real"] == 3 and own.loc["style", "n_real"] == 9 and own.loc["style", "n_fake"] == 3
    assert own.loc["style", "fid"] > 0
    assert t4["extractor"].str.startswith("reference").all() and (t4["dim"] == 16).all()
    assert (t4[t4.method == "ti_object_radiology"]["fid"] > 0).all()
    # every cell carries its sizes, a bootstrap CI and KID beside FID; n = 3 or 9 < 16 features: flagged biased
    assert t4[["fid_ci_low", "fid_ci_high", "kid", "kid_ci_low", "kid_ci_high"]].notna().all().all()
    assert (t4["fid_ci_low"] <= t4["fid_ci_high"]).all() and t4["fid_biased"].all() and (t4["n_boot"] == 200).all()

    t5 = classification_table(sets, classifier, n_boot=20, seed=0)
    assert list(t5.columns) == TABLE5_COLUMNS and list(t5["method"]) == list(sets)
    assert (t5["n"] == 6).all() and (t5["prevalence"] == 0.5).all() and (t5["threshold"] == 0.5).all()
    assert t5["auc"].between(0, 1).all()
    from sklearn.metrics import roc_auc_score

    images, manifest = load_images(sets["baseline"])
    keep = manifest.prompt_name.isin(["normal", "effusion"]).to_numpy()
    p = classifier.predict_proba(images[keep])[:, 1]
    y = (manifest.prompt_name[keep] == "effusion").astype(int)
    assert t5.set_index("method").loc["baseline", "auc"] == pytest.approx(roc_auc_score(y, p))
    scores = classifier_scores(sets, classifier)  # per image, paired across models by noise index
    base = scores[scores.method == "baseline"]
    assert len(scores) == 6 * len(sets) and list(base["index"]) == [0, 1, 2] * 2
    assert roc_auc_score(base["target"], base["score"]) == pytest.approx(t5.set_index("method").loc["baseline", "auc"])
    # 3 positives and 3 negatives: below the default minimum, so the CI is left out and the row says why
    assert t5["auc_ci_low"].isna().all() and (t5["ci_note"] == "CI omitted: 3 positives and 3 negatives < 10").all()
    t5c = classification_table(sets, classifier, n_boot=20, seed=0, min_class_count=3)
    assert (t5c["auc_ci_low"] <= t5c["auc"]).all() and (t5c["ci_note"] == "").all()
    t5b = classification_table({"x": sets["baseline"]}, classifier, positive="nothing", n_boot=0)
    assert "expected both prompts" in t5b.loc[0, "note"] and np.isnan(t5b.loc[0, "auc"])


def test_paper_row_mapping():
    # the rows follow each model's method and settings (cxrgen.adapt.methods), not its name
    assert default_paper_rows("none") == {"table4": ("Original model", "Stable Diffusion"), "table5": "Original Model"}
    assert default_paper_rows("textual_inversion", {"template": "style", "initializer": "lung"})["table4"] == (
        "Token embedding training", "Style, lung")
    assert default_paper_rows("textual_inversion", {"initializer": "chest"}) == {"table4": None,
                                                                                  "table5": "Textual Inversion"}
    assert default_paper_rows("textual_projection", {"variant": "document"})["table5"] == "Textual Projection (Doc.)"
    assert default_paper_rows("textual_projection", {"variant": "none"})["table4"] == ("Textual Projection",
                                                                                      "No Projection")
    assert default_paper_rows("unet", {"prior_preservation": True})["table5"] == "U-Net, with prior"
    assert default_paper_rows("unet")["table4"][1] == "Trained on no findings and abnormality"
    assert default_paper_rows("unet", {"classes": ["No Finding"]}) == {"table4": ("U-Net training",
                                                                                  "Trained on no findings"),
                                                                       "table5": None}
    assert default_paper_rows("lora") == {"table4": None, "table5": None}
    with pytest.raises(InputError, match="stepz"):
        default_paper_rows("unet", {"stepz": 1})
    models = {"ti_a": {"method": "textual_inversion"}, "ti_b": {"method": "textual_inversion",
                                                                "settings": {"template": "style"}}}
    rows = paper_rows(["ti_a", "ti_b", "mine"], {"mine": {"table5": "Original Model"}}, models)
    assert rows["ti_a"] == {"table4": ("Token embedding training", "Object, radiology"), "table5": "Textual Inversion"}
    assert rows["ti_b"]["table5"] is None  # the paper's single TI row is claimed by the first
    assert rows["ti_b"]["table4"] == ("Token embedding training", "Style, radiology")
    assert rows["mine"]["table5"] == "Original Model"  # no config entry: only what the override names
    with pytest.raises(InputError, match="unknown methods"):
        paper_rows(["a"], {"b": {}})


def test_evaluation_and_rendering(sets, classifier, tmp_path, monkeypatch):
    import cxrgen.studies.synthesis as synthesis

    monkeypatch.setattr(synthesis, "load_reference_classifier", lambda spec: classifier)
    res = run_synthesis_evaluation(sets, sets["baseline"], "tiny", tmp_path / "eval", extractor="reference",
                                   n_boot=10, progress=False, fid_n_boot=20, min_class_count=3)
    assert set(res) == {"table4", "table5", "scores"} and (tmp_path / "eval" / "scores.csv").is_file() and (tmp_path / "eval" / "table4.csv").is_file()
    paths = render_synthesis(tmp_path / "eval", sets, tmp_path / "t4", tmp_path / "t5", tmp_path / "fig4",
                             fig5_stem=tmp_path / "fig5", train_dir=sets["baseline"], fig5_method="baseline",
                             scale="miniature", n_show=2, models={"baseline": {"method": "none"},
                                                                  "ti_object_radiology": {"method": "textual_inversion"}},
                             prompt_dependence_stem=tmp_path / "pd", n_boot=20)
    pd_table = pd.read_csv(paths["prompt_dependence"]["csv"])
    assert list(pd_table["run method"]) == list(sets) and (pd_table["n_pairs"] == 3).all()
    assert (pd_table["pixel_difference"] > 0).all() and (pd_table["ci_low"] <= pd_table["score_difference"]).all()
    assert "same noise" in paths["prompt_dependence"]["md"].read_text()
    for key in ("table4", "table5"):
        assert all(p.is_file() for p in paths[key].values())
    for key in ("samples", "fig5"):
        assert paths[key]["png"].is_file() and paths[key]["pdf"].is_file()
    t4 = pd.read_csv(paths["table4"]["csv"])
    assert {"fid (paper)", "fid (this run)", "extractor (this run)", "n real (this run)"} <= set(t4.columns)
    assert {"kid (this run)", "n synthetic (this run)"} <= set(t4.columns) and "kid (paper)" not in t4.columns
    sd = t4[(t4.method == "Stable Diffusion") & (t4.prompt == "A photo of a lung xray")].iloc[0]
    assert sd["fid (paper)"] == pytest.approx(0.097) and sd["fid (this run)"].startswith("0.000 [")
    assert sd["run method"] == "baseline" and sd["n real (this run)"] == 3 and sd["n synthetic (this run)"] == 3
    ti = t4[(t4.method == "Object, radiology") & (t4.prompt.str.contains("style"))].iloc[0]
    value, ci = ti["fid (this run)"].split(" [")
    low, high = (float(v) for v in ci.rstrip("]").split(", "))
    assert ti["fid (paper)"] == pytest.approx(0.092) and float(value) > 0 and low <= high
    assert ti["n real (this run)"] == 9 and ti["n synthetic (this run)"] == 3  # style prompt: all real images
    md4 = paths["table4"]["md"].read_text()
    assert "FID is biased upward at n below the feature dimension" in md4 and "n real / n synthetic per row" in md4
    assert len(t4) == 25  # the paper's 24 cells + this run's baseline style prompt (blank in the paper)
    t5 = pd.read_csv(paths["table5"]["csv"])
    assert {"auc (paper)", "auc (this run)", "n (this run)"} <= set(t5.columns)
    row = t5.set_index("method").loc["Textual Inversion"]
    assert row["auc (paper)"] == pytest.approx(0.742) and "[" in str(row["auc (this run)"])
    assert row["n positive (this run)"] == 3 and pd.isna(row["CI note (this run)"])
    md = paths["table5"]["md"].read_text()
    assert "(paper)" in md and "(this run)" in md and "miniature" in md
    with pytest.raises(InputError, match="train_dir"):
        render_synthesis(tmp_path / "eval", sets, tmp_path / "a", tmp_path / "b", tmp_path / "c", fig5_stem=tmp_path / "d")
