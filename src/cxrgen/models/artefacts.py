"""What a model folder written by this project is, and how to load it (``cxrgen info``, the model cards).

Every trained folder is recognised by the file its trainer writes: ``adapter.json`` (an adapter of some method),
``model_index.json`` (a diffusers pipeline: the foundation, or the Cheff cascade), the Cheff stages' metadata
files, or a classifier's config. :func:`describe` says which, with the Python that loads it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cxrgen.errors import InputError

CASCADE_CLASS = "CheffPipeline"

#: kind -> (what it is, how to load it, the library its weights are in); ``{folder}`` is the folder's path
KINDS: dict[str, tuple[str, str, str]] = {
    "foundation": (
        "a Stable-Diffusion-layout text-to-image foundation (diffusers StableDiffusionPipeline folder)",
        "from diffusers import StableDiffusionPipeline\n"
        "pipe = StableDiffusionPipeline.from_pretrained({folder!r}, safety_checker=None)",
        "diffusers"),
    "pipeline": (
        "a diffusers pipeline folder ({pipeline_class})",
        "from diffusers import DiffusionPipeline\npipe = DiffusionPipeline.from_pretrained({folder!r})",
        "diffusers"),
    "adapter": (
        "an adapter of method {method!r} for the foundation {foundation!r}",
        "from cxrgen.adapt.pipeline import load_adapted_pipeline\n"
        "adapted = load_adapted_pipeline(None, {folder!r})  # the foundation named in adapter.json\n"
        "images = adapted.generate('a photo of a lung xray', n=4, seed=0)",
        "diffusers"),
    "cheff_cascade": (
        "the Cheff cascade (Weber et al. 2023): semantic diffusion model -> autoencoder decoder -> super-resolution, "
        "one diffusers DiffusionPipeline folder",
        "from cxrgen.cheff.cascade import CheffPipeline\n"
        "cascade = CheffPipeline.from_pretrained({folder!r})\n"
        "images = cascade(n=4, seed=0).images  # uint8 (n, H, W) at the SR model's size",
        "diffusers"),
    "cheff_autoencoder": (
        "the Cheff autoencoder (diffusers AutoencoderKL)",
        "from diffusers import AutoencoderKL\nvae = AutoencoderKL.from_pretrained({folder!r})",
        "diffusers"),
    "cheff_sdm": (
        "a Cheff semantic diffusion model (conditioning: {conditioning})",
        "from cxrgen.cheff.diffusion import SDM\nsdm = SDM.load({folder!r})",
        "diffusers"),
    "cheff_sr": (
        "a Cheff super-resolution diffusion model (trained on {lr_source} low-resolution inputs)",
        "from cxrgen.cheff.super_resolution import SuperResolution\nsr = SuperResolution.load({folder!r})",
        "diffusers"),
    "reference_classifier": (
        "a DenseNet-121 multi-label chest X-ray classifier (labels: {labels})",
        "from cxrgen.classify.reference import load_reference_classifier\n"
        "clf = load_reference_classifier({folder!r})\nprobs = clf.predict_proba(images)",
        "pytorch"),
    "head_classifier": (
        "a small CNN with one head per attribute (Zafar et al.'s attribute / corpus classifier; heads: {heads})",
        "from cxrgen.classify.head_classifiers import load_head_classifier\nclf = load_head_classifier({folder!r})",
        "pytorch"),
}

#: adapter method -> how diffusers alone applies it (beside the project's loader)
ADAPTER_LOADS: dict[str, str] = {
    "textual_inversion": "pipe.load_textual_inversion({folder!r} + '/learned_embeds.safetensors', token={token!r})",
    "unet": "pipe.unet = UNet2DConditionModel.from_pretrained({folder!r}, subfolder='unet')",
    "lora": "pipe.load_lora_weights({folder!r})",
    "full": "pipe.unet = UNet2DConditionModel.from_pretrained({folder!r}, subfolder='unet'); the text encoder "
            "likewise from subfolder='text_encoder'",
    "textual_projection": "from cxrgen.adapt.textual_projection import TextualProjection\n"
                          "projection = TextualProjection.from_pretrained({folder!r})  # huggingface_hub "
                          "PyTorchModelHubMixin; the in-domain encoder is named in adapter.json",
    "none": "the foundation as is",
}


@dataclass
class Artefact:
    folder: Path
    kind: str
    details: dict = field(default_factory=dict)

    @property
    def method(self) -> str | None:
        return self.details.get("method")

    @property
    def library(self) -> str:
        return KINDS[self.kind][2]

    def _fill(self, template: str) -> str:
        values = {k: v for k, v in self.details.items()}
        return template.format(folder=str(self.folder), **values)

    @property
    def description(self) -> str:
        return self._fill(KINDS[self.kind][0])

    @property
    def load(self) -> str:
        code = self._fill(KINDS[self.kind][1])
        if self.kind == "adapter" and self.method in ADAPTER_LOADS:
            code += "\n# with diffusers alone, on the foundation pipeline `pipe`:\n# " + \
                self._fill(ADAPTER_LOADS[self.method]).replace("\n", "\n# ")
        return code


def _json(path: Path) -> dict:
    try:
        out = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise InputError(f"{path} is not valid JSON ({exc}); expected the file its trainer wrote") from None
    return out if isinstance(out, dict) else {}


def describe(folder) -> Artefact:
    """Recognise a model folder written by this project; InputError naming what was expected otherwise."""
    from cxrgen.adapt.methods import ADAPTER_FILE
    from cxrgen.adapt.pipeline import read_adapter
    from cxrgen.cheff.autoencoder import META_FILE as AE_META
    from cxrgen.cheff.diffusion import META_FILE as SDM_META
    from cxrgen.cheff.super_resolution import META_FILE as SR_META
    from cxrgen.classify.reference import ARCHITECTURE, CONFIG_FILE as CLF_CONFIG
    from cxrgen.classify.head_classifiers import CLASSIFIER_META

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder; expected a model folder written by cxrgen (foundation, adapter, "
                         "Cheff stage or cascade, classifier)")
    if (folder / ADAPTER_FILE).is_file():
        adapter = read_adapter(folder)
        return Artefact(folder, "adapter", {**adapter, "foundation": adapter.get("foundation")})
    if (folder / "model_index.json").is_file():
        cls = _json(folder / "model_index.json").get("_class_name", "?")
        if cls == CASCADE_CLASS:
            return Artefact(folder, "cheff_cascade", {"pipeline_class": cls})
        if cls == "StableDiffusionPipeline":
            return Artefact(folder, "foundation", {"pipeline_class": cls})
        return Artefact(folder, "pipeline", {"pipeline_class": cls})
    if (folder / SDM_META).is_file():
        return Artefact(folder, "cheff_sdm", {"conditioning": _json(folder / SDM_META).get("conditioning")})
    if (folder / SR_META).is_file():
        return Artefact(folder, "cheff_sr", {"lr_source": _json(folder / SR_META).get("lr_source")})
    if (folder / AE_META).is_file():
        return Artefact(folder, "cheff_autoencoder")
    if (folder / CLASSIFIER_META).is_file():
        return Artefact(folder, "head_classifier", {"heads": _json(folder / CLASSIFIER_META).get("heads")})
    if (folder / CLF_CONFIG).is_file():
        cfg = _json(folder / CLF_CONFIG)
        if (cfg.get("architecture") or {}).get("name") == ARCHITECTURE:
            return Artefact(folder, "reference_classifier", {"labels": cfg.get("labels")})
    raise InputError(f"{folder} is no model folder cxrgen recognises; expected one with {ADAPTER_FILE} (adapter), "
                     f"model_index.json (foundation, Cheff cascade), {SDM_META} / {SR_META} / {AE_META} (Cheff stages), "
                     f"{CLASSIFIER_META} or a {ARCHITECTURE} {CLF_CONFIG} (classifiers)")
