"""GPU-hours the paper-scale configs would take: an ESTIMATE FROM FLOP COUNTS, not a measurement.

For each ``configs/<paper>.yaml`` the jobs it runs (trainings with their steps x batch x gradient accumulation,
class-image and evaluation sampling with their image counts x steps x guidance) are multiplied by FLOPs counted on
the real architectures: SD v1.x / SD 2.0-base U-Net, VAE and CLIP text encoder (published ``config.json`` values,
:data:`ARCHS`) and the Cheff cascade of ``configs/weber2023.yaml`` (built by :mod:`cxrgen.cheff`), all instantiated
on PyTorch's ``meta`` device (no weights are allocated) and run once at batch 1 under
:class:`torch.utils.flop_counter.FlopCounterMode`, forward and, for training, the real backward with the method's
``requires_grad`` pattern (e.g. textual inversion: frozen U-Net, gradients flow to the input only, ~2.1x forward;
full fine-tuning ~3x forward; gradient checkpointing adds one forward). FlopCounterMode counts matrix products,
convolutions and attention; normalisations, activations, the optimizer and data loading are left out, as is
GPU idle time, so the hours are a lower bound of what a real run takes at the stated sustained throughput.

Where the full-size rehearsal has run (``make rehearse``: the paper configs' real trainers at reduced size, FLOPs per
optimizer step measured with FlopCounterMode on the real tensors, ``rehearsal/table.csv``), each training row is scaled
by its stage's measured / counted FLOPs per step at the rehearsal's size (:func:`calibrate`; column
``measured/counted``).

Run: ``python bench/gpu_estimate.py [--tflops 30] [--fp32-tflops 10] [--config configs/zafar2023.yaml ...]``.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import REPO_ROOT, markdown_table
from cxrgen.models.architectures import FOUNDATION_ARCHITECTURE

#: sustained-throughput assumptions (TFLOP/s actually achieved, not peak)
TFLOPS_MIXED = 30.0  # V100 fp16 tensor cores: 125 TFLOP/s peak, ~25 % sustained in a diffusers training/sampling loop
TFLOPS_FP32 = 10.0  # V100 fp32: 15.7 TFLOP/s peak, ~65 % sustained
ASSUMPTION = (f"GPU-hours = counted FLOPs / sustained throughput: {TFLOPS_MIXED:g} TFLOP/s for fp16 mixed precision "
              f"(V100: 125 TFLOP/s tensor-core peak, ~25 % sustained) and {TFLOPS_FP32:g} TFLOP/s for fp32 (V100: 15.7 "
              "peak, ~65 %); an A100 is ~2-3x faster. FLOPs: matmuls, convolutions and attention of the real "
              "architectures counted by torch.utils.flop_counter on the meta device (normalisation, optimizer, data "
              "loading and idle time not counted).")

def _published_archs() -> dict:
    """The published ``config.json`` values of the foundations (reference/architectures/, cxrgen.models.architectures)."""
    from cxrgen.models.architectures import ARCHITECTURES, architecture_config

    out = {}
    for name in ARCHITECTURES:
        cfg = architecture_config(name)
        strip = lambda d: {k: v for k, v in d.items() if not k.startswith("_")}  # noqa: E731
        out[name] = {"unet": strip(cfg["unet"]), "vae": strip(cfg["vae"]), "text": cfg["text_encoder"],
                     "text_len": cfg["text_encoder"]["max_position_embeddings"]}
    return out


#: published configs (``unet/``, ``vae/``, ``text_encoder/`` ``config.json``) of the foundations the configs name
ARCHS = _published_archs()
FOUNDATIONS = FOUNDATION_ARCHITECTURE
LORA_TARGETS = ["to_k", "to_q", "to_v", "to_out.0"]

#: what each paper reports about compute (section / table cited)
PAPER_TIMES = {
    "chambon2022": {
        "textual_inversion": "1 h for 3k steps on one V100 (sec. 3.1)",
        "unet": "15 min for 400 steps on one V100 (sec. 3.1)",
        "textual_projection": "3 h (document) / 8 h (token) for 10k steps on one Quadro P5000 (sec. 3.1)",
        "total": "VAE / text-encoder studies on Apple M1 Pro / Max (sec. 3.1); no total given",
    },
    "zafar2023": {"total": "40 h cumulative on a Tesla V100-PCIE-16GB (Carbon Emissions, sec. C); devices: T4 16 GB, "
                           "V100 16 GB, RTX 3070 Ti 8 GB (IV.E)"},
    "dewilde2023": {"textual_inversion": "embeddings trained 'in a matter of hours' (Abstract)",
                    "total": "all experiments on a single RTX 2070 (sec. 1)"},
    "weber2023": {"total": "8x A100 40 GB DGX (sec. 7.3); no training or sampling time reported"},
}


# ------------------------------------------------------------------------------------------------------ counting
def _count(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as fc:
        fn()
    return float(fc.get_total_flops())


def _meta(build):
    import torch

    with torch.device("meta"):
        return build()


def _train_flops(module, run, trainable: str, input_grad=None) -> float:
    """fwd + bwd FLOPs of ``run()``: ``trainable`` = "all" | "none" (gradients to ``input_grad`` only) | "lora" |
    "embedding" (the token-embedding weight only)."""
    module.requires_grad_(trainable == "all")
    if trainable == "lora":
        for n, p in module.named_parameters():
            p.requires_grad_("lora_" in n)
    if trainable == "embedding":
        module.get_input_embeddings().weight.requires_grad_(True)
    if input_grad is not None:
        input_grad.requires_grad_(True)
    return _count(lambda: run().float().pow(2).mean().backward())


class Flops:
    """FLOPs per sample (batch 1) of the components, memoised; every model lives on the meta device."""

    def __init__(self):
        self._memo: dict = {}

    def _get(self, key, fn):
        if key not in self._memo:
            self._memo[key] = fn()
        return self._memo[key]

    # --- Stable Diffusion ------------------------------------------------------------------------------------
    def unet(self, arch: str, res: int, mode: str = "fwd") -> float:
        """mode: fwd | full (all weights) | input (frozen, gradient to the input: textual inversion) | lora."""
        def go():
            import torch
            from diffusers import UNet2DConditionModel

            a = ARCHS[arch]
            unet = _meta(lambda: UNet2DConditionModel(**a["unet"]))
            if mode == "lora":
                from peft import LoraConfig

                unet.requires_grad_(False)
                _meta(lambda: unet.add_adapter(LoraConfig(r=4, lora_alpha=4, init_lora_weights="gaussian",
                                                          target_modules=LORA_TARGETS)))
            x = torch.empty(1, 4, res // 8, res // 8, device="meta")
            emb = torch.empty(1, a["text_len"], a["unet"]["cross_attention_dim"], device="meta")
            t = torch.tensor([500], device="meta")
            run = lambda: unet(x, t, emb).sample  # noqa: E731
            if mode == "fwd":
                with torch.no_grad():
                    return _count(run)
            return _train_flops(unet, run, {"full": "all", "input": "none", "lora": "lora"}[mode],
                                input_grad=emb if mode == "input" else None)
        return self._get(("unet", arch, res, mode), go)

    def vae(self, arch: str, res: int, part: str) -> float:
        """part: enc | dec (forward)."""
        def go():
            import torch
            from diffusers import AutoencoderKL

            vae = _meta(lambda: AutoencoderKL(**ARCHS[arch]["vae"]))
            with torch.no_grad():
                if part == "enc":
                    x = torch.empty(1, 3, res, res, device="meta")
                    return _count(lambda: vae.encode(x).latent_dist.mean)
                z = torch.empty(1, 4, res // 8, res // 8, device="meta")
                return _count(lambda: vae.decode(z).sample)
        return self._get(("vae", arch, res, part), go)

    def text(self, arch: str, mode: str = "fwd") -> float:
        """mode: fwd | embedding (textual inversion: backward to the token embeddings) | full."""
        def go():
            import torch
            from transformers import CLIPTextConfig, CLIPTextModel

            a = ARCHS[arch]
            te = _meta(lambda: CLIPTextModel(CLIPTextConfig(**a["text"])))
            ids = torch.zeros(1, a["text_len"], dtype=torch.long, device="meta")
            run = lambda: te(ids)[0]  # noqa: E731
            if mode == "fwd":
                with torch.no_grad():
                    return _count(run)
            return _train_flops(te, run, "embedding" if mode == "embedding" else "all")
        return self._get(("text", arch, mode), go)

    # --- classifiers -------------------------------------------------------------------------------------------
    def resnet18_train(self, res: int) -> float:
        def go():
            import torch
            import torchvision

            net = _meta(lambda: torchvision.models.resnet18(num_classes=1))
            x = torch.empty(1, 3, res, res, device="meta")
            return _train_flops(net, lambda: net(x), "all")
        return self._get(("resnet18", res), go)

    # --- Cheff (Weber et al.) ----------------------------------------------------------------------------------
    def cheff(self, cheff_cfg, what: str, mode: str = "fwd") -> float:
        """what: ae_enc | ae_dec | ae (enc+dec) | sdm | sdm_report (U-Net + report encoder) | sr."""
        def go():
            import torch

            from cxrgen.cheff.autoencoder import build_autoencoder
            from cxrgen.cheff.diffusion import build_sdm_unet
            from cxrgen.cheff.super_resolution import build_sr_unet
            from cxrgen.cheff.text_encoder import build_report_encoder

            ae_cfg, sr_cfg = cheff_cfg.autoencoder, cheff_cfg.sr
            lat = ae_cfg.image_size // ae_cfg.downsampling_factor
            no_grad = torch.no_grad() if mode == "fwd" else torch.enable_grad()
            if what.startswith("ae"):
                ae = _meta(lambda: build_autoencoder(ae_cfg))
                x = torch.empty(1, ae_cfg.in_channels, ae_cfg.image_size, ae_cfg.image_size, device="meta")
                z = torch.empty(1, ae_cfg.latent_channels, lat, lat, device="meta")
                run = {"ae_enc": lambda: ae.encode(x).latent_dist.mean, "ae_dec": lambda: ae.decode(z).sample,
                       "ae": lambda: ae.decode(ae.encode(x).latent_dist.mean).sample}[what]
                if mode == "fwd":
                    with no_grad:
                        return _count(run)
                return _train_flops(ae, run, "all")
            t = torch.tensor([500], device="meta")
            if what == "sr":
                net = _meta(lambda: build_sr_unet(sr_cfg))
                x = torch.empty(1, 2 * sr_cfg.channels, sr_cfg.hr_size, sr_cfg.hr_size, device="meta")
                run = lambda: net(x, t).sample  # noqa: E731
                if mode == "fwd":
                    with no_grad:
                        return _count(run)
                return _train_flops(net, run, "all")
            sdm = cheff_cfg.sdm_for("report" if what == "sdm_report" else "unconditional")
            x = torch.empty(1, ae_cfg.latent_channels, lat, lat, device="meta")
            if what == "sdm":
                net = _meta(lambda: build_sdm_unet(sdm, ae_cfg.latent_channels, lat))
                run = lambda: net(x, t).sample  # noqa: E731
                modules = [net]
            else:
                enc = _meta(lambda: build_report_encoder(sdm.encoder, sdm.encoder.vocab_size))
                net = _meta(lambda: build_sdm_unet(sdm, ae_cfg.latent_channels, lat, sdm.encoder.hidden_size))
                ids = torch.zeros(1, sdm.encoder.max_length, dtype=torch.long, device="meta")
                run = lambda: net(x, t, enc(input_ids=ids).last_hidden_state).sample  # noqa: E731
                modules = [net, enc]
            if mode == "fwd":
                with no_grad:
                    return _count(run)
            for m in modules:
                m.requires_grad_(True)
            return _count(lambda: run().float().pow(2).mean().backward())
        return self._get(("cheff", what, mode), go)


# ------------------------------------------------------------------------------------------------------ jobs
@dataclass
class Job:
    what: str
    count: str  # human-readable multiplicity
    flops: float  # total FLOPs
    precision: str = "fp32"  # fp16 | fp32: which sustained rate the paper run would get
    cached: float = 0.0  # FLOPs of it that cxrgen's trainers do once instead of per step (VAE / frozen text)
    paper: str = ""
    kind: str = "train"
    steps: int = 0  # optimizer steps of a training job (FLOPs per step = flops / steps)
    stage: str = ""  # the rehearsal stage (Snakemake log stem) whose measured FLOPs/step calibrate it
    measured_ratio: float | None = None  # measured / counted FLOPs per step at rehearsal size (set by calibrate)


def _sampling_flops(f: Flops, arch: str, res: int, n: int, steps: int, guidance: float, evals: int | None = None):
    """n images: per step one U-Net forward per condition (+1 unconditional under CFG), one VAE decode each."""
    evals = evals if evals is not None else (2 if float(guidance) > 1.0 else 1)
    return n * (steps * evals * f.unet(arch, res) + f.vae(arch, res, "dec") + evals * f.text(arch))


def _train_step(f: Flops, arch: str, res: int, method: str, grad_ckpt: bool = False) -> tuple[float, float]:
    """(FLOPs per training sample as the diffusers scripts compute it, the part cxrgen caches)."""
    enc = f.vae(arch, res, "enc")
    if method == "textual_inversion":
        return enc + f.text(arch, "embedding") + f.unet(arch, res, "input"), enc
    if method == "full":
        extra = (f.unet(arch, res) + f.text(arch)) if grad_ckpt else 0.0
        return enc + f.text(arch, "full") + f.unet(arch, res, "full") + extra, enc
    unet = f.unet(arch, res, "lora" if method == "lora" else "full")
    extra = f.unet(arch, res) if grad_ckpt else 0.0
    return enc + f.text(arch) + unet + extra, enc + f.text(arch)


def _trainer_config(method: str, settings: dict):
    """The method's trainer config as the workflow builds it (the package's defaults for unset keys)."""
    from cxrgen.adapt.dreambooth_lora import DreamBoothLoRAConfig
    from cxrgen.adapt.full_finetune import FullFinetuneConfig
    from cxrgen.adapt.textual_inversion import TextualInversionConfig
    from cxrgen.adapt.unet_finetune import UNetFinetuneConfig

    classes = {"textual_inversion": TextualInversionConfig, "unet": UNetFinetuneConfig, "lora": DreamBoothLoRAConfig,
               "full": FullFinetuneConfig}
    known = {k: v for k, v in settings.items() if k in classes[method].__dataclass_fields__}
    return classes[method].from_dict(known)


def _adaptation_jobs(f, arch, method: str, name: str, settings: dict, paper: dict, stage: str = "") -> list[Job]:
    jobs = []
    c = _trainer_config(method, settings)
    res, steps, bs, ga = c.resolution, c.steps, c.batch_size, c.gradient_accumulation_steps
    prior = bool(getattr(c, "prior_preservation", False))
    per, cached = _train_step(f, arch, res, method, bool(c.gradient_checkpointing))
    samples = steps * bs * ga * (2 if prior else 1)
    prec = "fp16" if c.mixed_precision in ("fp16", "bf16") else "fp32"
    jobs.append(Job(f"{name}: {method} training", f"{steps} steps x batch {bs}" + (f" x accum {ga}" if ga > 1 else "")
                    + (" x 2 (prior)" if prior else "") + f", {res}px", samples * per, prec, samples * cached,
                    paper.get(method, ""), steps=steps, stage=stage))
    if prior:
        n = c.num_class_images
        jobs.append(Job(f"{name}: class images (prior)", f"{n} x {c.class_sample_steps} steps, CFG {c.class_guidance}",
                        _sampling_flops(f, arch, res, n, c.class_sample_steps, c.class_guidance), prec, kind="sample"))
    if getattr(c, "sample_steps", ()):
        n = len(c.sample_steps) * max(1, len(c.sample_prompts)) * c.sample_n
        jobs.append(Job(f"{name}: step samples", f"{n} images x {c.sample_inference_steps} steps",
                        _sampling_flops(f, arch, res, n, c.sample_inference_steps, c.sample_guidance), prec,
                        kind="sample"))
    return jobs


def _textual_projection_job(name: str, s: dict, paper: dict) -> Job:
    """Textual projection trains only an MLP on frozen text encoders: per caption one in-domain BERT-base and one
    CLIP text forward (~2 x 2 x 110M params x 77 tokens); batch = the trainer default (32) where the paper is silent."""
    from cxrgen.adapt.textual_projection import ProjectionConfig

    steps = int(s.get("steps", ProjectionConfig().steps))
    bs = int(s.get("batch_size") or ProjectionConfig().batch_size)
    per = 2 * 77 * (110e6 + 123e6)
    return Job(f"{name}: textual projection", f"{steps} steps x batch {bs} (BERT + CLIP forward)", steps * bs * per,
               "fp32", paper=paper.get("textual_projection", "") if s.get("variant") != "none" else "")


def chambon_jobs(cfg: dict, f: Flops) -> list[Job]:
    paper = PAPER_TIMES["chambon2022"]
    arch = FOUNDATIONS[cfg["foundation"]["model"]]
    jobs = []
    methods = cfg["adaptation"]["methods"]
    for m in methods:
        s = m.get("settings", {})
        if m["method"] == "textual_projection":
            if s.get("variant") != "none":
                jobs.append(_textual_projection_job(m["name"], s, paper))
        elif m["method"] in ("textual_inversion", "unet"):
            jobs += _adaptation_jobs(f, arch, m["method"], m["name"], s, paper, f"adapt/{m['name']}")
    syn = cfg["synthesis"]
    n_prompts = len(syn.get("prompts") or {"normal": 1, "effusion": 1, "style": 1})
    n = len(methods) * n_prompts * int(syn["n_per_prompt"])
    jobs.append(Job("synthesis (Tables 4, 5)", f"{len(methods)} models x {n_prompts} prompts x {syn['n_per_prompt']} "
                    f"images, {syn['steps']} steps, CFG {syn['guidance']}", _sampling_flops(
                        f, arch, 512, n, int(syn["steps"]), float(syn["guidance"])), "fp16", kind="sample"))
    vs = cfg.get("vae_study", {})
    n_vae = int(cfg["samples"][vs.get("sample", "frontal")].get("n", 1000))
    for res in vs.get("resolutions", [512]):
        jobs.append(Job(f"VAE study at {res}px (Table 1)", f"{n_vae} images encode + decode",
                        n_vae * (f.vae(arch, res, "enc") + f.vae(arch, res, "dec")), "fp32", kind="sample"))
    return jobs


def zafar_jobs(cfg: dict, f: Flops) -> list[Job]:
    paper = PAPER_TIMES["zafar2023"]
    z = cfg["zafar"]
    arch = FOUNDATIONS[cfg["foundation"]["model"]]
    jobs = []
    for m in z["methods"]:
        jobs += _adaptation_jobs(f, arch, m["method"], m["name"], m.get("settings", {}), paper,
                                 f"zafar/train_{m['name']}")
    e = z["evaluation"]
    from cxrgen.studies.zafar import ATTRIBUTES, DEFAULT_OOD_PROMPTS

    per_model = int(e["n_fid"]) + 2 * len(ATTRIBUTES) * int(e["n_per_prompt"]) + len(DEFAULT_OOD_PROMPTS) * int(e["n_ood"])
    models = 1 + len(z["methods"])
    jobs.append(Job("evaluation samples (FID, attributes, forgetting)", f"{models} models x {per_model} images, "
                    f"{e['steps']} steps, CFG {e['guidance']}", _sampling_flops(
                        f, arch, 512, models * per_model, int(e["steps"]), float(e["guidance"])), "fp16",
                    kind="sample"))
    return jobs


def _dewilde_embeddings(d: dict) -> set:
    """Distinct (class, vectors, cases) textual-inversion embeddings rules/dewilde.smk trains."""
    sw, healthy = d["sweep"], d["healthy"]
    emb = {(c, d["vectors"], d["cases"]) for c in d["classes"]}
    emb |= {(sw["class"], v, d["cases"]) for v in sw["vectors"]}
    emb |= {(sw["class"], d["vectors"], n) for n in sw["cases"]}
    emb |= {(c, d["vectors"], d["classifier"]["few_cases"]) for c in (healthy, d["classifier"]["finding"])}
    return emb


def _dewilde_points(d: dict) -> set:
    """Distinct sweep points (steps, cfg, vectors, cases) of Tables 1-3."""
    inf, sw = d["inference"], d["sweep"]
    base = (inf["steps"], float(inf["guidance"]), d["vectors"], d["cases"])
    pts = {(s, base[1], base[2], base[3]) for s in sw["steps"]}
    pts |= {(base[0], float(g), base[2], base[3]) for g in sw["guidance"]}
    pts |= {(base[0], base[1], v, base[3]) for v in sw["vectors"]}
    pts |= {(base[0], base[1], base[2], n) for n in sw["cases"]}
    return pts


def dewilde_jobs(cfg: dict, f: Flops) -> list[Job]:
    paper = PAPER_TIMES["dewilde2023"]
    d = cfg["dewilde"]
    arch = FOUNDATIONS[cfg["foundation"]["model"]]
    ti = d["textual_inversion"]
    res = int(ti.get("resolution", 512))
    embs = _dewilde_embeddings(d)
    per, cached = _train_step(f, arch, res, "textual_inversion")
    samples = len(embs) * int(ti["steps"]) * int(ti.get("batch_size", 1)) * int(ti.get("gradient_accumulation_steps", 1))
    jobs = [Job("textual inversion embeddings", f"{len(embs)} embeddings x {ti['steps']} steps x batch "
                f"{ti.get('batch_size', 1)}, {res}px", samples * per, "fp32", samples * cached,
                paper.get("textual_inversion", ""), steps=len(embs) * int(ti["steps"]), stage="dewilde/embedding_")]
    sw = d["sweep"]
    pts = _dewilde_points(d)
    fl = sum(_sampling_flops(f, arch, res, int(sw["n_generated"]), s, g) for s, g, _, _ in pts)
    jobs.append(Job("sweep samples (Tables 1-3)", f"{len(pts)} points x {sw['n_generated']} images, "
                    f"{min(p[0] for p in pts)}-{max(p[0] for p in pts)} steps", fl, "fp16", kind="sample"))
    inf = d["inference"]
    c = d["composability"]
    n = int(c["n_images"])
    fl = len(c["findings"]) * len(c["weights"]) * _sampling_flops(f, arch, res, n, inf["steps"], 0, evals=3)
    for spec in c.get("multi", []):
        terms = len(re.split(r"\s+AND\s+", spec["prompt"]))
        fl += _sampling_flops(f, arch, res, n, inf["steps"], 0, evals=terms + 1)
    jobs.append(Job("composable diffusion (Figs. 3, 4)", f"{len(c['findings'])} findings x {len(c['weights'])} weights "
                    f"+ {len(c.get('multi', []))} multi prompts, x {n} images", fl, "fp16", kind="sample"))
    p = d["inpainting"]
    jobs.append(Job("inpainting (Fig. 5)", f"(1 + {len(p['findings'])}) x {p['n_images']} images",
                    (1 + len(p["findings"])) * _sampling_flops(f, arch, res, int(p["n_images"]), inf["steps"],
                                                               inf["guidance"]), "fp16", kind="sample"))
    k = d["classifier"]
    cases = sorted({d["cases"], k["few_cases"]})
    n_syn = 2 * len(cases) * max(k["synthetic_per_class"])
    jobs.append(Job("synthetic training sets (Table 4)", f"{n_syn} images", _sampling_flops(
        f, arch, res, n_syn, inf["steps"], inf["guidance"]), "fp16", kind="sample"))
    from cxrgen.classify.resnet_study import table4_configurations

    confs = table4_configurations(k["real_per_class"], k["synthetic_per_class"], d["cases"], k["few_cases"])
    t = k["training"]
    runs = len(confs) * len(k["seeds"])
    jobs.append(Job("ResNet-18 classifiers (Table 4)", f"{runs} runs x {t['steps']} steps x batch {t['batch_size']}, "
                    f"{t['image_size']}px", runs * t["steps"] * t["batch_size"] * f.resnet18_train(t["image_size"]),
                    "fp32", steps=runs * t["steps"], stage="dewilde/classifier_seed"))
    return jobs


def weber_jobs(cfg: dict, f: Flops) -> list[Job]:
    from cxrgen.cheff.config import CheffConfig

    c = CheffConfig.from_dict(cfg["cheff"])
    ae, sr, ev = c.autoencoder, c.sr, c.evaluation
    jobs = [Job("autoencoder training", f"{ae.steps} steps x batch {ae.batch_size}, {ae.image_size}px (perceptual "
                "loss network not counted)", ae.steps * ae.batch_size * f.cheff(c, "ae", "train"), "fp32",
                steps=ae.steps, stage="cheff/autoencoder")]
    lat = ae.image_size // ae.downsampling_factor
    for variant, what in (("unconditional", "sdm"), ("report", "sdm_report")):
        s = c.sdm_for(variant)
        per = f.cheff(c, what, "train") + f.cheff(c, "ae_enc")
        jobs.append(Job(f"SDM training ({variant})", f"{s.steps} steps x batch {s.batch_size}, latent "
                        f"{ae.latent_channels}x{lat}x{lat}" + (" + report encoder" if variant == "report" else ""),
                        s.steps * s.batch_size * per, "fp32", s.steps * s.batch_size * f.cheff(c, "ae_enc"),
                        steps=s.steps, stage=f"cheff/sdm_{variant}"))
    jobs.append(Job("SR training", f"{sr.steps} steps x batch {sr.batch_size}, {sr.lr_size}->{sr.hr_size}px",
                    sr.steps * sr.batch_size * f.cheff(c, "sr", "train"), "fp32", steps=sr.steps, stage="cheff/sr_base"))
    jobs.append(Job("SR fine-tuning on D(z)", f"{sr.finetune_steps} steps x batch {sr.batch_size} (+ AE encode/decode)",
                    sr.finetune_steps * sr.batch_size * (f.cheff(c, "sr", "train") + f.cheff(c, "ae")), "fp32",
                    sr.finetune_steps * sr.batch_size * f.cheff(c, "ae"), steps=sr.finetune_steps,
                    stage="cheff/sr_fine"))
    sdm = c.sdm_for("unconditional")
    cascade = sdm.ddim_steps * f.cheff(c, "sdm") + f.cheff(c, "ae_dec") + sr.ddim_steps * f.cheff(c, "sr")
    jobs.append(Job("cascade samples (FID/KID)", f"{ev.n_samples} images: SDM {sdm.ddim_steps} + SR {sr.ddim_steps} "
                    "DDIM steps", ev.n_samples * cascade, "fp32", kind="sample"))
    jobs.append(Job("reconstruction workflows (Table 2)", f"{ev.n_test} images x 4 SR runs x {sr.ddim_steps} steps",
                    ev.n_test * (4 * sr.ddim_steps * f.cheff(c, "sr") + f.cheff(c, "ae")), "fp32", kind="sample"))
    return jobs


PAPERS = {"chambon2022": chambon_jobs, "zafar2023": zafar_jobs, "dewilde2023": dewilde_jobs, "weber2023": weber_jobs}


def load_config(path: Path) -> dict:
    import yaml

    return yaml.safe_load(Path(path).read_text())


#: the full-size rehearsal's table (``make rehearse``, cxrgen.rehearsal): measured FLOPs per optimizer step
REHEARSAL_TABLE = REPO_ROOT / "rehearsal" / "table.csv"


def rehearsal_config(paper: str) -> dict:
    """configs/rehearsal/<paper>.yaml over configs/<paper>.yaml; the foundation named as the paper names it (the
    rehearsal's is a folder of that architecture)."""
    from snakemake.utils import update_config

    cfg = load_config(REPO_ROOT / "configs" / f"{paper}.yaml")
    foundation = dict(cfg.get("foundation") or {})  # update_config merges nested mappings in place
    update_config(cfg, load_config(REPO_ROOT / "configs" / "rehearsal" / f"{paper}.yaml"))
    if foundation:
        cfg["foundation"] = foundation
    return cfg


def calibrate(paper: str, jobs: list[Job], f: Flops, table_path: Path = REHEARSAL_TABLE) -> bool:
    """Scale each training job by its rehearsal stage's measured / counted FLOPs per step, where the rehearsal ran.

    The rehearsal (configs/rehearsal/<paper>.yaml over the paper config) ran the real trainers at reduced size under
    FlopCounterMode; the same counting as here, applied to the rehearsal's settings, gives the counted FLOPs per step
    of each of its stages. Their ratio (what this project's trainer does per step -- cached latents, prior batches,
    recomputation -- against the diffusers-style count) then scales the paper-size count. Returns whether a table
    was read; jobs whose stage did not run keep their count (measured_ratio None)."""
    import pandas as pd

    if not Path(table_path).is_file():
        return False
    table = pd.read_csv(table_path)
    table = table[(table["paper"] == paper) & table["flops_per_step"].notna()]
    counted = {j.stage: j.flops / j.steps for j in estimate(paper, rehearsal_config(paper), f) if j.stage and j.steps}
    for job in jobs:
        rows = table[table["stage"].str.startswith(job.stage)] if job.stage else table.iloc[0:0]
        if job.stage in counted and len(rows):
            job.measured_ratio = float(rows["flops_per_step"].median()) / counted[job.stage]
            job.flops *= job.measured_ratio
            job.cached *= job.measured_ratio
    return True


def estimate(paper: str, cfg: dict, f: Flops | None = None) -> list[Job]:
    return PAPERS[paper](cfg, f or Flops())


def hours(flops: float, tflops: float) -> float:
    return flops / (tflops * 1e12) / 3600.0


def report(configs=None, tflops: float = TFLOPS_MIXED, fp32_tflops: float = TFLOPS_FP32,
           rehearsal_table: Path = REHEARSAL_TABLE) -> tuple[str, list[dict]]:
    """The Markdown tables (one per config, then totals) and the rows as dicts."""
    f = Flops()
    configs = configs or [REPO_ROOT / "configs" / f"{p}.yaml" for p in PAPERS]
    out = ["## GPU-hours estimated from FLOP counts (not measurements)", "",
           ASSUMPTION.replace(f"{TFLOPS_MIXED:g} TFLOP/s", f"{tflops:g} TFLOP/s").replace(
               f"{TFLOPS_FP32:g} TFLOP/s for fp32", f"{fp32_tflops:g} TFLOP/s for fp32"), "",
           "The `GPU-h` column uses the rate of the precision the run would use: fp16 where the config sets "
           "`mixed_precision` and for the evaluation sampling with diffusers pipelines, fp32 otherwise (the paper "
           "runs' defaults; Cheff's LDM code). `cxrgen caches` is the share of the FLOPs (the per-step VAE / "
           "autoencoder encode and frozen text encoding of the reference implementations) that this project's "
           "trainers do once per image instead of every step. ESTIMATES FROM FLOP COUNTS, NOT MEASUREMENTS.", ""]
    records, totals = [], []
    for path in configs:
        paper = Path(path).stem
        if paper not in PAPERS:
            raise SystemExit(f"no estimate for {path}; expected one of {[f'configs/{p}.yaml' for p in PAPERS]}")
        jobs = estimate(paper, load_config(path), f)
        calibrated = calibrate(paper, jobs, f, rehearsal_table)
        body = []
        tot = {"fp16": 0.0, "fp32": 0.0, "flops": 0.0}
        for j in jobs:
            rate = tflops if j.precision == "fp16" else fp32_tflops
            h = hours(j.flops, rate)
            tot["flops"] += j.flops
            tot["fp16" if j.precision == "fp16" else "fp32"] += h
            body.append([j.what, j.count, f"{j.flops / 1e15:.3g}", j.precision, f"{h:.3g}",
                         f"{hours(j.flops, tflops):.3g}", f"{j.cached / j.flops:.0%}" if j.cached else "-",
                         f"{j.measured_ratio:.2f}" if j.measured_ratio is not None else "-", j.paper])
            records.append({"config": paper, "job": j.what, "count": j.count, "pflop": j.flops / 1e15,
                            "precision": j.precision, "gpu_hours": h, "gpu_hours_fp16": hours(j.flops, tflops),
                            "cached_share": j.cached / j.flops if j.flops else 0.0, "paper": j.paper,
                            "measured_ratio": j.measured_ratio})
        body.append(["**total**", "", f"{tot['flops'] / 1e15:.3g}", "", f"{tot['fp16'] + tot['fp32']:.3g}",
                     f"{hours(tot['flops'], tflops):.3g}", "", "", PAPER_TIMES[paper].get("total", "")])
        totals.append([paper, f"{tot['flops'] / 1e15:.3g}", f"{tot['fp16'] + tot['fp32']:.3g}",
                       f"{hours(tot['flops'], tflops):.3g}", PAPER_TIMES[paper].get("total", "")])
        out += [f"### configs/{paper}.yaml (estimate)", "",
                markdown_table(["job", "count", "PFLOP", "precision", "GPU-h", f"GPU-h all fp16 ({tflops:g} TFLOP/s)",
                                "cxrgen caches", "measured/counted (rehearsal)", "paper reports"], body), ""]
        if calibrated:
            out.insert(len(out) - 3, f"Training rows with a measured/counted ratio are scaled by the FLOPs per step "
                                     f"measured in the full-size rehearsal ({Path(rehearsal_table).name}).\n")
    out += ["### totals (estimate)", "", markdown_table(["config", "PFLOP", "GPU-h", "GPU-h all fp16", "paper reports"],
                                                        totals), ""]
    return "\n".join(out), records


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", action="append", help="paper config (default: all four)")
    ap.add_argument("--tflops", type=float, default=TFLOPS_MIXED, help="sustained fp16 TFLOP/s (default %(default)s)")
    ap.add_argument("--fp32-tflops", type=float, default=TFLOPS_FP32, help="sustained fp32 TFLOP/s (default %(default)s)")
    ap.add_argument("--rehearsal-table", type=Path, default=REHEARSAL_TABLE,
                    help="the full-size rehearsal's table; its measured FLOPs/step scale the training rows where it "
                         "exists (default %(default)s)")
    a = ap.parse_args(argv)
    text, _ = report(a.config, a.tflops, a.fp32_tflops, a.rehearsal_table)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
