"""Training throughput: our trainers vs the diffusers-style loops of :mod:`bench.reference_loops`.

Same foundation, images, prompts, batch size, resolution, step count, learning rate and optimizer (AdamW, constant
LR) on both sides. Ours runs the real entry points (:func:`train_textual_inversion`, :func:`train_unet`,
:func:`train_lora`) into a temporary folder and reads their per-step ``training_log.csv``; steady-state steps/s
leave out the first ``warmup`` steps on both sides. One-time costs are reported apart: ours = the whole call minus
the loop (model load, latent/text caching, writing the adapter folder and its loss-curve figure), reference = model
load and optimizer set-up.

Settings that would otherwise differ are aligned with the scripts: textual inversion without gradient clipping
(the script has none), U-Net and LoRA with ``max_grad_norm=1`` (as theirs), no prior preservation, no step samples,
and no checkpoint inside the timed steps (``checkpoint_every=steps``).
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pandas as pd

from bench import reference_loops
from bench.common import Row, chambon_prompts, chest_images, mean_rate, steady_rate

METHODS = ("textual_inversion", "unet", "lora")


def _ours(method: str, foundation, images, prompts, steps: int, batch_size: int, resolution: int, lr: float,
          seed: int, out: Path) -> dict:
    common = dict(steps=steps, batch_size=batch_size, resolution=resolution, lr=lr, seed=seed,
                  checkpoint_every=steps, lr_scheduler="constant")
    t = time.perf_counter()
    if method == "textual_inversion":
        from cxrgen.adapt.textual_inversion import TextualInversionConfig, train_textual_inversion

        cfg = TextualInversionConfig(**common, max_grad_norm=None)
        train_textual_inversion(foundation, images, None, cfg, out, progress=False)
    elif method == "unet":
        from cxrgen.adapt.unet_finetune import UNetFinetuneConfig, train_unet

        cfg = UNetFinetuneConfig(**common, max_grad_norm=1.0, prior_preservation=False)
        train_unet(foundation, images, prompts, cfg, out, progress=False)
    else:
        from cxrgen.adapt.dreambooth_lora import DreamBoothLoRAConfig, train_lora

        cfg = DreamBoothLoRAConfig(**common, max_grad_norm=1.0, rank=4, alpha=4.0, prior_preservation=False)
        train_lora(foundation, images, prompts, cfg, out, progress=False)
    wall = time.perf_counter() - t
    log = pd.read_csv(out / "training_log.csv")
    stamps = log["seconds"].astype(float).tolist()
    return {"stamps": stamps, "losses": log["loss"].tolist(), "setup_s": wall - stamps[-1], "out_dir": out}


def _reference(method: str, foundation, images, prompts, steps, batch_size, resolution, lr, seed) -> dict:
    if method == "textual_inversion":
        return reference_loops.textual_inversion(foundation, images, steps, batch_size, resolution, lr=lr, seed=seed)
    if method == "unet":
        return reference_loops.unet_finetune(foundation, images, prompts, steps, batch_size, resolution, lr=lr,
                                             seed=seed)
    return reference_loops.lora(foundation, images, prompts, steps, batch_size, resolution, lr=lr, seed=seed)


#: the miniature default learning rate of each trainer (used on both sides; it does not change the cost of a step)
LR = {"textual_inversion": 5e-3, "unet": 2e-4, "lora": 1e-3}


def run(foundation, steps: int = 30, warmup: int = 3, batch_size: int = 8, resolution: int = 64, n_images: int = 16,
        seed: int = 0, methods=METHODS, repeats: int = 2, log=print) -> list[Row]:
    """Train each method ours and reference ``repeats`` times, alternating; keep each side's best steady rate.

    Returns per method one :class:`Row` of steady steps/s (1 / median step time after ``warmup``) and one of the
    one-time seconds (best of the repeats)."""
    if steps <= warmup:
        raise ValueError(f"steps={steps} must exceed warmup={warmup}")
    images = chest_images(n_images, size=max(resolution, 64), seed=seed)
    prompts = chambon_prompts(n_images)
    rows = []
    for method in methods:
        lr = LR[method]
        runs = {"ours": [], "ref": []}
        for _ in range(max(1, repeats)):
            with tempfile.TemporaryDirectory(prefix="cxrgen-bench-train-") as tmp:
                # the reference first in every round: both then find the foundation files equally warm
                runs["ref"].append(_reference(method, foundation, images, prompts, steps, batch_size, resolution, lr,
                                              seed))
                runs["ours"].append(_ours(method, foundation, images, prompts, steps, batch_size, resolution, lr, seed,
                                          Path(tmp) / method))
        best = {}
        for side, results in runs.items():
            for res in results:
                res["rate"], res["mean_rate"] = steady_rate(res["stamps"], warmup), mean_rate(res["stamps"], warmup)
            best[side] = {**max(results, key=lambda x: x["rate"]), "setup_s": min(x["setup_s"] for x in results)}
        ours, ref = best["ours"], best["ref"]
        log(f"[training] {method}: ours {ours['rate']:.2f} steps/s, diffusers-style {ref['rate']:.2f} steps/s "
            f"({ours['rate'] / ref['rate']:.2f}x)")
        shape = f"batch {batch_size}, {resolution}px, {steps} steps ({warmup} warm-up), best of {repeats}"
        rows.append(Row("training", f"{method} steps/s", "steps/s", ours["rate"], ref["rate"], "diffusers-style loop",
                        note=shape, extra={"mean_rate_ours": ours["mean_rate"], "mean_rate_reference": ref["mean_rate"],
                                           "loss_last_ours": ours["losses"][-1], "loss_last_reference": ref["losses"][-1]}))
        rows.append(Row("training", f"{method} one-time set-up", "s", ours["setup_s"], ref["setup_s"],
                        "diffusers-style loop", lower_is_better=True, comparable=False,
                        note="not the same work (no ratio): ours = load + cache latents/text + write the adapter "
                             "folder and loss-curve figure; ref = load + optimizer"))
    return rows
