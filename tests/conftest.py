import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


import pytest


@pytest.fixture(scope="session")
def foundation(tmp_path_factory):
    """A tiny foundation pipeline folder, built once per test session (modules needing another one override it):
    the smoke architecture with few pretraining steps -- adaptation tests need a valid pipeline, not a good one."""
    import torch

    from cxrgen.models.foundation import FoundationConfig, build_foundation

    torch.set_num_threads(2)
    out = tmp_path_factory.mktemp("tiny_foundation") / "model"
    cfg = FoundationConfig.preset("smoke", n_images=48, vae_steps=4, unet_steps=4, preview_per_prompt=0)
    build_foundation(cfg, out, progress=False)
    return out
