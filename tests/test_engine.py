"""The training engine (cxrgen.engine): runtime config, batch split, and the one resume policy."""

import pytest
import torch

from cxrgen.checkpoint import read_checkpoint_state
from cxrgen.engine import Engine, RuntimeConfig
from cxrgen.errors import InputError


def _model_and_opt(seed: int):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    return model, opt


def test_runtime_config_rejects_bad_values():
    assert RuntimeConfig.from_dict({"mixed_precision": "bf16", "num_workers": 2}).num_workers == 2
    with pytest.raises(InputError, match="unknown runtime keys"):
        RuntimeConfig.from_dict({"workers": 2})
    with pytest.raises(InputError, match="mixed_precision"):
        RuntimeConfig.from_dict({"mixed_precision": "fp8"})
    with pytest.raises(InputError, match="gradient_accumulation_steps"):
        RuntimeConfig.from_dict({"gradient_accumulation_steps": 0})


def test_mixed_precision_the_device_cannot_do_is_reported(caplog):
    with caplog.at_level("WARNING", logger="cxrgen.engine"):
        Engine(RuntimeConfig(mixed_precision="fp16", cpu=True))
    assert "mixed_precision='fp16' is not available on cpu; this run trains in fp32" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="cxrgen.engine"):
        Engine(RuntimeConfig(mixed_precision="no", cpu=True))
    assert "not available" not in caplog.text


def test_batch_split_is_global_over_accumulation_and_processes():
    engine = Engine(RuntimeConfig(gradient_accumulation_steps=2, cpu=True))
    assert engine.device == torch.device("cpu") and engine.num_processes == 1
    assert engine.micro_batch(8) == 4 and engine.per_process_batch(8) == 4
    assert engine.local_rows(6) == slice(0, 6)
    with pytest.raises(InputError, match="batch_size=5 does not split"):
        engine.micro_batch(5)


def test_resume_policy_start_resume_or_refuse(tmp_path):
    engine = Engine(RuntimeConfig(cpu=True))
    ckpt = tmp_path / "run.partial" / "checkpoint"
    settings = {"lr": 0.1, "steps": 4, "classes": ("a", "b")}
    model, opt = _model_and_opt(0)
    assert engine.resume(ckpt, settings, {"model": model}, opt) is None  # nothing there: start

    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    engine.save(ckpt, settings, {"model": model}, opt, step=3, extra={"log": [1, 2, 3]})
    assert "cuda" in read_checkpoint_state(ckpt)["rng"]  # the CUDA RNG slot (empty while CUDA is unused)

    fresh, fresh_opt = _model_and_opt(1)
    state = engine.resume(ckpt, settings, {"model": fresh}, fresh_opt)
    assert state["step"] == 3 and state["extra"]["log"] == [1, 2, 3]
    assert torch.equal(fresh.weight, model.weight)

    with pytest.raises(InputError, match=r"different settings \(lr: 0.1 -> 0.2\).*delete .*run\.partial to start over"):
        engine.resume(ckpt, {**settings, "lr": 0.2}, {"model": fresh}, fresh_opt)
    with pytest.raises(InputError, match=r"extra: '<missing>' -> 1"):
        engine.resume(ckpt, {**settings, "extra": 1}, {"model": fresh}, fresh_opt)


def test_sampled_batches_resume_the_same_stream():
    from cxrgen.engine import SampledBatches

    full = list(SampledBatches(10, 3, seed=5, total=6))
    gen = torch.Generator().manual_seed(5)
    assert full == [torch.randint(0, 10, (3,), generator=gen).tolist() for _ in range(6)]  # the stream Cheff used
    assert list(SampledBatches(10, 3, seed=5, total=6, start=4)) == full[4:]
    shared = torch.Generator().manual_seed(5)  # a trainer's own generator: the same draws, from its stream
    assert list(SampledBatches(10, 3, total=6, generator=shared)) == full
    with pytest.raises(InputError, match="shared generator"):
        SampledBatches(10, 3, total=6, start=2, generator=shared)


