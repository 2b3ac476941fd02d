"""CheXpert@k, bag-of-words IoU, extraction methods (real MiniLM), OpenI MeSH mapping (real reports)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cxrgen.data.schema import CHEXPERT_LABELS
from cxrgen.errors import InputError
from cxrgen.text.chexpert_at_k import (
    bag_of_words_similarity,
    bootstrap_macro_ci,
    chexpert_at_k,
    primary_classes,
    top_k_neighbours,
)


# ---------------------------------------------------------------- CheXpert@k
def test_self_excluded_even_when_highest():
    # 4 reports: A A B B. Self-similarity is the highest of each row, and must not be counted.
    sim = np.array(
        [
            [9.0, 1.0, 2.0, 0.0],
            [1.0, 9.0, 0.0, 2.0],
            [2.0, 0.0, 9.0, 1.0],
            [0.0, 2.0, 1.0, 9.0],
        ]
    )
    labels = ["A", "A", "B", "B"]
    r = chexpert_at_k(sim, labels, k=1)
    # each report's single nearest other report has the other class -> 0
    assert r.overall == 0.0
    np.testing.assert_array_equal(top_k_neighbours(sim, 1)[:, 0], [2, 3, 0, 1])
    r2 = chexpert_at_k(sim, labels, k=2)
    # top-2 others: one of each class -> 0.5
    assert r2.overall == pytest.approx(0.5)
    # a tie between self and another report: self still excluded
    sim_tie = np.ones((3, 3))
    assert set(top_k_neighbours(sim_tie, 2)[0]) == {1, 2}


def test_per_class_and_macro_known_answer():
    # classes: A (3 reports), B (1 report). Similarities make A reports retrieve A, B retrieve A.
    labels = ["A", "A", "A", "B"]
    sim = np.array(
        [
            [10, 5, 4, 1],
            [5, 10, 4, 1],
            [5, 4, 10, 3],
            [3, 2, 1, 10],
        ],
        dtype=float,
    )
    r = chexpert_at_k(sim, labels, k=2)
    np.testing.assert_allclose(r.per_report, [1.0, 1.0, 1.0, 0.0])
    assert r.per_class == {"A": 1.0, "B": 0.0}
    assert r.overall == pytest.approx(0.75)  # micro
    assert r.macro == pytest.approx(0.5)  # macro over classes differs from micro
    assert r.class_counts == {"A": 3, "B": 1}


def test_exact_vs_primary_on_label_vectors():
    idx = {c: i for i, c in enumerate(CHEXPERT_LABELS)}

    def vec(*names):
        v = np.zeros(len(CHEXPERT_LABELS))
        for n in names:
            v[idx[n]] = 1
        return v

    labels = np.stack(
        [vec("Cardiomegaly"), vec("Cardiomegaly", "Support Devices"), vec("No Finding"), vec("No Finding")]
    )
    sim = np.array([[9, 8, 1, 0], [8, 9, 0, 1], [1, 0, 9, 8], [0, 1, 8, 9]], dtype=float)
    exact = chexpert_at_k(sim, labels, k=1, same_label="exact")
    np.testing.assert_allclose(exact.per_report, [0, 0, 1, 1])  # vectors differ by Support Devices
    assert exact.per_class["Cardiomegaly"] == 0 and exact.per_class["No Finding"] == 1
    assert exact.per_class["Support Devices"] == 0 and exact.class_counts["Support Devices"] == 1
    assert np.isnan(exact.per_class["Edema"])  # no report: left out of the macro
    assert exact.macro == pytest.approx(1 / 3)
    prim = chexpert_at_k(sim, labels, k=1, same_label="primary")
    np.testing.assert_allclose(prim.per_report, [1, 1, 1, 1])  # primary of both = Cardiomegaly
    assert list(primary_classes(labels)) == ["Cardiomegaly", "Cardiomegaly", "No Finding", "No Finding"]
    assert prim.class_counts["Support Devices"] == 0 and prim.macro == 1.0
    with pytest.raises(InputError):
        chexpert_at_k(sim, labels, k=1, same_label="fuzzy")
    with pytest.raises(InputError):
        chexpert_at_k(sim, labels, k=4)


def test_bootstrap_ci_brackets_macro():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 5))
    labels = rng.choice(["A", "B", "C"], size=60)
    r = chexpert_at_k(x @ x.T, labels, k=5)
    lo, hi = bootstrap_macro_ci(r, n_boot=300, seed=1)
    assert 0 <= lo <= r.macro <= hi <= 1
    assert bootstrap_macro_ci(r, n_boot=300, seed=1) == (lo, hi)


def test_bag_of_words_iou():
    s = bag_of_words_similarity(["No acute disease.", "no ACUTE findings", "", "Disease, acute; no!"])
    assert s[0, 1] == pytest.approx(2 / 4)  # {no, acute} / {no, acute, disease, findings}
    assert s[0, 3] == pytest.approx(1.0)
    assert s[0, 0] == 1.0 and s[2, 2] == 0.0 and s[0, 2] == 0.0
    np.testing.assert_allclose(s, s.T)


# ---------------------------------------------------------------- encoders (real MiniLM)
@pytest.fixture(scope="module")
def minilm():
    from cxrgen.text.encoders import load_encoder

    return load_encoder("minilm")


TEXTS = ["No acute cardiopulmonary abnormality.", "Small left pleural effusion and mild cardiomegaly with a pacemaker."]


def test_cls_and_mean_match_direct_transformers(minilm):
    from cxrgen.text.encoders import embed

    tok, model = minilm.tokenizer, minilm.model
    with torch.no_grad():
        batch = tok(TEXTS, padding=True, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        singles = [model(**tok([t], return_tensors="pt")).last_hidden_state[0] for t in TEXTS]
    assert batch["attention_mask"][0].sum() < batch["attention_mask"][1].sum()  # first one is padded
    cls = embed(TEXTS, minilm, "cls", progress=False)
    np.testing.assert_allclose(cls, hidden[:, 0].numpy(), atol=1e-5)
    mean = embed(TEXTS, minilm, "mean", progress=False)
    unpadded = np.stack([h.mean(0).numpy() for h in singles])
    np.testing.assert_allclose(mean, unpadded, atol=1e-4)
    # batch of 1 gives the same as the padded batch of 2
    np.testing.assert_allclose(embed(TEXTS, minilm, "mean", batch_size=1, progress=False), mean, atol=1e-4)
    ms = embed(TEXTS, minilm, "model_specific", progress=False)
    np.testing.assert_allclose(ms, unpadded / np.linalg.norm(unpadded, axis=1, keepdims=True), atol=1e-4)
    pooled = embed(TEXTS, minilm, "pooler", progress=False)
    with torch.no_grad():
        np.testing.assert_allclose(pooled, model(**batch).pooler_output.numpy(), atol=1e-5)


def test_all_methods_come_from_one_forward_pass_per_batch(minilm, monkeypatch):
    from cxrgen.text.encoders import METHODS, embed, embed_methods

    one_by_one = {m: embed(TEXTS, minilm, m, batch_size=1, progress=False) for m in METHODS}
    calls = []
    forward = minilm.model.forward
    monkeypatch.setattr(minilm.model, "forward", lambda *a, **k: calls.append(1) or forward(*a, **k))
    together = embed_methods(TEXTS, minilm, list(METHODS), batch_size=1, progress=False)
    assert len(calls) == len(TEXTS)  # one forward per batch of one, shared by every pooling method
    for m in METHODS:
        np.testing.assert_allclose(together[m], one_by_one[m], atol=1e-6)


def test_pooler_none_when_absent(minilm):
    from transformers import BertModel

    from cxrgen.text.encoders import TextEncoder, embed

    bare = BertModel.from_pretrained(minilm.source, add_pooling_layer=False).eval()
    enc = TextEncoder("bare", minilm.source, bare, minilm.tokenizer, 128, has_pooler=False)
    assert embed(TEXTS, enc, "pooler", progress=False) is None
    assert embed(TEXTS, enc, "model_specific", progress=False) is None  # no sentence-transformers pooling given
    assert embed(TEXTS, enc, "cls", progress=False).shape == (2, 384)


def test_unknown_encoder_and_method(minilm, tmp_path):
    from cxrgen.errors import WeightsUnavailableError
    from cxrgen.text.encoders import embed, load_encoder

    with pytest.raises(InputError, match="unknown text encoder"):
        load_encoder("no-such-bert")
    with pytest.raises(InputError, match="unknown extraction method"):
        embed(TEXTS, minilm, "max")
    with pytest.raises(WeightsUnavailableError):
        load_encoder("radbert", path=tmp_path / "missing")
    with pytest.raises(InputError, match="path"):
        load_encoder("foundation-clip")


# ---------------------------------------------------------------- OpenI (real reports)
@pytest.fixture(scope="module")
def openi():
    from cxrgen.data.openi import load_openi

    return load_openi(keep_mesh=True).set_index("image_id")


def test_openi_table_and_mesh_mapping(openi):
    assert len(openi) == 3955 and (openi["source"] == "openi").all()
    # CXR1: MeSH "normal"
    r = openi.loc["CXR1"]
    assert r["mesh_major"] == "normal" and r["impression"] == "Normal chest x-XXXX."
    assert r["No Finding"] == 1 and r[[l for l in CHEXPERT_LABELS if l != "No Finding"]].sum() == 0
    # CXR2: "Cardiomegaly/borderline; Pulmonary Artery/enlarged"
    r = openi.loc["CXR2"]
    assert r["Cardiomegaly"] == 1 and r["No Finding"] == 0 and r[list(CHEXPERT_LABELS)].sum() == 1
    # CXR45: "Cardiomegaly; Pulmonary Congestion" -> Cardiomegaly + Edema
    r = openi.loc["CXR45"]
    assert "Cardiomegaly" in r["mesh_major"] and r["Cardiomegaly"] == 1 and r["Edema"] == 1
    # CXR29: Cardiomegaly/borderline; Tube, Inserted/...; Airspace Disease/...
    r = openi.loc["CXR29"]
    assert (r["Cardiomegaly"], r["Support Devices"], r["Lung Opacity"], r["No Finding"]) == (1, 1, 1, 0)
    # CXR5: pleural thickening only pathology -> Pleural Other
    assert openi.loc["CXR5", "Pleural Other"] == 1 and openi.loc["CXR5", "No Finding"] == 0
    # every report whose major MeSH mentions Cardiomegaly is labelled Cardiomegaly
    assert (openi.loc[openi["mesh_major"].str.contains("Cardiomegaly"), "Cardiomegaly"] == 1).all()
    # "No Indexing" reports: blank labels
    noidx = openi["mesh_major"] == "No Indexing"
    assert noidx.any() and openi.loc[noidx, list(CHEXPERT_LABELS)].isna().all().all()


def test_mesh_mapping_rules():
    from cxrgen.data.openi import load_mesh_mapping

    m = load_mesh_mapping()
    lab = m.labels_for(["Pulmonary Atelectasis/base/left", "Fractures, Bone/ribs", "Catheters, Indwelling/right"])
    assert lab["Atelectasis"] == lab["Fracture"] == lab["Support Devices"] == 1 and lab["No Finding"] == 0
    lab = m.labels_for(["Catheters, Indwelling", "Spine/degenerative"])  # device only -> still No Finding
    assert lab["Support Devices"] == 1 and lab["No Finding"] == 1
    assert m.labels_for(["Mediastinum/prominent"])["Enlarged Cardiomediastinum"] == 1
    assert m.labels_for(["Nodule/lung"])["Lung Lesion"] == 1


def test_study_small(tmp_path):
    from cxrgen.studies.text_encoder import format_table2, run_text_encoder_study

    base_texts = ["No acute disease.", "Cardiomegaly.", "Small left pleural effusion.", "Enlarged heart size."]
    rows = []
    for i in range(24):
        t = base_texts[i % 4]
        lab = {c: 0.0 for c in CHEXPERT_LABELS}
        lab[{0: "No Finding", 1: "Cardiomegaly", 2: "Pleural Effusion", 3: "Cardiomegaly"}[i % 4]] = 1.0
        rows.append({"impression": t if i != 23 else "", **lab})
    df = pd.DataFrame(rows)
    res = run_text_encoder_study(df, [{"name": "minilm", "methods": ["cls", "pooler"]}], k=3, cache_dir=tmp_path, n_boot=50)
    assert res.n_dropped_empty == 1 and res.n_reports == 23
    assert list(res.table3.columns) == ["Base", "minilm"] and res.table3.loc["Macro", "Base"] == pytest.approx(100.0)
    assert np.isnan(res.table2.loc["minilm", "mean"])  # not requested
    assert format_table2(res.table2).loc["minilm", "Mean hidden states"] == "None"
    assert len(list(tmp_path.glob("*.npy"))) == 2
    again = run_text_encoder_study(df, [{"name": "minilm", "methods": ["cls", "pooler"]}], k=3, cache_dir=tmp_path, n_boot=50)
    pd.testing.assert_frame_equal(again.table2, res.table2)
    # rendered beside the paper: its encoders first, this run's appended; Table 3 gets both column sets
    from cxrgen.studies.text_encoder import render_study, save_study

    save_study(res, tmp_path / "study")
    # per report (read by the findings table): the macro of the per-report hits is Table 3's Macro row
    per = pd.read_csv(tmp_path / "study" / "per_report.csv")
    member = per[[c for c in per.columns if c.startswith("class:")]].to_numpy(float)
    for col in ("Base", "minilm"):
        hits = (member * per[col].to_numpy()[:, None]).sum(0)[member.sum(0) > 0] / member.sum(0)[member.sum(0) > 0]
        assert 100 * hits.mean() == pytest.approx(res.table3.loc["Macro", col])
    paths = render_study(tmp_path / "study", tmp_path / "t2", tmp_path / "t3", scale="miniature", corpus="toy")
    t2 = pd.read_csv(paths["table2"]["csv"])
    assert t2.iloc[0]["model"] == "PubMedBERT" and t2.iloc[0]["Macro CheXpert@k (paper)"] == pytest.approx(30.8)
    ours = t2[t2["model"] == "minilm"].set_index("method")
    assert ours.loc["CLS hidden state", "Macro CheXpert@k (this run)"].startswith(f"{res.table2.loc['minilm', 'cls']:.1f} [")
    assert pd.isna(ours.loc["Mean hidden states", "Macro CheXpert@k (this run)"])
    t3 = pd.read_csv(paths["table3"]["csv"]).set_index("Abnormality")
    assert t3.loc["Macro", "Base (paper)"] == pytest.approx(41.5) and t3.loc["Macro", "Base (this run)"] == pytest.approx(100.0)
    assert "miniature" in paths["table3"]["md"].read_text()
