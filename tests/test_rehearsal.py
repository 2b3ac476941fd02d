"""The full-size rehearsal's parts, fast: overlay configs validate and dry-run, the architecture builder gives the
published parameter counts (meta device), FLOPs per optimizer step are measured right, the table joins its sources.
The rehearsal itself (`make rehearse`, ~1 h on 2 cores) is not run here."""

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor

import pandas as pd
import pytest
import torch

from cxrgen import rehearsal
from cxrgen.errors import InputError
from cxrgen.flop_meter import measure_step_flops
from cxrgen.models.architectures import (architecture_config, build_components, count_parameters,
                                         foundation_architecture)


def test_every_paper_overlay_validates_and_dry_runs(tmp_path):
    def dry_run(paper):
        cmd = rehearsal.snakemake_command(paper, tmp_path / paper, 1, ("-n", "--quiet", "rules"))
        return paper, subprocess.run(cmd, capture_output=True, text=True, cwd=rehearsal.REPO_ROOT)

    with ThreadPoolExecutor(4) as pool:  # four Snakemake processes at once: planning is single-threaded Python
        results = list(pool.map(dry_run, rehearsal.PAPERS))
    for paper, proc in results:
        assert proc.returncode == 0, f"{paper}: {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
        jobs = proc.stdout + proc.stderr
        # the paper's own trainers are in the plan, i.e. the overlay did not cut a stage away
        expected = {"chambon2022": ["adapt_few_shot", "adapt_textual_projection", "vae_study", "synthesize"],
                    "zafar2023": ["zafar_train", "zafar_sample", "zafar_evaluate"],
                    "dewilde2023": ["dewilde_embedding", "dewilde_sweep_point", "dewilde_classifier"],
                    "weber2023": ["cheff_autoencoder", "cheff_sdm", "cheff_sr_base", "cheff_sr_fine"]}[paper]
        assert all(rule in jobs for rule in expected), (paper, jobs[-1500:])


def test_overlays_keep_the_papers_architectures():
    import yaml

    for paper, spec in rehearsal.PAPERS.items():
        paper_cfg = yaml.safe_load((rehearsal.REPO_ROOT / "configs" / f"{paper}.yaml").read_text())
        overlay = yaml.safe_load((rehearsal.REPO_ROOT / "configs" / "rehearsal" / f"{paper}.yaml").read_text())
        if spec.architecture:  # the built foundation has the paper's foundation architecture
            assert foundation_architecture(paper_cfg["foundation"]["model"]) == spec.architecture
            assert overlay["foundation"]["model"].endswith(f"models/{spec.architecture}")
    cheff = yaml.safe_load((rehearsal.REPO_ROOT / "configs" / "rehearsal" / "weber2023.yaml").read_text())["cheff"]
    widths = {"block_out_channels", "layers_per_block", "attention", "encoder", "latent_channels"}
    assert not any(widths & set(cheff.get(stage, {})) for stage in ("autoencoder", "sdm", "sr")), cheff


def test_architectures_have_the_published_parameter_counts():
    # CompVis/stable-diffusion README: "860M UNet and 123M text encoder"; SD 2: the same U-Net size, OpenCLIP-ViT/H
    v1, v2 = count_parameters("sd-v1"), count_parameters("sd-2-base")
    assert round(v1["unet"] / 1e6) == 860 and round(v1["text_encoder"] / 1e6) == 123
    assert round(v1["vae"] / 1e6) == 84 and v2["vae"] == v1["vae"]
    assert round(v2["unet"] / 1e6) == 866 and round(v2["text_encoder"] / 1e6) == 340
    assert architecture_config("sd-v1")["text_encoder"]["max_position_embeddings"] == 77
    assert foundation_architecture("sd-v1-5") == "sd-v1"
    with torch.device("meta"):  # the rehearsal's default sampling size changes no weight
        parts = build_components("sd-v1", native_size=128)
    assert parts["unet"].config.sample_size == 16 and parts["vae"].config.sample_size == 128
    assert sum(p.numel() for p in parts["unet"].parameters()) == v1["unet"]
    with pytest.raises(InputError, match="multiple of the VAE factor 8"):
        build_components("sd-v1", native_size=100)
    with pytest.raises(InputError, match="sd-v1-4"):
        foundation_architecture("sd-3")


