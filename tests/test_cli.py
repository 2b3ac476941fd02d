"""The ``cxrgen`` console script: sample (plain and composed prompts, adapters), fid / kid, chexpert-at-k, info, and
clear errors (exit status 2, one line, no traceback). Small local models: the session's tiny foundation."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from cxrgen.cli import main
from cxrgen.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "<lung-xray>"


def _run(*args):
    """The CLI as a user runs it: a new process (``python -m cxrgen.cli``, what the console script calls)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([sys.executable, "-m", "cxrgen.cli", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.mark.slow
def test_console_script_is_declared_and_runs():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"cxrgen": "cxrgen.cli:main"}
    bad = _run("info", ROOT / "no-such-model")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.count("\n") == 1 and "no-such-model is not a folder; expected a model folder" in bad.stderr


def _ti_adapter(foundation, folder):
    from safetensors.torch import save_file

    from cxrgen.adapt.adapter_file import foundation_reference
    from cxrgen.models.registry import load_pipeline

    folder.mkdir(parents=True)
    (folder / "adapter.json").write_text(json.dumps({"method": "textual_inversion", "token": TOKEN,
                                                     "foundation": foundation_reference(foundation, folder)}))
    dim = load_pipeline(foundation).text_encoder.get_input_embeddings().weight.shape[1]
    save_file({TOKEN: torch.randn(dim, generator=torch.Generator().manual_seed(0)) * 3}, str(folder / "learned_embeds.safetensors"))
    return folder


def test_sample_plain_and_composed_prompts_with_an_adapter(foundation, tmp_path):
    from cxrgen.adapt.pipeline import load_adapted_pipeline
    from cxrgen.sampling.composable import Term, composable_generate

    adapter = _ti_adapter(foundation, tmp_path / "ti")
    out = tmp_path / "samples"
    composed = "0.7*a photo of a lung xray AND 0.3*a photo of a lung xray with a visible pleural effusion"
    assert main(["-q", "sample", "--adapter", str(adapter), "-p", "normal=a photo of a lung xray", "-p", composed,
                 "-n", "2", "--seed", "5", "--steps", "2", "--height", "32", "--out", str(out)]) == 0
    man = pd.read_csv(out / "manifest.csv")
    assert len(man) == 4 and list(man.prompt_name) == ["normal", "normal", "prompt1", "prompt1"]
    assert man.prompt_used.iloc[0] == f"a photo of a {TOKEN}"  # the token substituted, in each composed term too
    assert man.prompt_used.iloc[2] == f"0.7*a photo of a {TOKEN} AND 0.3*a photo of a {TOKEN} with a visible pleural effusion"
    assert (man.adaptation == "textual_inversion").all() and list(man.seed) == [5, 6, 5, 6]
    images = np.stack([np.asarray(Image.open(out / f)) for f in man.file])
    # the same images as the package gives: the adapter's own call for a plain prompt, composable diffusion otherwise
    ti = load_adapted_pipeline(None, adapter)
    np.testing.assert_array_equal(images[:2], ti.generate("a photo of a lung xray", 2, 5, steps=2, height=32,
                                                          progress=False))
    terms = [Term(f"a photo of a {TOKEN}", 0.7), Term(f"a photo of a {TOKEN} with a visible pleural effusion", 0.3)]
    np.testing.assert_array_equal(images[2:], composable_generate(ti, terms, 2, 5, steps=2, height=32))
    assert not np.array_equal(images[:2], images[2:])


def test_sample_errors_name_the_bad_input(foundation, tmp_path, capsys):
    assert main(["sample", "--adapter", str(tmp_path / "missing"), "-p", "x", "--out", str(tmp_path / "o")]) == 2
    assert "adapter folder" in capsys.readouterr().err
    assert main(["sample", "--foundation", str(foundation), "-p", "0.5*", "--out", str(tmp_path / "o")]) == 2
    assert "has no text after '*'" in capsys.readouterr().err
    assert main(["sample", "-p", "x", "--out", str(tmp_path / "o")]) == 2
    assert "expected --foundation" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # argparse's own usage error, also status 2
        main(["sample", "--foundation", str(foundation), "-p", "x", "-n", "0", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2 and "'0' is not an integer >= 1" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _folder(path, seed, n=12, size=16):
    rng = np.random.default_rng(seed)
    path.mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size), dtype=np.uint8)).save(path / f"{i:03d}.png")
    return path