def test_shards_round_trip_across_shard_boundaries(tmp_path):
    import pickle

    import numpy as np

    from cxrgen.data.shards import ShardedDataset, write_shards

    images = np.random.default_rng(0).integers(0, 255, (11, 5, 4), dtype=np.uint8)
    labels = np.arange(11, dtype=np.int64)
    folder = write_shards(tmp_path / "ds", ({"image": images[i:i + 4], "label": labels[i:i + 4]} for i in (0, 4, 8)),
                          shard_size=3, meta={"note": "x"})
    ds = ShardedDataset(folder, "image")
    assert len(ds) == 11 and ds.index["shards"] == [3, 3, 3, 2] and ds.meta == {"note": "x"}
    assert all(np.array_equal(ds[i], images[i]) for i in range(11))
    assert np.array_equal(ds.head(5), images[:5])
    both = pickle.loads(pickle.dumps(ShardedDataset(folder)))  # DataLoader workers get a copy
    assert both[10]["label"] == 10 and np.array_equal(both[7]["image"], images[7])
    with pytest.raises(IndexError):
        ds[11]
    with pytest.raises(InputError, match="no field 'mask'"):
        ShardedDataset(folder, "mask")
    with pytest.raises(InputError, match="expected a shard folder"):
        ShardedDataset(tmp_path / "missing")


def test_cheff_stage_refuses_a_checkpoint_of_other_settings(tmp_path):
    import numpy as np

    from cxrgen.cheff.super_resolution import SRConfig, train_sr

    images = np.random.default_rng(0).integers(0, 255, (2, 32, 32), dtype=np.uint8)
    cfg = SRConfig.preset("smoke", steps=2, batch_size=2)
    train_sr(images, cfg, tmp_path / "sr", checkpoint_dir=tmp_path / "sr.partial", progress=False, stop_after=1)
    other = SRConfig.preset("smoke", steps=2, batch_size=2, lr=cfg.lr * 2)
    with pytest.raises(InputError, match=r"different settings \(lr: .*delete .*sr\.partial to start over"):
        train_sr(images, other, tmp_path / "sr", checkpoint_dir=tmp_path / "sr.partial", progress=False)


def test_batchnorm_is_synchronised_across_accelerator_processes(monkeypatch, caplog):
    """N > 1 processes on accelerators: prepare() hands DDP a model whose BatchNorm layers are SyncBatchNorm over
    the same parameters (the optimizer built before stays valid). On CPU processes torch has no SyncBatchNorm (no
    kernels; DDP refuses it), so they keep per-process statistics and say so. One process: unchanged."""
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    weight = model[1].weight
    engine = Engine()
    assert engine.sync_batchnorm(model) is model  # one process
    monkeypatch.setattr(Engine, "num_processes", property(lambda self: 2))
    monkeypatch.setattr(Engine, "device", property(lambda self: torch.device("meta")))  # stands in for cuda
    synced = engine.sync_batchnorm(model)
    assert isinstance(synced[1], torch.nn.SyncBatchNorm) and synced[1].weight is weight
    seen = []
    monkeypatch.setattr(engine.accelerator, "prepare", lambda *objects: seen.extend(objects) or objects)
    engine.prepare(torch.nn.Sequential(torch.nn.BatchNorm2d(2)), "not a module")
    assert isinstance(seen[0][0], torch.nn.SyncBatchNorm) and seen[1] == "not a module"
    monkeypatch.setattr(Engine, "device", property(lambda self: torch.device("cpu")))
    plain = torch.nn.Sequential(torch.nn.BatchNorm2d(2))
    with caplog.at_level("WARNING", logger="cxrgen.engine"):
        assert engine.sync_batchnorm(plain) is plain
    assert "BatchNorm statistics are per process" in caplog.text
