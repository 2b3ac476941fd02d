"""Sampling throughput: :func:`cxrgen.adapt.pipeline.load_adapted_pipeline` + ``AdaptedPipeline.generate`` (what
the ``synthesize`` rules call) vs a plain ``StableDiffusionPipeline.from_pretrained(foundation)`` called batch by
batch, with the same sampler (the foundation's own DDIM), steps, guidance, size and batch size.

The reference is given the same per-image CPU generators (image ``i`` from seed ``seed + i``), so both sides make
the same images: the benchmark checks that (max abs difference of the uint8 grey images), which shows the two
timings measure the same work. A one-image call of each side is a warm-up and is not timed; the timed figure is the
best of ``repeats`` rounds over ``n`` images (the order of the two sides alternating between rounds). The CPU-time
ratio is printed beside the wall-clock one: with one thread it is the work itself, so a wall-clock ratio far from
it shows load from other processes rather than a difference between the two.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from bench.common import Row, best_of

PROMPT = "a photo of a lung xray with a visible pleural effusion"


def _reference_pipe(foundation):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(foundation), safety_checker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _reference_generate(pipe, prompt, n, seed, steps, guidance, batch_size, size) -> np.ndarray:
    """uint8 grey (n, H, W), the output ``AdaptedPipeline.generate`` gives (so both time the same work)."""
    out = []
    for start in range(0, n, batch_size):
        b = min(batch_size, n - start)
        gens = [torch.Generator("cpu").manual_seed(seed + start + j) for j in range(b)]
        with torch.no_grad():
            imgs = pipe([prompt] * b, num_inference_steps=steps, guidance_scale=guidance, generator=gens,
                        height=size, width=size, output_type="np").images
        out.append(_grey_uint8(imgs))
    return np.concatenate(out)


def _grey_uint8(rgb: np.ndarray) -> np.ndarray:
    return (np.clip(np.asarray(rgb, np.float32).mean(-1), 0, 1) * 255).round().astype(np.uint8)


def run(foundation, n: int = 25, batch_size: int = 25, steps: int = 20, guidance: float = 4.0, seed: int = 0,
        repeats: int = 2, log=print) -> list[Row]:
    from cxrgen.adapt.pipeline import load_adapted_pipeline

    # loads: best of 2 each, so neither side pays for a cold file cache
    load_ref, ref = best_of(lambda: _reference_pipe(foundation), 2)
    load_ours, ours = best_of(lambda: load_adapted_pipeline(foundation, None, device="cpu"), 2)
    size = ours.default_size()
    kw = dict(steps=steps, guidance=guidance, batch_size=batch_size)

    ours.generate(PROMPT, 1, seed, progress=False, **kw)  # warm-up
    _reference_generate(ref, PROMPT, 1, seed, steps, guidance, batch_size, size)
    # each round times both sides, the order alternating between rounds; wall and CPU (process) time are both kept:
    # with one thread the CPU time is the work itself, so its ratio shows whether a wall-clock gap is load from
    # other processes on a shared machine
    calls = {"ours": lambda: ours.generate(PROMPT, n, seed, progress=False, **kw),
             "ref": lambda: _reference_generate(ref, PROMPT, n, seed, steps, guidance, batch_size, size)}
    wall, cpu, images = {"ours": [], "ref": []}, {"ours": [], "ref": []}, {}
    for r in range(max(1, repeats)):
        for side in (("ours", "ref") if r % 2 == 0 else ("ref", "ours")):
            t, c = time.perf_counter(), time.process_time()
            images[side] = calls[side]()
            wall[side].append(time.perf_counter() - t)
            cpu[side].append(time.process_time() - c)
    img_ours, img_ref = images["ours"], images["ref"]
    best_ours, best_ref = min(wall["ours"]), min(wall["ref"])
    cpu_ratio = min(cpu["ref"]) / min(cpu["ours"])
    diff = int(np.abs(img_ours.astype(int) - img_ref.astype(int)).max())
    r_ours, r_ref = n / best_ours, n / best_ref
    log(f"[sampling] ours {r_ours:.2f} img/s, plain diffusers {r_ref:.2f} img/s ({r_ours / r_ref:.2f}x; CPU-time "
        f"ratio {cpu_ratio:.2f}x); max |ours - reference| = {diff} grey levels")
    shape = (f"{n} images, batch {batch_size}, {steps} DDIM steps, CFG {guidance}, {size}px, best of {repeats}; "
             f"CPU-time ratio {cpu_ratio:.2f}x")
    return [
        Row("sampling", "images/s", "img/s", r_ours, r_ref, "StableDiffusionPipeline", note=shape,
            extra={"max_abs_diff_grey_levels": diff, "cpu_time_ratio": cpu_ratio}),
        Row("sampling", "pipeline load", "s", load_ours, load_ref, "StableDiffusionPipeline", lower_is_better=True,
            note=f"same images: max |diff| = {diff} grey levels"),
    ]
