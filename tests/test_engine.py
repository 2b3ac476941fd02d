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
