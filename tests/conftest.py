import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")


import pytest
from threads import TEST_THREADS


@pytest.fixture(scope="session")
def foundation(tmp_path_factory):
    """A tiny foundation pipeline folder, built once per test session (modules needing another one override it):
    the smoke architecture with few pretraining steps -- adaptation tests need a valid pipeline, not a good one."""
    import torch

    from cxrgen.models.foundation import FoundationConfig, build_foundation

    torch.set_num_threads(TEST_THREADS)
    out = tmp_path_factory.mktemp("tiny_foundation") / "model"
    cfg = FoundationConfig.preset("smoke", n_images=48, vae_steps=4, unet_steps=4, preview_per_prompt=0)
    build_foundation(cfg, out, progress=False)
    return out


# pytest-xdist hands tests out in collection order: the longest go first, so that none starts last and runs alone
LONGEST_FIRST = ("tests/test_workflow.py::test_smoke_run_completes_and_is_deterministic", "tests/test_slurm.py",
                 "tests/test_ddp.py")


def pytest_collection_modifyitems(config, items):
    def rank(item):
        return next((i for i, prefix in enumerate(LONGEST_FIRST) if item.nodeid.startswith(prefix)), len(LONGEST_FIRST))

    items.sort(key=rank)  # a stable sort: the rest keep their order
