"""Findings table (issue 17): verdicts on constructed result files, the claims file, and the rule in the DAG."""

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from cxrgen.errors import InputError
from cxrgen.render.findings import (
    CONTRADICTED,
    EVALUATORS,
    INCONCLUSIVE,
    NOT_RUN,
    REPRODUCED,
    Effect,
    Settings,
    evaluate_claims,
    load_claims,
    paired_t_interval,
    published_from_reference,
    sign_flip_p,
    verdict,
    write_findings,
)
from cxrgen.render.reference import reference_root

N = 40  # items per constructed result file
ADAPTATION = ({"name": "original", "method": "none"},
              {"name": "inversion", "method": "textual_inversion", "settings": {}},
              {"name": "unet_prior", "method": "unet", "settings": {"prior_preservation": True}},
              {"name": "unet_plain", "method": "unet", "settings": {}})
ZAFAR = ({"name": "full_ft", "method": "full"}, {"name": "lora", "method": "lora"})
SETTINGS = Settings(n_boot=200, seed=0, adaptation_methods=ADAPTATION, zafar_methods=ZAFAR, dewilde_cases=5)
CLAIMS = load_claims()


def _wiggle(n=N, size=0.3):
    """Zero-mean alternating noise: an effect of exactly 0 whose interval is not a point."""
    return size * np.where(np.arange(n) % 2 == 0, 1.0, -1.0) * (1 + np.arange(n) / n)


