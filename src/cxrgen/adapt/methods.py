"""The adaptation methods: one :class:`Method` entry per method, the one place the rest of the project asks.

An entry says what a method is called (the ``method`` of a config entry and of ``adapter.json``), which settings
class parses its ``settings`` (:mod:`cxrgen.adapt.config`), which config sections may list it, whether it trains on
images of a sample, the function that trains it, how a trained adapter folder is applied to a foundation pipeline,
the artefacts that folder holds and the rows of Chambon et al.'s Tables 4/5 a configured model stands for. The
schema's method enums, the workflow (``rules/common.smk``), :mod:`cxrgen.adapt.pipeline` and the synthesis report
all read it (``tests/test_methods.py`` checks they agree).

Adding a method: a module with its trainer (and applier), its settings class in :mod:`cxrgen.adapt.config`, and one
entry in :data:`METHODS`.

This module is torch-free: trainers and appliers are named by ``"module:function"`` and imported on first use, so
the workflow can import it (and check every method's settings, :func:`check_settings`) when it builds its job graph.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from collections.abc import Callable, Mapping

from cxrgen.adapt.config import (
    DreamBoothLoRAConfig,
    FullFinetuneConfig,
    ProjectionConfig,
    TextualInversionConfig,
    UNetFinetuneConfig,
)
from cxrgen.errors import InputError

# ------------------------------------------------------------------------------------------------ artefact names
#: Every adapted-model folder: ``{"method": ..., "foundation": ..., ...}``.
ADAPTER_FILE = "adapter.json"
#: What the shared training loop writes beside it (:func:`cxrgen.adapt.trainer.write_training_outputs`).
TRAIN_LOG_FILE = "training_log.csv"
LOSS_CURVE_STEM = "loss_curve"
TRAIN_CONFIG_FILE = "train_config.json"
#: Textual inversion: ``{token: (num_vectors, dim)}``, the file diffusers' ``load_textual_inversion`` reads.
EMBEDS_FILE = "learned_embeds.safetensors"
#: LoRA: the weights diffusers' ``save_lora_weights`` writes and ``load_lora_weights`` reads.
LORA_FILE = "pytorch_lora_weights.safetensors"
#: U-Net / full fine-tuning: ``save_pretrained`` folders replacing the foundation's modules.
UNET_DIR = "unet"
TEXT_ENCODER_DIR = "text_encoder"
#: Textual projection: the projection's weights and constructor arguments, as huggingface_hub's
#: PyTorchModelHubMixin.save_pretrained names them (TextualProjection.from_pretrained(folder) loads them) ...
PROJECTION_WEIGHTS_FILE = "model.safetensors"
PROJECTION_CONFIG_FILE = "config.json"
#: ... and as folders written before the mixin name them (still loaded)
LEGACY_PROJECTION_WEIGHTS_FILE = "projection.safetensors"
LEGACY_PROJECTION_CONFIG_FILE = "projection_config.json"

#: Config sections that list adapted models: Chambon's ``adaptation.methods`` and Zafar's ``zafar.methods``.
SECTIONS = ("adaptation", "zafar")


def _resolve(target: str) -> Callable:
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class Method:
    """One adaptation method.

    name: the ``method`` value in the config and in ``adapter.json``. config: its settings class (``None``: no
    settings, the foundation as is). sections: the config sections that may list it (:data:`SECTIONS`).
    trains_on_images: trained on a materialised sample (the workflow makes the sample an input); otherwise on
    text (textual projection) or not at all. trainer: ``"module:function"``; for methods that train on images
    ``f(foundation, sample_dir, cfg, out_dir, class_images_dir=None, progress=True) -> summary dict``.
    apply: ``"module:function"``, ``f(pipe, folder, adapter, weight)`` loads the adapter folder's weights into the
    pipeline (``weight``: the adapter's weight, only for ``stackable`` methods). prompt_encoder: ``"module:function"``,
    ``f(folder, device=...)`` returns an encoder whose ``encode(prompts)`` replaces the text encoder. stackable:
    several adapter folders can be loaded at once, weighted (LoRA). artefacts: what the folder holds besides
    :data:`ADAPTER_FILE`. paper_rows: ``f(cfg) -> {"table4": (group, row) | None, "table5": row | None}``, the rows
    of Chambon et al.'s Tables 4/5 a model with these settings stands for (``None``: none).
    """

    name: str
    config: type | None
    sections: tuple[str, ...]
    trains_on_images: bool
    trainer: str | None = None
    apply: str | None = None
    prompt_encoder: str | None = None
    stackable: bool = False
    artefacts: tuple[str, ...] = ()
    paper_rows: Callable[[object], dict] | None = None

    def parse_settings(self, settings: Mapping | None):
        """The settings class built from a config entry's ``settings`` (``None`` for a method without settings)."""
        if self.config is None:
            if settings:
                raise InputError(f"method {self.name!r} takes no settings; got keys {sorted(settings)}")
            return None
        return self.config.from_settings(settings)

    def train_function(self) -> Callable:
        return _resolve(self.trainer)

    def apply_function(self) -> Callable | None:
        return _resolve(self.apply) if self.apply else None

    def prompt_encoder_function(self) -> Callable | None:
        return _resolve(self.prompt_encoder) if self.prompt_encoder else None

    def rows(self, settings: Mapping | None) -> dict:
        """The paper rows (Tables 4/5) of a configured model of this method; see :attr:`paper_rows`."""
        if self.paper_rows is None:
            return {"table4": None, "table5": None}
        return self.paper_rows(self.parse_settings(settings))


# ------------------------------------------------------------------------------------------------ paper rows
def _inversion_rows(cfg: TextualInversionConfig) -> dict:
    # Table 4 has one row per (template, initializer word) pair; Table 5 one "Textual Inversion" row for all
    vocab = cfg.initializer if cfg.initializer in ("radiology", "lung") else None
    row = ("Token embedding training", f"{cfg.template.capitalize()}, {vocab}") if vocab else None
    return {"table4": row, "table5": "Textual Inversion"}


def _unet_rows(cfg: UNetFinetuneConfig) -> dict:
    # the paper's U-Net models: trained on no findings; on no findings and abnormality (the few-shot sample's two
    # classes), without and with prior preservation. classes=None trains on the whole sample, i.e. both classes.
    only_normal = cfg.classes is not None and set(cfg.classes) == {"No Finding"}
    if cfg.prior_preservation:
        if only_normal:
            return {"table4": None, "table5": None}
        return {"table4": ("U-Net training", "Trained on no findings and abnormality with prior"),
                "table5": "U-Net, with prior"}
    if only_normal:
        return {"table4": ("U-Net training", "Trained on no findings"), "table5": None}
    return {"table4": ("U-Net training", "Trained on no findings and abnormality"), "table5": "U-Net, no prior"}


_PROJECTION_ROWS = {
    "document": {"table4": ("Textual Projection", "Document-level projection"), "table5": "Textual Projection (Doc.)"},
    "token": {"table4": ("Textual Projection", "Token-level projection"), "table5": "Textual Projection (Token)"},
    "none": {"table4": ("Textual Projection", "No Projection"), "table5": None},
}


def _projection_rows(parsed) -> dict:
    return dict(_PROJECTION_ROWS[parsed.config.variant])


def _foundation_rows(_cfg) -> dict:
    return {"table4": ("Original model", "Stable Diffusion"), "table5": "Original Model"}


# ------------------------------------------------------------------------------------------------ the registry
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("none", config=None, sections=("adaptation",), trains_on_images=False, paper_rows=_foundation_rows),
    Method("textual_projection", config=ProjectionConfig, sections=("adaptation",), trains_on_images=False,
           trainer="cxrgen.adapt.textual_projection:train_from_config",
           prompt_encoder="cxrgen.adapt.textual_projection:load_prompt_encoder",
           artefacts=(PROJECTION_WEIGHTS_FILE, PROJECTION_CONFIG_FILE), paper_rows=_projection_rows),
    Method("textual_inversion", config=TextualInversionConfig, sections=("adaptation",), trains_on_images=True,
           trainer="cxrgen.adapt.textual_inversion:train_from_sample",
           apply="cxrgen.adapt.textual_inversion:apply_to_pipeline", artefacts=(EMBEDS_FILE,),
           paper_rows=_inversion_rows),
    Method("unet", config=UNetFinetuneConfig, sections=("adaptation",), trains_on_images=True,
           trainer="cxrgen.adapt.unet_finetune:train_from_sample", apply="cxrgen.adapt.unet_finetune:apply_to_pipeline",
           artefacts=(UNET_DIR,), paper_rows=_unet_rows),
    Method("lora", config=DreamBoothLoRAConfig, sections=("zafar",), trains_on_images=True,
           trainer="cxrgen.adapt.dreambooth_lora:train_from_sample",
           apply="cxrgen.adapt.dreambooth_lora:apply_to_pipeline", stackable=True, artefacts=(LORA_FILE,)),
    Method("full", config=FullFinetuneConfig, sections=("zafar",), trains_on_images=True,
           trainer="cxrgen.adapt.full_finetune:train_from_sample", apply="cxrgen.adapt.full_finetune:apply_to_pipeline",
           artefacts=(UNET_DIR, TEXT_ENCODER_DIR)),
)}


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise InputError(f"adaptation method {name!r}; expected one of {list(METHODS)}")
    return METHODS[name]