def test_step_flops_are_the_last_optimizer_step(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Linear(4, 3, bias=False)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    x = torch.randn(2, 4)
    with measure_step_flops(tmp_path / "f.json", {"rule": "toy"}):
        with torch.no_grad():
            net(torch.randn(5, 4))  # before any step: counted in the total only
        for _ in range(3):
            opt.zero_grad()
            net(x).sum().backward()
            opt.step()
    rec = json.loads((tmp_path / "f.json").read_text())
    # forward 2*2*4*3 = 48; backward to the weight only (the input needs no gradient): 48
    assert rec["flops_per_step"] == 96
    # the no-grad forward of 5 rows (2*5*4*3 = 120) comes before the first step
    assert rec["step_totals"] == [120 + 96 * i for i in (1, 2, 3)] and rec["total_flops"] == 120 + 96 * 3
    assert rec["rule"] == "toy" and rec["failed"] is False


def test_step_flops_file_is_written_when_the_block_fails(tmp_path):
    with pytest.raises(RuntimeError):
        with measure_step_flops(tmp_path / "f.json"):
            raise RuntimeError("boom")
    assert json.loads((tmp_path / "f.json").read_text())["failed"] is True


def test_step_flops_record_peak_gpu_memory_only_on_cuda(tmp_path, monkeypatch):
    net = torch.nn.Linear(4, 3)
    with measure_step_flops(tmp_path / "cpu.json"):
        net(torch.randn(2, 4))
    assert "peak_gpu_mb" not in json.loads((tmp_path / "cpu.json").read_text())
    # a stand-in CUDA runtime: the meter resets the peak when the block starts and reads it when it ends
    peak = {"allocated": 5 * 2**30, "reserved": 0}
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device: calls.append(("reset", device)))
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: peak["allocated"])
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device: peak["reserved"])
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: "Stand-in GPU")
    with measure_step_flops(tmp_path / "gpu.json"):
        assert calls == [("reset", 0)]
        peak.update(allocated=3 * 2**30, reserved=4 * 2**30)  # what the block allocated after the reset
    rec = json.loads((tmp_path / "gpu.json").read_text())
    assert (rec["peak_gpu_mb"], rec["peak_gpu_reserved_mb"], rec["gpu"]) == (3072, 4096, "Stand-in GPU")


def test_table_joins_benchmarks_flops_logs_and_weights(tmp_path):
    from safetensors.torch import save_file

    work = tmp_path / "zafar2023"
    bench = work / "benchmarks" / "rehearsal-zafar2023"  # the overlay's run (configs/rehearsal/zafar2023.yaml)
    (bench / "zafar").mkdir(parents=True)
    (work / "flops").mkdir()
    model = work / "results" / "rehearsal-zafar2023" / "models" / "zafar" / "lora"
    model.mkdir(parents=True)
    pd.DataFrame({"s": [12.5], "h:m:s": ["0:00:12"], "max_rss": [1234.0]}).to_csv(
        bench / "zafar" / "train_lora.tsv", sep="\t", index=False)
    pd.DataFrame({"s": [1.0], "max_rss": [50.0]}).to_csv(bench / "zafar" / "render.tsv", sep="\t", index=False)
    (work / "flops" / "logs__zafar__train_lora.log.json").write_text(json.dumps(
        {"log": "logs/rehearsal-zafar2023/zafar/train_lora.log",
         "output": ["results/rehearsal-zafar2023/models/zafar/lora"], "step_totals": [10, 30],
         "flops_per_step": 20, "total_flops": 99, "peak_gpu_mb": 2048.4}))
    pd.DataFrame({"step": [1, 2], "loss": [1.0, 0.5], "seconds": [4.0, 5.5]}).to_csv(model / "training_log.csv",
                                                                                       index=False)
    save_file({"a": torch.zeros(3, 4), "b": torch.zeros(5)}, str(model / "w.safetensors"))
    table = rehearsal.collect("zafar2023", work).set_index("stage")
    row = table.loc["zafar/train_lora"]
    assert (row.wall_s, row.peak_rss_mb, row.optimizer_steps, row.s_per_step) == (12.5, 1234.0, 2, 1.5)
    assert (row.flops_per_step, row.total_flops, row.parameters, row.peak_gpu_mb) == (20, 99, 17, 2048.4)
    render = table.loc["zafar/render"]
    assert render.optimizer_steps == 0 and pd.isna(render.flops_per_step) and pd.isna(render.peak_gpu_mb)
    text = rehearsal.write_table(table.reset_index()[rehearsal.COLUMNS], {"zafar2023": 20.0}, tmp_path)
    assert "| zafar2023 | zafar/train_lora | 12.5 | 1234 | 2 | 1.50 |" in text and "| 17 | 2048 |" in text
    assert pd.read_csv(tmp_path / "table.csv").shape == (2, len(rehearsal.COLUMNS))


