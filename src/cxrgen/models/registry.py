"""Model names -> Hugging Face hub ids (paper scale) or local folders (embedded default).

Nothing in this project can download: a hub id only loads if its weights are already in the
local Hugging Face cache; otherwise :func:`load_pipeline` says how to supply a local folder.
"""

from __future__ import annotations

import os
from pathlib import Path

from cxrgen.errors import InputError, WeightsUnavailableError

MODEL_REGISTRY: dict[str, str] = {
    "sd-v1-4": "CompVis/stable-diffusion-v1-4",
    "sd-v1-5": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd-2-base": "stabilityai/stable-diffusion-2-base",
}

# text encoders for the text-encoder study (paper scale); filled in by the encoder module's owner
TEXT_ENCODER_REGISTRY: dict[str, str] = {}


def _is_hub_id(name: str) -> bool:
    parts = name.split("/")
    return len(parts) == 2 and all(parts) and not name.startswith((".", "/", "~"))


def resolve_model(name_or_path: str | os.PathLike, registry: dict[str, str] | None = None) -> str:
    """Return a local folder (unchanged, absolute) or the hub id of a registry name.

    A string of the form ``owner/name`` that is not a local folder is accepted as a hub id.
    Anything else raises :class:`InputError` listing the known names.
    """
    registry = MODEL_REGISTRY if registry is None else registry
    s = str(name_or_path)
    p = Path(s).expanduser()
    if p.is_dir():
        return str(p.resolve())
    if s in registry:
        return registry[s]
    if s in registry.values():
        return s
    if _is_hub_id(s) and not p.exists() and not s.endswith(("/", os.sep)):
        return s
    known = ", ".join(sorted(registry))
    raise InputError(
        f"model {s!r} is neither an existing local folder nor a known model name; "
        f"expected a folder containing a diffusers pipeline (model_index.json), a hub id "
        f"'owner/name', or one of: {known}"
    )


def weights_unavailable_message(hub_id: str, config_key: str = "foundation.model") -> str:
    return (
        f"weights for {hub_id!r} are not in a local folder or the local Hugging Face cache, and no "
        f"network is available to download them. On a connected machine run\n"
        f"    huggingface-cli download {hub_id} --local-dir DIR\n"
        f"copy DIR here, then set `{config_key}: DIR` in the config."
    )


def load_pipeline(name_or_path, torch_dtype=None, local_files_only: bool | None = None, **kwargs):
    """Load a ``StableDiffusionPipeline`` (safety checker off) from a registry name, hub id or folder."""
    import torch
    from diffusers import StableDiffusionPipeline

    target = resolve_model(name_or_path)
    is_local = Path(target).is_dir()
    if is_local and not (Path(target) / "model_index.json").is_file():
        raise InputError(
            f"model folder {target} has no model_index.json; expected a folder written by "
            f"StableDiffusionPipeline.save_pretrained (or `huggingface-cli download <id> --local-dir`)"
        )
    if local_files_only is None:
        local_files_only = is_local or os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    kwargs.setdefault("safety_checker", None)
    kwargs.setdefault("requires_safety_checker", False)
    try:
        return StableDiffusionPipeline.from_pretrained(
            target, dtype=torch_dtype or torch.float32, local_files_only=local_files_only, **kwargs
        )
    except (OSError, ValueError) as exc:
        if is_local:
            raise
        raise WeightsUnavailableError(weights_unavailable_message(target)) from exc