def section_methods(section: str) -> list[str]:
    """The method names a config section may list (the schema's enum for it)."""
    if section not in SECTIONS:
        raise InputError(f"config section {section!r}; expected one of {list(SECTIONS)}")
    return [name for name, m in METHODS.items() if section in m.sections]


def image_trained_methods() -> list[str]:
    """Methods trained on a sample's images (the workflow gives them the sample as input)."""
    return [name for name, m in METHODS.items() if m.trains_on_images]


def check_settings(entries, section: str) -> None:
    """Parse every entry's ``settings`` of config section ``section`` (a list of ``{name, method, settings}``) with
    its method's settings class; an unknown key or bad value raises :class:`InputError` naming the entry, the
    method, the key and what is expected. The workflow calls this when it builds the job graph."""
    allowed = section_methods(section)
    for entry in entries:
        where = f"config {section}.methods[{entry.get('name')}].settings"
        if entry.get("method") not in allowed:
            raise InputError(f"{where}: method {entry.get('method')!r}; expected one of {allowed}")
        try:
            METHODS[entry["method"]].parse_settings(entry.get("settings") or {})
        except InputError as exc:
            raise InputError(f"{where} (method {entry['method']!r}): {exc}") from exc


def train_from_sample(method: str, foundation, sample_dir, cfg_dict: Mapping | None, out_dir, seed: int,
                      class_images_dir=None, progress: bool = True) -> dict:
    """Train ``method`` (one that trains on images) on a materialised sample folder; ``seed`` overrides the
    settings' seed. ``class_images_dir`` caches the prior-preservation class images of the methods that use them.
    Returns the trainer's summary dict."""
    spec = get_method(method)
    if not spec.trains_on_images:
        raise InputError(f"adaptation method {method!r} does not train on a sample; expected one of "
                         f"{image_trained_methods()}")
    cfg = spec.config.from_dict({**(cfg_dict or {}), "seed": int(seed)})
    summary = spec.train_function()(foundation, sample_dir, cfg, out_dir, class_images_dir=class_images_dir,
                                    progress=progress)
    if summary.get("finished"):
        from accelerate import PartialState

        from cxrgen.models.card import update_model_card

        if PartialState().is_main_process:  # the card names the sample, which only this caller knows
            update_model_card(out_dir, data={"sample": Path(sample_dir).name})
    return summary


__all__ = ["ADAPTER_FILE", "EMBEDS_FILE", "LORA_FILE", "METHODS", "Method", "SECTIONS", "check_settings", "get_method",
           "image_trained_methods", "section_methods", "train_from_sample"]