def write_results(root: Path, sign: int) -> dict:
    """Result files of every study with an effect in the papers' direction (sign 1), reversed (-1) or none (0)."""
    rng = np.random.default_rng(7)
    files = {}
    y = np.tile([0.0, 1.0], N // 2)
    good = y + rng.normal(0, 0.3, N)  # scores that separate the classes
    noise = rng.normal(0, 1, N)  # scores that do not
    # VAE (equivalence): reconstructions scored like the originals (sign 1) or like noise (sign -1)
    vae = pd.DataFrame({"resolution": 32, "target:Atelectasis": y, "p_orig:Atelectasis": good,
                        "p_recon:Atelectasis": good if sign >= 0 else noise})
    files["vae_per_image"] = root / "vae.csv"
    vae.to_csv(files["vae_per_image"], index=False)
    # text: per-report hits of the encoder and of the bag-of-words baseline
    base_hits = np.full(N, 0.5) + _wiggle(size=0.1)
    text = pd.DataFrame({"report": range(N), "Base": base_hits, "enc": base_hits + sign * 0.3,
                         "class:A": y == 1, "class:B": y == 0})
    files["text_per_report"] = {"toy": root / "text.csv"}
    text.to_csv(files["text_per_report"]["toy"], index=False)
    # synthesis (Chambon Table 5): U-Net with prior separates the prompts perfectly, textual inversion well, the
    # others not (sign 1); the reverse (sign -1); all alike (sign 0)
    perfect, fair = y + rng.normal(0, 0.05, N), y + rng.normal(0, 0.5, N)
    treated, control = {1: (perfect, noise), -1: (noise, good), 0: (good, good)}[sign]
    inversion = {1: fair, -1: noise, 0: good}[sign]
    rows = []
    for name, s in (("original", control), ("inversion", inversion), ("unet_prior", treated), ("unet_plain", control)):
        rows += [{"method": name, "prompt_name": "effusion" if t else "normal", "index": i // 2, "target": int(t),
                  "score": v} for i, (t, v) in enumerate(zip(y, s))]
    files["synthesis_scores"] = root / "scores.csv"
    pd.DataFrame(rows).to_csv(files["synthesis_scores"], index=False)
    # Zafar: out-of-domain images of two colours; P(colour) follows the prompt for the model that retained it
    colour = np.where(y == 1, "red", "blue")
    ood = []
    for model, s in (("lora", treated), ("full_ft", control)):
        ood.append(pd.DataFrame({"model": model, "prompt": colour, "colour": colour, "shape": "circle",
                                 "index": np.arange(N) // 2, "p_colour:red": s, "p_colour:blue": -s}))
    files["zafar_ood"] = root / "ood.csv"
    pd.concat(ood).to_csv(files["zafar_ood"], index=False)
    # Cheff: per-image PSNR of SR_base / SR_fine; per-image corr(z_T, z_0) per max beta
    psnr_base = 20 + rng.normal(0, 1, N)
    rec = pd.concat([pd.DataFrame({"workflow_id": 1, "sr_model": "base", "image": range(N), "psnr": psnr_base}),
                     pd.DataFrame({"workflow_id": 1, "sr_model": "fine", "image": range(N),
                                   "psnr": psnr_base + 2 * sign + _wiggle()})])
    files["cheff_reconstruction"] = root / "rec.csv"
    rec.to_csv(files["cheff_reconstruction"], index=False)
    corr = 0.05 + rng.normal(0, 0.01, N)
    beta = pd.concat([pd.DataFrame({"image": range(N), "beta_end": 0.0295, "corr_zT_z0_raw": corr}),
                      pd.DataFrame({"image": range(N), "beta_end": 0.0195, "corr_zT_z0_raw": corr + 0.1 * sign + _wiggle(size=0.01)})])
    files["cheff_beta"] = root / "beta.csv"
    beta.to_csv(files["cheff_beta"], index=False)
    # de Wilde sweeps: generated features far from the real ones at the small setting, close at the large (sign 1)
    real = rng.normal(0, 1, (N, 3))
    fake = rng.normal(0, 1, (N, 3))
    far, near = {1: (3.0, 0.2), -1: (0.2, 3.0), 0: (1.0, 1.0)}[sign]
    files["dewilde_sweep"] = []
    for sweep, column in (("embedding size", "embedding_size"), ("training cases", "training_cases")):
        for setting, shift in ((1, far), (8, near)):
            point = root / "sweep" / f"{column}{setting}"
            point.mkdir(parents=True)
            row = {"sweep": sweep, "embedding_size": 8, "training_cases": 5, column: setting, "fid": 0.0}
            pd.DataFrame([row]).to_csv(point / "fid.csv", index=False)
            np.savez(point / "features.npz", real=real, fake=fake + shift)
            files["dewilde_sweep"].append(point / "fid.csv")
    # de Wilde Table 4: per-seed test AUCs
    seeds = np.arange(6)  # the exact sign-flip test can reject at 0.05 from 6 seeds on
    real_only = 0.7 + 0.01 * np.array([1, -2, 0, 2, -1, 0])
    augmented = real_only + 0.05 * sign + 0.01 * np.array([1, -1, 2, -2, 0.5, -0.5])
    files["dewilde_classifier"] = []
    for s in seeds:
        path = root / f"seed{s}.csv"
        pd.DataFrame([{"seed": s, "real_cases": 10, "synthetic_cases": 0, "synthetic_embedding_cases": np.nan, "test_auc": real_only[s]},
                      {"seed": s, "real_cases": 10, "synthetic_cases": 40, "synthetic_embedding_cases": 5, "test_auc": augmented[s]}]
                     ).to_csv(path, index=False)
        files["dewilde_classifier"].append(path)
    return files


@pytest.mark.parametrize("sign, expected", [(1, REPRODUCED), (-1, CONTRADICTED), (0, INCONCLUSIVE)])
def test_every_claim_gets_its_verdict_from_constructed_files(tmp_path, sign, expected):
    table = evaluate_claims(CLAIMS, write_results(tmp_path, sign), SETTINGS)
    assert len(table) == len(CLAIMS)
    for _, row in table.iterrows():
        if "keeps" in row["claim"] and sign == 0:  # equivalence: identical scores are the clearest "no change"
            assert row["verdict"] == REPRODUCED, row.to_dict()
        else:
            assert row["verdict"] == expected, row.to_dict()
        assert row["ci_low"] <= row["this run"] <= row["ci_high"], row.to_dict()


def test_missing_studies_and_models_are_not_run(tmp_path):
    files = write_results(tmp_path, 1)
    files.pop("cheff_reconstruction")
    files["dewilde_sweep"] = [p for p in files["dewilde_sweep"] if "training_cases8" not in str(p)]  # one setting left
    no_inversion = Settings(n_boot=50, adaptation_methods=(ADAPTATION[0], ADAPTATION[3]), zafar_methods=ZAFAR[:1])
    table = evaluate_claims(CLAIMS, files, no_inversion).set_index("claim")
    by_id = {c["id"]: c["claim"] for c in CLAIMS}
    for cid, why in (("weber_sr_fine_improves_cascade", "Cheff reconstruction"), ("dewilde_more_cases_lower_fid", "1 setting"),
                     ("chambon_inversion_lifts_effusion_auc", "'textual_inversion'"), ("chambon_unet_prior_best", "prior"),
                     ("zafar_lora_retains_prior", "lora")):
        row = table.loc[by_id[cid]]
        assert row["verdict"] == NOT_RUN and why in row["note"] and np.isnan(row["this run"]), (cid, row["note"])
    assert table.loc[by_id["dewilde_more_vectors_lower_fid"], "verdict"] == REPRODUCED


def test_claims_of_papers_the_config_does_not_select_are_not_run(tmp_path):
    files = {k: v for k, v in write_results(tmp_path, 1).items() if k in ("vae_per_image", "text_per_report", "synthesis_scores")}
    table = evaluate_claims(CLAIMS, files, Settings(n_boot=50, adaptation_methods=ADAPTATION, studies=("chambon2022",)))
    others = table[table["paper"] != "chambon2022"]
    assert len(others) and set(others["verdict"]) == {NOT_RUN}, others
    assert others["note"].str.contains(r"config studies \['chambon2022'\] do not select").all(), others["note"]
    assert NOT_RUN not in set(table.loc[table["paper"] == "chambon2022", "verdict"])


def test_undefined_auc_is_inconclusive_and_bad_files_are_named(tmp_path):
    files = write_results(tmp_path, 1)
    scores = pd.read_csv(files["synthesis_scores"])
    scores[scores["index"] < 1].to_csv(files["synthesis_scores"], index=False)  # 1 image per prompt < min_per_class 2
    table = evaluate_claims(CLAIMS, files, SETTINGS).set_index("claim")
    row = table.loc[[c["claim"] for c in CLAIMS if c["id"] == "chambon_inversion_lifts_effusion_auc"][0]]
    assert row["verdict"] == INCONCLUSIVE and "AUC needs >= 2" in row["note"]
    pd.DataFrame({"model": ["lora"]}).to_csv(files["zafar_ood"], index=False)
    with pytest.raises(InputError, match=r"ood.csv lacks columns \['prompt', 'colour', 'index'\]"):
        evaluate_claims(CLAIMS, files, SETTINGS)


def test_verdict_rule_and_intervals():
    def eff(lo, hi):
        return Effect((lo + hi) / 2, lo, hi, "n", "test")

    assert verdict(eff(0.1, 0.3), "greater") == REPRODUCED and verdict(eff(0.1, 0.3), "less") == CONTRADICTED
    assert verdict(eff(-0.1, 0.3), "greater") == INCONCLUSIVE and verdict(eff(-0.3, -0.1), "less") == REPRODUCED
    assert verdict(eff(-0.01, 0.015), "within", 0.02) == REPRODUCED
    assert verdict(eff(0.01, 0.03), "within", 0.02) == INCONCLUSIVE  # straddles the margin
    assert verdict(eff(-0.09, -0.03), "within", 0.02) == CONTRADICTED
    assert verdict(eff(np.nan, np.nan), "greater") == INCONCLUSIVE and verdict(None, "greater") == NOT_RUN
    with pytest.raises(InputError, match="direction"):
        verdict(eff(0, 1), "sideways")
    # per-seed effects: identical differences give a zero-width t interval, but 2 seeds cannot reject the null
    assert verdict(Effect(0.05, 0.05, 0.05, "2 seeds", "t", p_value=sign_flip_p([0.05, 0.05])), "greater") == INCONCLUSIVE
    assert sign_flip_p([0.05, 0.05]) == 0.5 and sign_flip_p([1, 2, 3, 4, 5, 6]) == pytest.approx(2 / 64)
    assert sign_flip_p([1, -1, 1, -1]) == 1.0
    mean, lo, hi = paired_t_interval([1.0, 2.0, 3.0])
    assert mean == 2.0 and (lo, hi) == pytest.approx((2 - 4.302653 / np.sqrt(3), 2 + 4.302653 / np.sqrt(3)), rel=1e-5)
    assert np.isnan(paired_t_interval([1.0])[1])


def test_table_is_deterministic_and_labelled(tmp_path):
    files = write_results(tmp_path, 1)
    first = evaluate_claims(CLAIMS, files, SETTINGS)
    pd.testing.assert_frame_equal(first, evaluate_claims(CLAIMS, files, SETTINGS))  # seeded bootstraps
    paths = write_findings(first, tmp_path / "findings", "miniature", SETTINGS.n_boot)
    md = paths["md"].read_text()
    assert "miniature" in md and "never the papers' numbers" in md and REPRODUCED in md
    assert paths["tex"].is_file() and len(pd.read_csv(paths["csv"])) == len(CLAIMS)


def paper_text(paper: str) -> str:
    """The paper's text named in findings.yaml (a path relative to the repository root)."""
    doc = yaml.safe_load((reference_root() / "findings.yaml").read_text())
    path = Path(__file__).resolve().parents[1] / doc["source_texts"][paper]
    if not path.is_file():  # CI and the project's sessions have ../shared beside the checkout; other clones may not
        pytest.skip(f"{path} absent: the papers' texts sit in ../shared/papers beside the checkout")
    return path.read_text()


def test_every_claim_is_cited_and_its_published_numbers_parse():
    assert {c["evaluator"] for c in CLAIMS} == set(EVALUATORS)  # no evaluator without a claim, none missing
    issue_claims = {"chambon_vae_keeps_auc", "chambon_encoder_beats_bag_of_words", "chambon_inversion_lifts_effusion_auc",
                    "chambon_unet_prior_best", "zafar_lora_retains_prior", "weber_beta_less_signal",
                    "dewilde_more_vectors_lower_fid", "dewilde_more_cases_lower_fid",
                    "dewilde_real_plus_synthetic_beats_real", "weber_sr_fine_improves_cascade"}
    assert issue_claims <= {c["id"] for c in CLAIMS}
    for claim in CLAIMS:
        text = paper_text(claim["paper"]).lower()
        title = re.sub(r"^[0-9ivx.]+\s+", "", claim["section"].split(",")[0].lower()).split(" - ")[-1]
        assert title in text, (claim["id"], title)  # the cited section exists in the paper
        pub = claim["published"]
        if pub["value"] is None:
            assert "qualitative" in pub["text"] and "Fig." in pub["text"]
            continue
        assert claim["table"] is not None
        # the published effect is the difference of transcribed cells (reference/<paper>/<table>.csv)
        assert published_from_reference(pub["derivation"]) == pytest.approx(pub["value"], abs=5e-4), claim["id"]
        sign = np.sign(pub["value"])
        if claim["direction"] == "within":
            assert abs(pub["value"]) < claim["margin"]
        else:
            assert sign == (1 if claim["direction"] == "greater" else -1), claim["id"]


def test_weber_table2_numbers_in_the_paper():
    """The issue quotes 25.77 vs 24.05 dB (workflow 1): check them against the paper's text, not only our CSV."""
    text = paper_text("weber2023")
    assert re.search(r"SRbase.*0\.0039 24\.05 0\.9512", text) and re.search(r"SRfine.*0\.0026 25\.77 0\.9510", text)


@pytest.mark.parametrize("configfile", [None, "configs/smoke.yaml"])
def test_findings_rule_is_in_the_dag(configfile, tmp_path):
    import shutil

    from test_workflow import REPO, run_snakemake

    for name in ("Snakefile", "config.yaml", "rules", "scripts", "schemas", "configs", "report", "envs"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, tmp_path / name)  # no results yet
    args = ["-n", "--quiet", "rules"] + (["--configfile", configfile] if configfile else [])
    out = run_snakemake(*args, cwd=tmp_path)
    assert re.search(r"^findings\s+1$", out.stdout + out.stderr, re.M), out.stdout[-2000:]


def test_a_bad_claims_file_is_refused_naming_the_claim(tmp_path):
    claim = dict(CLAIMS[0])
    for change, message in (({"evaluator": "guess"}, "unknown evaluator 'guess'"), ({"direction": "up"}, "direction 'up'"),
                            ({"margin": None}, "needs a numeric margin"),
                            ({"published": {"value": "0.02", "text": "x"}}, "expected a number or null")):
        path = tmp_path / "claims.yaml"
        path.write_text(yaml.safe_dump({"claims": [{**claim, **change}]}))
        with pytest.raises(InputError, match=re.escape(message)) as err:
            load_claims(path)
        assert claim["id"] in str(err.value)
    path.write_text(yaml.safe_dump({"claims": [{k: v for k, v in claim.items() if k != "test"}]}))
    with pytest.raises(InputError, match=r"lacks \['test'\]"):
        load_claims(path)
