"""Shared noise-schedule and loss helpers for the foundation build and every adaptation trainer."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def make_train_scheduler(
    prediction_type: str = "v_prediction",
    zero_terminal_snr: bool = True,
    num_train_timesteps: int = 1000,
    beta_schedule: str = "scaled_linear",
    beta_start: float = 0.00085,
    beta_end: float = 0.012,
):
    """A ``DDPMScheduler`` for training (its config is copied into the saved DDIM sampler)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=num_train_timesteps,
        beta_schedule=beta_schedule,
        beta_start=beta_start,
        beta_end=beta_end,
        prediction_type=prediction_type,
        rescale_betas_zero_snr=zero_terminal_snr,
        clip_sample=False,
    )


def make_sampling_scheduler(train_scheduler):
    """DDIM with the training betas, ``trailing`` spacing (needed with zero terminal SNR)."""
    from diffusers import DDIMScheduler

    cfg = dict(train_scheduler.config)
    return DDIMScheduler(
        num_train_timesteps=cfg["num_train_timesteps"],
        beta_schedule=cfg["beta_schedule"],
        beta_start=cfg["beta_start"],
        beta_end=cfg["beta_end"],
        prediction_type=cfg["prediction_type"],
        rescale_betas_zero_snr=cfg.get("rescale_betas_zero_snr", False),
        timestep_spacing="trailing",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,  # unused by "trailing" spacing; 1 silences a diffusers deprecation warning
    )


def add_noise_and_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor):
    """Return ``(noisy_latents, target)``; the target follows ``scheduler.config.prediction_type``."""
    noisy = scheduler.add_noise(latents, noise, timesteps)
    pt = scheduler.config.prediction_type
    if pt == "epsilon":
        target = noise
    elif pt == "v_prediction":
        target = scheduler.get_velocity(latents, noise, timesteps)
    elif pt == "sample":
        target = latents
    else:
        raise ValueError(f"unknown prediction_type {pt!r}; expected epsilon, v_prediction or sample")
    return noisy, target


def compute_snr(scheduler, timesteps: torch.Tensor) -> torch.Tensor:
    ac = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return ac / (1.0 - ac).clamp_min(1e-12)


def sample_noise_and_timesteps(scheduler, latents: torch.Tensor, generator: torch.Generator | None):
    noise = torch.randn(latents.shape, generator=generator, dtype=latents.dtype).to(latents.device)
    t = torch.randint(
        0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator
    ).to(latents.device)
    return noise, t


def diffusion_loss(
    unet,
    scheduler,
    latents: torch.Tensor,
    text_emb: torch.Tensor,
    generator: torch.Generator | None = None,
    snr_gamma: float | None = None,
    noise: torch.Tensor | None = None,
    timesteps: torch.Tensor | None = None,
    noise_offset: float = 0.0,
    reduction: str = "mean",
    rows: slice | torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean diffusion training loss for one batch (optionally Min-SNR-gamma weighted).

    ``rows`` (a slice or index tensor into the batch; None = all): the rows this process computes in a
    distributed run (``Engine.local_rows``). Noise and timesteps are drawn for the whole batch first, so every
    process draws the same numbers as a single process would; ``text_emb`` holds the ``rows`` rows only.

    ``noise``/``timesteps`` are drawn from ``generator`` (a CPU ``torch.Generator``) unless given.
    ``noise_offset`` > 0 adds ``noise_offset * N(0, 1)`` per sample and channel to drawn noise (the
    diffusers ``--noise_offset`` trick); ``reduction="none"`` returns the per-sample (weighted) losses,
    shape ``(B,)``, e.g. to split a concatenated instance + prior batch.
    """
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction={reduction!r}; expected 'mean' or 'none'")
    if noise is None or timesteps is None:
        n, t = sample_noise_and_timesteps(scheduler, latents, generator)
        if noise is None and noise_offset:
            off = torch.randn(latents.shape[:2] + (1, 1), generator=generator, dtype=latents.dtype)
            n = n + noise_offset * off.to(latents.device)
        noise = n if noise is None else noise
        timesteps = t if timesteps is None else timesteps
    if rows is not None:
        latents, noise, timesteps = latents[rows], noise[rows], timesteps[rows]
    noisy, target = add_noise_and_target(scheduler, latents, noise, timesteps)
    pred = unet(noisy, timesteps, encoder_hidden_states=text_emb).sample
    if snr_gamma is None:
        if reduction == "none":
            return F.mse_loss(pred.float(), target.float(), reduction="none").flatten(1).mean(dim=1)
        return F.mse_loss(pred.float(), target.float())
    snr = compute_snr(scheduler, timesteps)
    w = torch.minimum(snr, torch.full_like(snr, float(snr_gamma)))
    if scheduler.config.prediction_type == "v_prediction":
        w = w / (snr + 1.0)
    elif scheduler.config.prediction_type == "epsilon":
        w = w / snr.clamp_min(1e-12)
    per = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=(1, 2, 3))
    return per * w if reduction == "none" else (per * w).mean()
