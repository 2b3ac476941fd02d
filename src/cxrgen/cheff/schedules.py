"""Noise schedules of the Cheff cascade and the forward-process check of Weber et al. 2023, supplement 7.6.

The semantic diffusion model (SDM) uses LDM's "linear" schedule over T=1000 steps.  LDM's ``make_beta_schedule
("linear")`` is linear in sqrt(beta) (``linspace(sqrt(b0), sqrt(b1), T) ** 2``), which diffusers calls
``scaled_linear``; a schedule linear in beta itself is diffusers' ``linear``.  Both are offered; the default is
LDM's.  LDM's default maximum beta 0.0195 leaves signal of z_0 in z_T ("solarized" samples, Fig. 12/13); Cheff
raises it to 0.0295 (:data:`CHEFF_BETA_END`).  The super-resolution model uses a cosine schedule with T=2000.

``terminal_signal(betas) = sqrt(alpha_bar_T)`` is the weight of z_0 in z_T = sqrt(abar_T) z_0 + sqrt(1-abar_T) eps.
How visible that residue is depends on the latent's scale: for a latent of standard deviation ``s`` the
expected correlation of z_T with z_0 is ``a s / sqrt(a^2 s^2 + 1 - a^2)`` (``a`` = terminal signal), which
:func:`terminal_correlation` measures on real latents.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from cxrgen.errors import InputError

LDM_BETA_START = 0.0015
LDM_BETA_END = 0.0195  # LDM's default: too little noise (Weber 7.6)
CHEFF_BETA_END = 0.0295  # Cheff's fix
BETA_SCHEDULES = ("scaled_linear", "linear", "squaredcos_cap_v2")


def _check(num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str) -> None:
    if beta_schedule not in BETA_SCHEDULES:
        raise InputError(f"beta_schedule={beta_schedule!r}; expected one of {list(BETA_SCHEDULES)}")
    if int(num_train_timesteps) < 2:
        raise InputError(f"num_train_timesteps={num_train_timesteps!r}; expected an integer >= 2")
    if beta_schedule != "squaredcos_cap_v2" and not 0.0 < beta_start < beta_end < 1.0:
        raise InputError(f"beta_start={beta_start!r}, beta_end={beta_end!r}; expected 0 < beta_start < beta_end < 1")


def make_betas(
    num_train_timesteps: int = 1000,
    beta_start: float = LDM_BETA_START,
    beta_end: float = CHEFF_BETA_END,
    beta_schedule: str = "scaled_linear",
) -> torch.Tensor:
    """The betas diffusers' ``DDPMScheduler`` builds for these settings (float32, as diffusers uses them)."""
    return make_scheduler("ddpm", num_train_timesteps, beta_start, beta_end, beta_schedule).betas.clone()


def make_scheduler(
    kind: str = "ddpm",
    num_train_timesteps: int = 1000,
    beta_start: float = LDM_BETA_START,
    beta_end: float = CHEFF_BETA_END,
    beta_schedule: str = "scaled_linear",
    prediction_type: str = "epsilon",
):
    """A diffusers ``DDPMScheduler`` (training, ancestral sampling) or ``DDIMScheduler`` (Cheff samples with DDIM).

    epsilon prediction as in the paper (eq. 1-3); no sample clipping (latents are unbounded).
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    _check(num_train_timesteps, beta_start, beta_end, beta_schedule)
    common = dict(
        num_train_timesteps=int(num_train_timesteps),
        beta_start=float(beta_start),
        beta_end=float(beta_end),
        beta_schedule=beta_schedule,
        prediction_type=prediction_type,
        clip_sample=False,
    )
    if kind == "ddpm":
        # 7.1: the reverse variance is the posterior variance (1-abar_{t-1})/(1-abar_t) beta_t = "fixed_small"
        return DDPMScheduler(variance_type="fixed_small", **common)
    if kind == "ddim":
        return DDIMScheduler(set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading", **common)
    raise InputError(f"scheduler kind={kind!r}; expected 'ddpm' or 'ddim'")


def ddim_from(train_scheduler):
    """The DDIM sampler with a training scheduler's betas (the config travels, so saved folders agree)."""
    c = train_scheduler.config
    return make_scheduler("ddim", c.num_train_timesteps, c.beta_start, c.beta_end, c.beta_schedule, c.prediction_type)


