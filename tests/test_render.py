"""Reference transcriptions are self-consistent; table and figure renderers give exact, complete output."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import yaml

from cxrgen.errors import InputError
from cxrgen.render import load_reference, side_by_side, to_latex, to_markdown, write_table
from cxrgen.render.reference import DEFAULT_ROOT, known_papers, known_tables, paper_table_label

REF = DEFAULT_ROOT
EXPECTED_PAPERS = ["chambon2022", "dewilde2023", "weber2023", "zafar2023"]
META_KEYS = {"table_number", "caption", "section", "page", "units", "direction", "notes", "known_discrepancies"}


# ----------------------------------------------------------------------------- metadata coverage
def test_every_csv_has_metadata_and_loads():
    assert known_papers() == EXPECTED_PAPERS
    for paper in EXPECTED_PAPERS:
        sources = yaml.safe_load((REF / paper / "sources.yaml").read_text())
        assert sources["citation"].strip()
        csvs = sorted(p.stem for p in (REF / paper).glob("*.csv"))
        assert csvs == sorted(sources["tables"]), f"{paper}: CSVs and sources.yaml disagree"
        for table in csvs:
            df, meta = load_reference(paper, table)
            assert len(df) > 0 and "notes" in df.columns
            assert META_KEYS <= set(meta), f"{paper}/{table} metadata lacks {META_KEYS - set(meta)}"
            assert meta["citation"] and meta["caption"]
            assert set(meta["direction"].values()) <= {"lower", "higher", "none"}


def test_unknown_paper_or_table_names_the_known_ones():
    with pytest.raises(InputError, match="chambon2022"):
        load_reference("nope2099", "table1")
    with pytest.raises(InputError, match="table3"):
        load_reference("chambon2022", "table99")
    assert "vae_summary" in known_tables("chambon2022")


# ----------------------------------------------------------------------------- Chambon 2022
def test_chambon_prevalences_and_rates_in_unit_interval():
    for table in ("table1", "table6"):
        df, _ = load_reference("chambon2022", table)
        assert len(df) == 12
        num = df.drop(columns=["finding", "notes"])
        assert ((num >= 0) & (num <= 1)).all().all()
    df, _ = load_reference("chambon2022", "table5")
    num = df.drop(columns=["method", "notes"])
    assert ((num >= 0) & (num <= 1)).all().all()


def test_chambon_table1_matches_numbers_quoted_in_text():
    df, _ = load_reference("chambon2022", "table1")
    row = df.set_index("finding")
    assert (row.loc["Pleural Effusion", "auc_orig"], row.loc["Pleural Effusion", "auc_recon"]) == (0.877, 0.881)
    assert (row.loc["Lung Lesion", "auc_orig"], row.loc["Lung Lesion", "auc_recon"]) == (0.766, 0.728)


# Known: the paper's Macro row equals the mean of the 14 class rows to its 1-decimal rounding;
# the largest gap (ClinicalBERT 35.143 vs 35.1) is rounding, so no column is exempted.
TABLE3_KNOWN_MACRO_DISCREPANCIES: dict[str, float] = {}


def test_chambon_table3_macro_row_is_mean_of_classes():
    df, _ = load_reference("chambon2022", "table3")
    classes = df[df["abnormality"] != "Macro"].drop(columns=["abnormality", "notes"])
    macro = df[df["abnormality"] == "Macro"].drop(columns=["abnormality", "notes"]).iloc[0]
    assert len(classes) == 14
    for col in classes.columns:
        gap = abs(classes[col].mean() - macro[col])
        tol = TABLE3_KNOWN_MACRO_DISCREPANCIES.get(col, 0.05 + 1e-9)
        assert gap <= tol, f"{col}: mean {classes[col].mean():.3f} vs macro {macro[col]}"


def test_chambon_table2_best_method_equals_table3_macro():
    t2, _ = load_reference("chambon2022", "table2")
    t3, _ = load_reference("chambon2022", "table3")
    macro = t3[t3["abnormality"] == "Macro"].iloc[0]
    assert t2.groupby("model").size().eq(4).all()
    best = t2.groupby("model", sort=False)["macro_chexpert_at_10"].max()
    assert list(best.index) == [c for c in t3.columns if c not in ("abnormality", "Base", "notes")]
    for model, value in best.items():
        assert value == pytest.approx(macro[model]), model
    # the "None" cells are empty, including the ambiguous CXR-BERT-general one
    assert t2["macro_chexpert_at_10"].isna().sum() == 7


def test_chambon_table5_f1_and_accuracy_recompute():
    df, _ = load_reference("chambon2022", "table5")
    n = 100
    for row in df.itertuples():
        p, r = row.precision, row.recall
        f1 = 0.0 if p + r == 0 else 2 * p * r / (p + r)
        assert f1 == pytest.approx(row.f1, abs=6e-4), row.method
        tp = round(r * n * row.prevalence)
        pred_pos = round(tp / p) if p > 0 else None
        if pred_pos is None:  # precision 0 with tp 0: accuracy fixes the false positives
            fp = round(n * (1 - row.prevalence) - (row.accuracy * n - tp))
        else:
            fp = pred_pos - tp
        tn = n * (1 - row.prevalence) - fp
        assert (tp + tn) / n == pytest.approx(row.accuracy, abs=6e-4), row.method


def test_chambon_table4_and_vae_summary():
    df, meta = load_reference("chambon2022", "table4")
    assert len(df) == 24 and meta["direction"]["fid"] == "lower"
    assert df["prompt"].nunique() == 3
    assert not df.duplicated(["strategy_group", "method", "prompt"]).any()
    vae, _ = load_reference("chambon2022", "vae_summary")
    for row in vae.itertuples():
        assert row.min <= row.median <= row.max and row.min <= row.mean <= row.max, (row.dataset, row.metric)


# ----------------------------------------------------------------------------- Weber 2023
def test_weber_table1_counts_sum_to_stated_total_and_percentages():
    df, meta = load_reference("weber2023", "table1")
    total = meta["stated_total_in_machex"]
    assert total == 651471
    assert df["n_in_machex"].sum() == total
    assert np.allclose(100 * df["n_in_machex"] / total, df["pct_of_machex"], atol=0.006)
    assert df["pct_of_machex"].sum() == pytest.approx(100, abs=0.05)
    assert (df["n_in_machex"] <= df["n_train"]).all()


def test_weber_table2_psnr_close_to_mse_except_known_ae_row():
    df, _ = load_reference("weber2023", "table2")
    implied = 10 * np.log10(1 / df["mse"])
    gap = (df["psnr"] - implied).abs()
    known = df["workflow_id"] == 2  # AE-only row: 36.80 printed vs ~33.0 implied (noted in sources.yaml)
    assert (gap[~known] < 0.15).all()
    assert gap[known].iloc[0] > 3


# ----------------------------------------------------------------------------- de Wilde 2023 / Zafar 2023
def test_dewilde_tables():
    t1, _ = load_reference("dewilde2023", "table1")
    assert len(t1) == 9 and t1.loc[t1["fid"].idxmin(), "cfg_scale"] == 1
    t4, _ = load_reference("dewilde2023", "table4")
    best = t4.loc[t4["auc_mean"].idxmax()]
    assert (best.real_cases, best.synthetic_cases) == (200, 2000)
    base = t4[(t4.real_cases == 200) & (t4.synthetic_cases == 0)].auc_mean.iloc[0]
    assert round(best.auc_mean - base, 3) == 0.023  # paper text says "2%"
    assert ((t4["auc_mean"] > 0.5) & (t4["auc_mean"] <= 1)).all()


def test_zafar_compute_is_consistent():
    df, _ = load_reference("zafar2023", "compute")
    v = df.set_index("quantity")["value"]
    assert v["gpu_hours"] * v["gpu_tdp"] / 1000 * v["carbon_intensity"] == pytest.approx(v["total_emissions"])


# ----------------------------------------------------------------------------- renderers
def _small():
    return pd.DataFrame({"model": ["A_1", "B&C"], "auc": [0.81, 0.5], "n": [10, 200]})


def test_to_markdown_exact():
    expected = (
        "Table: Demo caption.\n"
        "\n"
        "| model |  auc |   n |\n"
        "| ----- | ---: | --: |\n"
        "| A_1   | 0.81 |  10 |\n"
        "| B&C   |  0.5 | 200 |\n"
    )
    assert to_markdown(_small(), "Demo   caption.") == expected
    df = pd.DataFrame({"x": ["a|b", None], "y": [float("nan"), 2.0]})
    assert to_markdown(df, "c") == "Table: c\n\n| x    |   y |\n| ---- | --: |\n| a\\|b |     |\n|      |   2 |\n"


def test_to_latex_exact():
    expected = (
        "\\begin{table}[ht]\n"
        "\\centering\n"
        "\\caption{AUC \\& 50\\% of \\#1\\_x}\n"
        "\\label{tab:demo}\n"
        "\\begin{tabular}{lrr}\n"
        "\\toprule\n"
        "model & auc & n \\\\\n"
        "\\midrule\n"
        "A\\_1 & 0.81 & 10 \\\\\n"
        "B\\&C & 0.5 & 200 \\\\\n"
        "\\bottomrule\n"
        "\\end{tabular}\n"
        "\\end{table}\n"
    )
    assert to_latex(_small(), "AUC & 50% of #1_x", "tab:demo") == expected
    with pytest.raises(InputError):
        to_latex(_small(), "c", "bad label")


def test_side_by_side_names_and_ci():
    paper = pd.DataFrame({"finding": ["Edema", "Fracture"], "auc": [0.858, 0.651], "f1": [0.614, 0.132]})
    ours = pd.DataFrame(
        {
            "finding": ["Fracture", "Edema", "Extra"],
            "auc": [0.81, 0.7, 0.6],
            "auc_ci_low": [0.76, np.nan, 0.5],
            "auc_ci_high": [0.86, np.nan, 0.7],
            "f1": [0.1, 0.2, 0.3],
        }
    )
    out = side_by_side(paper, ours, ["finding"], ["auc", "f1"], digits=2)
    assert list(out.columns) == ["finding", "auc (paper)", "auc (this run)", "f1 (paper)", "f1 (this run)"]
    assert list(out["finding"]) == ["Edema", "Fracture", "Extra"]
    assert list(out["auc (this run)"]) == ["0.70", "0.81 [0.76, 0.86]", "0.60 [0.50, 0.70]"]
    assert out["f1 (this run)"].tolist() == [0.2, 0.1, 0.3]
    assert math.isnan(out.loc[2, "auc (paper)"])
    single = side_by_side(
        paper[["finding", "auc"]],
        ours[["finding", "auc"]].assign(ci_low=0.5, ci_high=0.9),
        ["finding"],
        ["auc"],
        digits=2,
    )
    assert single.loc[0, "auc (this run)"] == "0.70 [0.50, 0.90]"
    explicit = side_by_side(paper, ours, ["finding"], ["f1"], ours_ci={"f1": ("auc_ci_low", "auc_ci_high")}, digits=2)
    assert explicit.loc[1, "f1 (this run)"] == "0.10 [0.76, 0.86]"
    with pytest.raises(InputError, match="lacks columns"):
        side_by_side(paper, ours, ["finding"], ["missing"])


def test_write_table_files_and_caption(tmp_path):
    paper, meta = load_reference("chambon2022", "table5")
    ours = paper[["method", "auc"]].assign(auc=0.5)
    df = side_by_side(paper, ours, ["method"], ["auc"])
    paths = write_table(df, tmp_path / "t5", "Synthetic CXR classification.", "miniature", paper_table_label(meta))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t5.csv", "t5.md", "t5.tex"]
    md = paths["md"].read_text()
    assert md.startswith(
        "Table: Synthetic CXR classification. Scale of this run: miniature (embedded phantom data, CPU). "
        "Paper numbers are from chambon2022, Table 5.\n"
    )
    assert "paper scale" in write_table(df, tmp_path / "p", "X", "paper", "chambon2022, Table 5")["tex"].read_text()
    assert pd.read_csv(paths["csv"]).shape == df.shape
    with pytest.raises(InputError, match="paper_table"):
        write_table(df, tmp_path / "bad", "X", "miniature")
    with pytest.raises(InputError, match="scale"):
        write_table(df, tmp_path / "bad", "X", "huge", "t")


# ----------------------------------------------------------------------------- figures
def test_figures_write_png_and_pdf(tmp_path):
    from cxrgen import plotting
    from cxrgen.render import figures

    rng = np.random.default_rng(0)
    gray = [rng.integers(0, 256, (16, 16), dtype=np.uint8) for _ in range(4)]
    rgb = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    p = plotting.image_grid([[gray[0], rgb], [gray[2], None]], ["real", "synthetic"], ["a", "b"], tmp_path / "grid", title="T")
    with pytest.raises(InputError, match="3 images for 2 rows"):
        plotting.image_grid(gray[:3], ["r1", "r2"], ["c1", "c2"], tmp_path / "flat")
    with pytest.raises(InputError, match="uint8"):
        plotting.image_grid([gray[0].astype(float)], ["r"], ["c"], tmp_path / "bad")
    metrics = pd.DataFrame({"ssim": rng.uniform(0.8, 1, 40), "psnr": rng.normal(35, 1.5, 40), "ds": ["a", "b"] * 20})
    p3 = figures.distribution_plot(metrics, ["ssim", "psnr"], tmp_path / "violin", group="ds")
    paper, _ = load_reference("chambon2022", "table5")
    ours = paper[["method", "auc"]].assign(auc=0.6, auc_ci_low=0.5, auc_ci_high=0.7)
    p5 = figures.bar_with_reference(ours, paper, "method", "auc", tmp_path / "bars", title="AUC")
    for paths in (p, p3, p5):
        assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert paths["pdf"].read_bytes()[:5] == b"%PDF-"
    assert not [f for f in tmp_path.iterdir() if f.name.startswith(".")]


# --------------------------------------------------------------------------- FID/KID cells (issue 17)
def test_fid_kid_cells_show_ci_and_caption_states_n_and_bias(tmp_path):
    from cxrgen.metrics.fid import fid_kid_with_ci
    from cxrgen.render.tables import fid_kid_caption

    rng = np.random.default_rng(0)
    rows = []
    for model, n in (("small", 12), ("large", 40)):
        r = fid_kid_with_ci(rng.normal(size=(n, 32)), rng.normal(0.3, size=(n, 32)), n_boot=30, seed=0)
        rows.append({"model": model, **r})
    ours = pd.DataFrame(rows)
    paper = pd.DataFrame({"model": ["small", "large"], "fid": [1.0, 2.0], "kid": [0.1, 0.2]})
    t = side_by_side(paper, ours, ["model"], ["fid", "kid"], digits=2)
    cell = t.set_index("model").loc["small", "fid (this run)"]
    r = rows[0]
    assert cell == f"{r['fid']:.2f} [{r['fid_ci_low']:.2f}, {r['fid_ci_high']:.2f}]"
    caption = fid_kid_caption(ours)
    assert "value [95% CI]" in caption and "30 resamples" in caption and "n real / n synthetic per row" in caption
    assert "FID is biased upward at n below the feature dimension (12 < 32 here" in caption and "KID" in caption
    md = write_table(t, tmp_path / "fk", caption, "miniature", paper_table="x, Table 1")["md"].read_text()
    assert cell in md and "(12 < 32 here" in md
    # n at or above the feature dimension: no bias warning
    big = fid_kid_with_ci(rng.normal(size=(40, 8)), rng.normal(size=(40, 8)), n_boot=10)
    assert "biased" not in fid_kid_caption(pd.DataFrame([big]))
    assert fid_kid_caption(pd.DataFrame({"n_real": [np.nan], "n_fake": [np.nan], "dim": [8], "n_boot": [0]})).startswith("No FID")
    with pytest.raises(InputError, match="n_real"):
        fid_kid_caption(pd.DataFrame({"fid": [1.0]}))
