"""The miniature foundation's settings (:class:`FoundationConfig`), without torch: the trainer
(:mod:`cxrgen.models.foundation`) reads them, and the workflow resolves the configured preset when it builds the DAG,
so a changed preset default or a bad override is seen by ``snakemake -n`` (a changed value reruns the foundation)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass


@dataclass
class FoundationConfig:
    # corpus / images
    image_size: int = 64
    n_images: int = 2400
    # a quarter of the corpus: with 8% the default foundation drew "a photo of a lung xray" as blobs, and so did the
    # prior-preservation class images of Chambon's U-Net fine-tuning (issue 18)
    xray_share: float = 0.25
    # Chambon et al.'s premise (Table 5: the original model's effusion AUC 0.51, textual inversion's 0.74): the
    # foundation knows the findings' words from x-rays that look unlike a clinical radiograph. So every corpus x-ray
    # is captioned with its findings and drawn "washed" (a photographed film; "dataset" = the phantom renderer's
    # look), and a learned token has a look to supply (cxrgen.models.corpus; docs/showcase.md: the other designs)
    finding_share: float = 1.0
    finding_look: str = "dataset"
    xray_look: str = "washed"
    # tokenizer / text encoder
    vocab_size: int = 1024
    max_length: int = 32
    text_hidden: int = 64
    text_layers: int = 2
    text_heads: int = 2
    # VAE (len(blocks)-1 downsamplings: 3 blocks -> f=4)
    vae_block_out_channels: tuple[int, ...] = (32, 64, 64)
    vae_layers_per_block: int = 1
    vae_norm_groups: int = 16
    latent_channels: int = 4
    vae_steps: int = 400
    vae_batch: int = 16
    vae_crop: int = 32  # train on random crops (fully convolutional); last vae_full_frac at full size
    vae_full_frac: float = 0.1
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    # U-Net + joint text-encoder training
    unet_block_out_channels: tuple[int, ...] = (32, 64)
    unet_layers_per_block: int = 1
    unet_norm_groups: int = 8
    cross_attention_dim: int = 64
    attention_head_dim: int = 8
    unet_steps: int = 800  # the 20-minute CPU budget of the default run
    unet_batch: int = 16
    unet_lr: float = 1e-3
    text_lr: float = 5e-4
    warmup_steps: int = 50
    caption_dropout: float = 0.1
    snr_gamma: float | None = 5.0
    # diffusion
    prediction_type: str = "v_prediction"
    zero_terminal_snr: bool = True
    num_train_timesteps: int = 1000
    beta_schedule: str = "scaled_linear"
    # run
    seed: int = 0
    checkpoint_every: int = 250
    time_budget_s: float | None = None  # optional cap on the U-Net phase (makes the result time-dependent)
    num_threads: int | None = None
    preview_prompts: tuple[str, ...] = (
        "a photo of a lung xray",
        "a photo of a red circle",
        "a photo of a blue square",
        "a photo of a house",
    )
    preview_per_prompt: int = 4
    preview_steps: int = 20
    preview_guidance: float = 4.0

    @classmethod
    def preset(cls, name: str = "default", **overrides) -> FoundationConfig:
        presets = {
            "default": {},
            "smoke": dict(
                n_images=96, vocab_size=600, vae_block_out_channels=(8, 16, 16), vae_norm_groups=8,
                vae_steps=8, vae_batch=8, unet_block_out_channels=(16, 32), unet_norm_groups=8,
                cross_attention_dim=32, attention_head_dim=8, text_hidden=32, text_layers=1,
                unet_steps=12, unet_batch=8, checkpoint_every=5, warmup_steps=2,
                preview_per_prompt=1, preview_steps=4, preview_prompts=("a photo of a lung xray",),
            ),
        }
        if name not in presets:
            raise ValueError(f"unknown foundation preset {name!r}; expected one of {sorted(presets)}")
        return cls.from_dict({**presets[name], **overrides})

    @classmethod
    def from_dict(cls, d: dict) -> FoundationConfig:
        names = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"unknown foundation config keys {unknown}; expected some of {sorted(names)}")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**kw)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}
