"""Cheff pieces the workflow adds: MaCheX config and sources, SR crop training, the beta-check table, the cheff
config section (schema defaults -> CheffConfig), and the stage functions end to end at toy size."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from cxrgen.cheff.config import CheffConfig, MaCheXConfig
from cxrgen.cheff.super_resolution import SRConfig, SuperResolution, random_crop, train_sr
from cxrgen.errors import InputError

torch.set_num_threads(2)
REPO = Path(__file__).resolve().parents[1]


def test_machex_sources_default_to_the_configured_dataset():
    data = {"name": "phantom", "source": "phantom", "root": "data/mimic-cxr-jpg"}
    (src,) = MaCheXConfig.preset("default").resolve_sources(data)
    assert src == {"adapter": "mimic", "root": "data/mimic-cxr-jpg", "name": "MIMIC-CXR (phantom)", "options": {}}
    (nih,) = MaCheXConfig.preset("default").resolve_sources({"source": "nih", "root": "/d/nih", "csv": "/d/nih.csv"})
    assert nih["adapter"] == "nih" and nih["options"] == {"csv": "/d/nih.csv"}
    given = [{"adapter": "chexpert", "root": "/d/chexpert"}, {"adapter": "padchest", "root": "/d/padchest"}]
    assert MaCheXConfig.preset("paper", sources=given).resolve_sources(data) == given
    with pytest.raises(InputError, match=r"cheff.machex.sources\[0\]"):
        MaCheXConfig.preset("default", sources=[{"root": "/x"}]).resolve_sources(data)
    with pytest.raises(InputError, match="cheff.machex.max_train"):
        MaCheXConfig.preset("default", max_train=0)
    with pytest.raises(InputError, match="cheff.machex: unknown"):
        MaCheXConfig.preset("default", maxtrain=3)


def test_cheff_config_rejects_unknown_sections_and_keeps_machex():
    cfg = CheffConfig.from_dict({"preset": "smoke", "machex": {"max_test": 5}})
    assert cfg.machex.max_test == 5 and cfg.machex.max_train == 24
    assert CheffConfig.from_dict({"preset": "paper"}).machex.max_test == 25_000
    with pytest.raises(InputError, match="cheff: unknown key"):
        CheffConfig.from_dict({"autoencodr": {}})


def _schema_defaults(section: dict) -> dict:
    """The cheff section as the workflow sees it after schema validation fills in defaults."""
    from snakemake.utils import validate

    cfg = {"data": {}, "samples": {}, "cheff": section}
    validate(cfg, str(REPO / "schemas" / "config.schema.yaml"))
    return cfg["cheff"]


@pytest.mark.parametrize("config_file", ["config.yaml", "configs/smoke.yaml", "configs/weber2023.yaml"])
def test_config_files_map_onto_cheff_config(config_file):
    section = yaml.safe_load((REPO / config_file).read_text())["cheff"]
    cfg = CheffConfig.from_dict(_schema_defaults(section))
    assert cfg.sr.lr_size == cfg.autoencoder.image_size and cfg.sr.hr_size % cfg.sr.lr_size == 0
    assert cfg.sdm.beta_end == 0.0295
    if config_file == "config.yaml":
        assert (cfg.autoencoder.image_size, cfg.sr.hr_size) == (64, 128)
        assert cfg == CheffConfig.from_dict({})  # config.yaml spells out the package's default preset
    if config_file == "configs/weber2023.yaml":
        assert (cfg.autoencoder.image_size, cfg.sr.hr_size, cfg.sdm.ddim_steps, cfg.sr.ddim_steps) == (256, 1024, 150, 150)
        assert (cfg.autoencoder.batch_size, cfg.sdm.batch_size, cfg.sr.batch_size) == (64, 256, 32)
        assert cfg.sdm_for("report").steps == 750_000 and cfg.sr.crop_size is None
        assert {s["adapter"] for s in cfg.machex.sources} >= {"mimic", "chexpert", "padchest", "nih"}


def test_schema_rejects_bad_cheff_values_naming_the_key():
    from snakemake.exceptions import WorkflowError

    for bad, key in (({"preset": "huge"}, "huge"), ({"sdm": {"beta_end": 1.5}}, "beta_end"),
                     ({"sr": {"cropsize": 8}}, "cropsize"), ({"machex": {"sources": [{"root": "/x"}]}}, "adapter")):
        with pytest.raises(WorkflowError, match=key):
            _schema_defaults(bad)


def test_random_crop_takes_the_same_window_from_image_and_condition():
    torch.manual_seed(0)
    x = torch.arange(2 * 1 * 16 * 16, dtype=torch.float32).reshape(2, 1, 16, 16)
    a, b = random_crop(x, x + 0.5, 8)
    assert a.shape == (2, 1, 8, 8) and torch.equal(b, a + 0.5)
    for i in range(2):  # each crop is a contiguous window of its own image
        top, left = divmod(int(a[i, 0, 0, 0].item()) - i * 256, 16)
        assert torch.equal(a[i, 0], x[i, 0, top:top + 8, left:left + 8])
    with pytest.raises(InputError, match="crop size"):
        random_crop(x, x, 32)
    with pytest.raises(InputError, match="crop_size"):
        SRConfig.preset("smoke", crop_size=64)  # larger than hr_size (32)


def test_sr_trained_on_crops_upscales_whole_images(tmp_path):
    rng = np.random.default_rng(0)
    hr = rng.integers(0, 255, (6, 32, 32), dtype=np.uint8)
    cfg = SRConfig.preset("smoke", crop_size=16, steps=3)
    train_sr(hr, cfg, tmp_path / "sr", seed=0, progress=False)
    log = pd.read_csv(tmp_path / "sr" / "training_log.csv")
    assert len(log) == 3 and np.isfinite(log["loss"]).all()
    out = SuperResolution.load(tmp_path / "sr").upscale(hr[:2, ::2, ::2].copy(), steps=2, progress=False)
    assert out.shape == (2, 32, 32) and out.dtype == np.uint8


def test_stages_end_to_end_at_toy_size(tmp_path):
    """machex -> autoencoder -> SDMs -> SR base/fine -> Table 2, inpainting and the beta check, via the stage functions."""
    from cxrgen.cheff import stages
    from cxrgen.data.phantom import generate_mimic_cxr

    generate_mimic_cxr(tmp_path / "mimic", n_patients=16, studies_per_patient=(1, 2), image_size=32, seed=1, progress=False)
    cfg = CheffConfig.from_dict({"preset": "smoke", "machex": {"max_train": 12, "max_test": 4}})
    data = {"source": "phantom", "root": str(tmp_path / "mimic")}
    m = tmp_path / "machex"
    t1 = stages.run_machex(cfg.machex.resolve_sources(data), True, cfg.sr.hr_size, m, tmp_path / "t" / "table1",
                           "miniature", max_train=cfg.machex.max_train, max_test=cfg.machex.max_test)
    assert t1["dataset"].tolist() == ["MIMIC-CXR (phantom)"]
    md = (tmp_path / "t" / "table1.md").read_text()
    assert "(this run)" in md and "(paper)" in md and "ChestX-ray14" in md and "miniature" in md
    t1_csv = pd.read_csv(tmp_path / "t" / "table1.csv").set_index("dataset")
    assert t1_csv.loc["MIMIC-CXR", "source (this run)"] == "MIMIC-CXR (phantom)"  # the phantom sits in the MIMIC row
    assert t1_csv.loc["MIMIC-CXR", "n_in_machex (this run)"] == t1["n_in_machex"].iloc[0]
    assert t1_csv.loc["MIMIC-CXR", "n_in_machex (paper)"] == 243334
    with np.load(m / "images.npz") as z:
        assert z["train"].shape == (12, 32, 32) and z["test"].shape[1:] == (32, 32)
    stages.run_autoencoder(m, cfg, tmp_path / "ae", tmp_path / "ae.partial")
    for variant in ("unconditional", "report"):
        stages.run_sdm(m, tmp_path / "ae", cfg, variant, tmp_path / f"sdm_{variant}", tmp_path / f"sdm_{variant}.partial")
    stages.run_sr(m, cfg, tmp_path / "sr_base", tmp_path / "srb.partial")
    stages.run_sr(m, cfg, tmp_path / "sr_fine", tmp_path / "srf.partial", ae_dir=tmp_path / "ae", init_from=tmp_path / "sr_base")
    assert not (tmp_path / "ae.partial").exists()  # checkpoints go once the model folder is written
    t2 = stages.run_reconstruction(m, tmp_path / "ae", tmp_path / "sr_base", tmp_path / "sr_fine", cfg,
                                   tmp_path / "rec", tmp_path / "t" / "table2", tmp_path / "f" / "fig3", "miniature")
    assert len(t2) == 6 and t2["psnr"].notna().all()
    md2 = (tmp_path / "t" / "table2.md").read_text()
    assert "(paper)" in md2 and "(this run)" in md2 and (tmp_path / "f" / "fig3.png").is_file()
    pres = stages.run_inpainting(m, tmp_path / "ae", tmp_path / "sdm_unconditional", cfg, tmp_path / "inp",
                                 tmp_path / "f" / "inpaint", tmp_path / "f" / "outpaint")
    assert set(pres["task"]) == {"inpainting", "outpainting"} and (pres["known_mae_final"] == 0).all()
    beta = stages.run_beta_check(m, tmp_path / "ae", tmp_path / "sdm_unconditional", cfg, tmp_path / "beta.csv",
                                 tmp_path / "f" / "fig13", table_stem=tmp_path / "t" / "beta")
    assert beta["beta_end"].tolist() == [0.0195, 0.0295]
    assert beta["terminal_signal"].iloc[1] < beta["terminal_signal"].iloc[0]  # the higher max beta leaves less signal
    md3 = (tmp_path / "t" / "beta.md").read_text()
    assert "LDM default" in md3 and "Cheff" in md3 and "(paper)" not in md3