def closed_form_alpha_bar_T(num_train_timesteps: int, beta_start: float, beta_end: float, beta_schedule: str) -> float:
    """prod_t (1 - beta_t) in float64, written out from the schedule's definition (independent of diffusers)."""
    _check(num_train_timesteps, beta_start, beta_end, beta_schedule)
    T = int(num_train_timesteps)
    if beta_schedule == "linear":
        betas = np.linspace(beta_start, beta_end, T, dtype=np.float64)
    elif beta_schedule == "scaled_linear":
        betas = np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), T, dtype=np.float64) ** 2
    else:  # Nichol & Dhariwal's cosine, betas capped at 0.999
        f = lambda t: math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2  # noqa: E731
        betas = np.array([min(1 - f((i + 1) / T) / f(i / T), 0.999) for i in range(T)])
    return float(np.prod(1.0 - betas))


def terminal_signal(betas) -> float:
    """sqrt(alpha_bar_T): the fraction of z_0 left in z_T (0 would be pure noise)."""
    b = torch.as_tensor(betas, dtype=torch.float64)
    if b.ndim != 1 or len(b) == 0 or not bool(((b > 0) & (b < 1)).all()):
        raise InputError(f"betas of shape {tuple(b.shape)}; expected a 1-d sequence of values in (0, 1)")
    return float(torch.sqrt(torch.prod(1.0 - b)))


def expected_terminal_correlation(signal: float, latent_std: float) -> float:
    """corr(z_T, z_0) for z_T = a z_0 + sqrt(1-a^2) eps and z_0 of standard deviation ``latent_std``."""
    a, s = float(signal), float(latent_std)
    return a * s / math.sqrt(a * a * s * s + 1.0 - a * a)


def forward_to_T(z0: torch.Tensor, betas, generator: torch.Generator | None = None) -> torch.Tensor:
    """z_T drawn from q(z_T | z_0) in closed form."""
    a = terminal_signal(betas)
    eps = torch.randn(z0.shape, generator=generator, dtype=torch.float32).to(z0)
    return a * z0 + math.sqrt(1.0 - a * a) * eps


def _centred_terminal(z0: torch.Tensor, betas, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """z_0 and a draw of z_T, each centred per sample and channel."""
    if z0.ndim != 4 or z0.shape[0] < 1:
        raise InputError(f"z0 of shape {tuple(z0.shape)}; expected latents (N, C, H, W)")
    zt = forward_to_T(z0.float(), betas, generator)
    return z0.float() - z0.float().mean(dim=(2, 3), keepdim=True), zt - zt.mean(dim=(2, 3), keepdim=True)


def terminal_correlation(z0: torch.Tensor, betas, generator: torch.Generator | None = None) -> float:
    """Pearson correlation of z_T with z_0 over all latent elements (centred per sample and channel)."""
    a, b = _centred_terminal(z0, betas, generator)
    return float((a * b).sum() / torch.sqrt((a * a).sum() * (b * b).sum()).clamp_min(1e-12))


def terminal_correlation_per_sample(z0: torch.Tensor, betas, generator: torch.Generator | None = None) -> np.ndarray:
    """(N,) Pearson correlation of z_T with z_0 per sample (same centring and noise draw as terminal_correlation)."""
    a, b = _centred_terminal(z0, betas, generator)
    num = (a * b).flatten(1).sum(1)
    return (num / torch.sqrt((a * a).flatten(1).sum(1) * (b * b).flatten(1).sum(1)).clamp_min(1e-12)).numpy()