def test_fid_and_kid_print_fid_kid_with_ci(tmp_path, monkeypatch, capsys):
    from cxrgen.data.sampling import load_image_folder
    from cxrgen.metrics import features
    from cxrgen.metrics.fid import fid_kid_with_ci

    # a small registered extractor (the CLI takes any name of the registry); the shipped ones need weights
    monkeypatch.setitem(features._REGISTRY, "toy", lambda: features.get_extractor(
        "reference", features=lambda x: torch.nn.functional.avg_pool2d(x, 4).flatten(1), size=16, normalize="unit",
        name="toy"))
    real, fake = _folder(tmp_path / "real", 0), _folder(tmp_path / "fake", 1)
    assert main(["-q", "fid", str(real), str(fake), "--extractor", "toy", "--n-boot", "20", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    ext = features.get_extractor("toy")
    want = fid_kid_with_ci(ext(load_image_folder(real)), ext(load_image_folder(fake)), n_boot=20, seed=0)
    assert printed["fid"] == pytest.approx(want["fid"]) and printed["kid_ci_high"] == pytest.approx(want["kid_ci_high"])
    assert printed["n_real"] == printed["n_fake"] == 12 and printed["extractor"] == "toy"
    assert main(["-q", "kid", str(real), str(fake), "--extractor", "toy", "--n-boot", "20"]) == 0
    line = capsys.readouterr().out
    assert line.startswith(f"KID {want['kid']:.4g} +- ") and f"95% CI {want['kid_ci_low']:.4g}-" in line
    assert "n_real=12, n_fake=12, extractor=toy (dim 16), n_boot=20" in line
    assert "biased" not in line  # KID's estimate is unbiased at any n; FID's is not with 12 images in 16 dimensions
    assert main(["-q", "fid", str(real), str(fake), "--extractor", "toy", "--n-boot", "20"]) == 0
    assert capsys.readouterr().out.rstrip().endswith("biased: fewer images than feature dimensions")
    assert main(["fid", str(real), str(tmp_path / "none"), "--extractor", "toy"]) == 2
    err = capsys.readouterr().err
    assert "image folder" in err and "does not exist" in err
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(fake / "odd.png")
    assert main(["fid", str(real), str(fake), "--extractor", "toy"]) == 2
    assert "expected one size" in capsys.readouterr().err


def test_chexpert_at_k_on_a_reports_csv(tmp_path, capsys):
    from cxrgen.data.schema import CHEXPERT_LABELS
    from cxrgen.studies.text_encoder import run_text_encoder_study

    phrases = {"Pleural Effusion": "small left pleural effusion", "Cardiomegaly": "the heart is enlarged",
               "No Finding": "no acute cardiopulmonary process"}
    rows = []
    for i in range(18):
        label = list(phrases)[i % 3]
        rows.append({"impression": f"{phrases[label]} {'stable' if i % 2 else 'new'}",
                     **{c: (1.0 if c == label else np.nan) for c in CHEXPERT_LABELS}})
    csv = tmp_path / "reports.csv"
    pd.DataFrame(rows).to_csv(csv, index=False)
    out = tmp_path / "table.csv"
    assert main(["-q", "chexpert-at-k", str(csv), "--method", "mean", "-k", "3", "--n-boot", "20",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    want = run_text_encoder_study(pd.read_csv(csv), [{"name": "minilm", "methods": ["mean"]}], k=3, n_boot=20)
    got = pd.read_csv(out)
    assert got.loc[0, "model"] == "minilm" and got.loc[0, "mean"] == pytest.approx(want.table2.loc["minilm", "mean"])
    assert "CheXpert@3 (macro, %, exact labels, 18 reports" in text and "minilm" in text
    assert main(["chexpert-at-k", str(tmp_path / "nope.csv")]) == 2
    assert main(["chexpert-at-k", str(csv), "--encoder", "no-such-encoder", "--n-boot", "0"]) == 2
    assert "no-such-encoder" in capsys.readouterr().err
    pd.DataFrame(rows).drop(columns=["Cardiomegaly"]).to_csv(tmp_path / "partial.csv", index=False)
    assert main(["chexpert-at-k", str(tmp_path / "partial.csv"), "--n-boot", "0"]) == 2
    err = capsys.readouterr().err
    assert "partial.csv" in err and "Cardiomegaly" in err


def test_info_names_the_artefact_and_how_to_load_it(foundation, tmp_path, capsys):
    from cxrgen.models.card import read_model_card

    assert main(["info", str(foundation)]) == 0
    text = capsys.readouterr().out
    assert ": foundation" in text and "StableDiffusionPipeline.from_pretrained" in text
    card = read_model_card(foundation)  # the foundation trainer wrote its card
    assert card["library_name"] == "diffusers" and card["data"]["n_images"] == 48
    assert "vae_psnr_db" in card["metrics"] and card["intended_use"] == "research use, not for clinical use"
    assert "metrics:" in text and "vae_psnr_db" in text
    adapter = _ti_adapter(foundation, tmp_path / "ti")
    assert main(["info", str(adapter)]) == 0
    text = capsys.readouterr().out
    assert "adapter (method textual_inversion)" in text and "load_textual_inversion" in text
    assert "(no model card" in text  # written by hand here, not by a trainer
    (tmp_path / "empty").mkdir()
    assert main(["info", str(tmp_path / "empty")]) == 2
    assert "no model folder cxrgen recognises" in capsys.readouterr().err


def test_errors_are_input_errors():
    from cxrgen.cli import _prompts

    assert _prompts(["a=x", "y"]) == {"a": "x", "prompt1": "y"}
    with pytest.raises(InputError, match="given twice"):
        _prompts(["a=x", "a=y"])