def test_script_context_measures_flops_only_when_asked(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from snakemake.iocontainers import Namedlist

    from cxrgen.flop_meter import ENV_VAR
    from cxrgen.workflow import script_context

    smk = SimpleNamespace(log=Namedlist([str(tmp_path / "job.log")]), rule="toy", threads=1, config={"seed": 0},
                          wildcards=Namedlist(fromdict={"name": "a"}), output=Namedlist(["out"]))
    net = torch.nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)

    def two_steps():
        for _ in range(2):
            net(torch.ones(1, 2)).sum().backward()
            opt.step()

    monkeypatch.delenv(ENV_VAR, raising=False)
    with script_context(smk):
        two_steps()
    monkeypatch.setenv(ENV_VAR, str(tmp_path / "flops"))
    assert not (tmp_path / "flops").exists()
    with script_context(smk):
        two_steps()
    (rec_file,) = (tmp_path / "flops").glob("*.json")
    rec = json.loads(rec_file.read_text())
    assert rec["rule"] == "toy" and rec["wildcards"] == {"name": "a"} and rec["flops_per_step"] == 16  # forward 2*1*2*2, weight gradient 2*2*1*2


def test_gpu_estimate_scales_training_rows_by_the_measured_flops_per_step(tmp_path):
    import sys

    sys.path.insert(0, str(rehearsal.REPO_ROOT))
    from bench import gpu_estimate

    class CheapFlops(gpu_estimate.Flops):  # counting the real models on the meta device takes a minute: stand-ins
        def unet(self, arch, res, mode="fwd"):
            return res**2 * {"fwd": 1.0, "full": 3.0, "input": 2.0, "lora": 2.1}[mode]

        def vae(self, arch, res, part):
            return 0.5 * res**2

        def text(self, arch, mode="fwd"):
            return 7.0

    f = CheapFlops()
    cfg = gpu_estimate.load_config(rehearsal.REPO_ROOT / "configs" / "zafar2023.yaml")
    small = gpu_estimate.rehearsal_config("zafar2023")
    assert small["zafar"]["methods"][0]["settings"]["resolution"] == 64 and small["foundation"] == cfg["foundation"]
    (rehearsed,) = [j for j in gpu_estimate.estimate("zafar2023", small, f) if j.stage == "zafar/train_full_ft_325"]
    counted_step = rehearsed.flops / rehearsed.steps
    pd.DataFrame([{"paper": "zafar2023", "stage": "zafar/train_full_ft_325", "flops_per_step": 2 * counted_step},
                  {"paper": "weber2023", "stage": "zafar/train_dreambooth_lora_960", "flops_per_step": 1.0}]).to_csv(
        tmp_path / "table.csv", index=False)
    plain = gpu_estimate.estimate("zafar2023", cfg, f)
    jobs = gpu_estimate.estimate("zafar2023", cfg, f)
    assert gpu_estimate.calibrate("zafar2023", jobs, f, tmp_path / "table.csv")
    for before, after in zip(plain, jobs):
        if after.stage == "zafar/train_full_ft_325":
            assert after.measured_ratio == pytest.approx(2.0) and after.flops == pytest.approx(2 * before.flops)
        else:  # the LoRA row of another paper and the sampling rows keep their counts
            assert after.measured_ratio is None and after.flops == before.flops
    assert not gpu_estimate.calibrate("zafar2023", jobs, f, tmp_path / "missing.csv")
