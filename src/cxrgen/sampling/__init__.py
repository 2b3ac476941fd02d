"""Sampling beyond the plain text-to-image call: composable diffusion (weighted AND prompts, Liu et al. 2022) and
latent-mask inpainting (RePaint / Stable-Diffusion style), both over the components of a diffusers
``StableDiffusionPipeline`` (de Wilde et al. 2023, sections 4.3 and 4.4)."""

from cxrgen.sampling.composable import (
    Term,
    composable_generate,
    format_prompt,
    load_embeddings_pipeline,
    parse_prompt,
)
from cxrgen.sampling.inpainting import box_mask, inpaint, latent_mask

__all__ = ["Term", "parse_prompt", "format_prompt", "composable_generate", "load_embeddings_pipeline", "box_mask",
           "latent_mask", "inpaint"]
