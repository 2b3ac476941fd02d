"""Settings of the adaptation trainers: one dataclass per method, checked on construction (unknown keys and bad
values raise :class:`~cxrgen.errors.InputError` naming the key and what is expected), plus the paper-scale values
and the choices a setting may take.

Torch-free on purpose: the workflow builds every adaptation method's config from its ``settings`` when it builds the
job graph (:func:`cxrgen.adapt.methods.check_settings`), so a typo stops ``snakemake -n`` instead of a job that
starts after the foundation trained. The trainers (:mod:`cxrgen.adapt.textual_inversion`, ...) import their class
from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from collections.abc import Mapping

from cxrgen.data.prompts import CHAMBON_PROMPTS, ZAFAR_STYLES, class_token
from cxrgen.errors import InputError
from cxrgen.runtime import MIXED_PRECISION, RuntimeConfig
from cxrgen.text.names import METHODS as POOLING_METHODS
from cxrgen.text.names import TEXT_ENCODER_REGISTRY


def refuse_unknown_keys(d: Mapping, names, what: str) -> None:
    """Raise :class:`InputError` ``"<what> [unknown keys]; expected some of [names]"`` for keys of ``d`` not in
    ``names``."""
    unknown = sorted(set(d) - set(names))
    if unknown:
        raise InputError(f"{what} {unknown}; expected some of {sorted(names)}")


LR_SCHEDULERS = ("linear", "cosine", "cosine_with_restarts", "polynomial", "constant", "constant_with_warmup")


@dataclass
class TrainConfig:
    """Settings of the shared loop (method configs subclass this and add their own fields).

    steps: optimizer steps. batch_size: images per micro-batch summed over all processes;
    gradient_accumulation_steps micro-batches make one step, so the global batch of a step is
    ``batch_size * gradient_accumulation_steps`` whatever the process count (each of N processes takes
    ``batch_size / N`` images of every micro-batch; see :mod:`cxrgen.engine`). lr: AdamW learning rate, multiplied by ``batch_size * gradient_accumulation_steps`` when
    ``scale_lr`` (diffusers' ``--scale_lr``). lr_scheduler: a diffusers ``get_scheduler`` name; warmup: its
    warm-up steps. mixed_precision: "no" | "fp16" | "bf16" (accelerate autocast). gradient_checkpointing:
    trade compute for memory in the U-Net (and text encoder). use_ema: keep an EMA (diffusers ``EMAModel``,
    ``ema_decay``) of the trained parameters and save it instead of the raw weights. snr_gamma: Min-SNR-gamma
    loss weighting (None = plain MSE). noise_offset: diffusers' noise offset. resolution: training image
    side in pixels (images are resized, shortest side, and centre-cropped). checkpoint_every: steps between
    checkpoints. stop_after: end the run after this many steps, leaving the checkpoint (simulates a
    preempted job; the output folder is not written). num_threads: torch CPU threads (None = leave as is).
    """

    steps: int = 400
    batch_size: int = 8
    gradient_accumulation_steps: int = 1
    lr: float = 1e-4
    scale_lr: bool = False
    lr_scheduler: str = "constant"
    warmup: int = 0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_weight_decay: float = 1e-2
    adam_epsilon: float = 1e-8
    max_grad_norm: float | None = 1.0
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
    use_ema: bool = False
    ema_decay: float = 0.9999
    snr_gamma: float | None = None
    noise_offset: float = 0.0
    seed: int = 0
    checkpoint_every: int = 100
    resolution: int = 64
    stop_after: int | None = None
    num_threads: int | None = None

    # -- construction / validation ---------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict | None) -> TrainConfig:
        d = dict(d or {})
        refuse_unknown_keys(d, [f.name for f in dataclasses.fields(cls)], f"unknown {cls.__name__} keys")
        cfg = cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})
        cfg.validate()
        return cfg

    @classmethod
    def from_settings(cls, settings: Mapping | None) -> TrainConfig:
        """A workflow ``settings`` block is exactly the config (the runtime keys are fields of it)."""
        return cls.from_dict(settings)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    def validate(self) -> None:
        def need(ok: bool, key: str, expected: str) -> None:
            if not ok:
                raise InputError(f"{type(self).__name__}.{key}={getattr(self, key)!r}; expected {expected}")

        for key in ("steps", "batch_size", "gradient_accumulation_steps", "checkpoint_every", "resolution"):
            need(isinstance(getattr(self, key), int) and getattr(self, key) >= 1, key, "an integer >= 1")
        need(isinstance(self.warmup, int) and self.warmup >= 0, "warmup", "an integer >= 0")
        need(float(self.lr) > 0, "lr", "a positive learning rate")
        need(self.lr_scheduler in LR_SCHEDULERS, "lr_scheduler", f"one of {list(LR_SCHEDULERS)}")
        need(self.mixed_precision in MIXED_PRECISION, "mixed_precision", f"one of {list(MIXED_PRECISION)}")
        need(self.snr_gamma is None or float(self.snr_gamma) > 0, "snr_gamma", "None or a positive number")
        need(float(self.noise_offset) >= 0, "noise_offset", "a number >= 0")
        need(0.0 < float(self.ema_decay) < 1.0, "ema_decay", "a number in (0, 1)")
        need(self.max_grad_norm is None or float(self.max_grad_norm) > 0, "max_grad_norm", "None or > 0")
        need(self.stop_after is None or (isinstance(self.stop_after, int) and self.stop_after >= 1),
             "stop_after", "None or an integer >= 1")
        classes = getattr(self, "classes", None)  # method configs that filter a few-shot sample
        need(classes is None or (isinstance(classes, (list, tuple)) and len(classes) > 0
                                 and all(isinstance(c, str) for c in classes)),
             "classes", "None or a non-empty list of class labels such as ['No Finding', 'Pleural Effusion']")

    @property
    def effective_lr(self) -> float:
        scale = self.batch_size * self.gradient_accumulation_steps if self.scale_lr else 1
        return float(self.lr) * scale


# ------------------------------------------------------------------------------------------------ textual inversion
#: diffusers examples/textual_inversion/textual_inversion.py, ``imagenet_templates_small``.
OBJECT_TEMPLATES = (
    "a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
    "a photo of a clean {}", "a photo of a dirty {}", "a dark photo of the {}", "a photo of my {}",
    "a photo of the cool {}", "a close-up photo of a {}", "a bright photo of the {}",
    "a cropped photo of a {}", "a photo of the {}", "a good photo of the {}", "a photo of one {}",
    "a close-up photo of the {}", "a rendition of the {}", "a photo of the clean {}", "a rendition of a {}",
    "a photo of a nice {}", "a good photo of a {}", "a photo of the nice {}", "a photo of the small {}",
    "a photo of the weird {}", "a photo of the large {}", "a photo of a cool {}", "a photo of a small {}",
)
#: diffusers examples/textual_inversion/textual_inversion.py, ``imagenet_style_templates_small``.
STYLE_TEMPLATES = (
    "a painting in the style of {}", "a rendering in the style of {}", "a cropped painting in the style of {}",
    "the painting in the style of {}", "a clean painting in the style of {}",
    "a dirty painting in the style of {}", "a dark painting in the style of {}",
    "a picture in the style of {}", "a cool painting in the style of {}",
    "a close-up painting in the style of {}", "a bright painting in the style of {}",
    "a cropped painting in the style of {}", "a good painting in the style of {}",
    "a close-up painting in the style of {}", "a rendition in the style of {}",
    "a nice painting in the style of {}", "a small painting in the style of {}",
    "a weird painting in the style of {}", "a large painting in the style of {}",
)
TEMPLATES = {"object": OBJECT_TEMPLATES, "style": STYLE_TEMPLATES}

#: Paper-scale settings. Chambon et al. give only the step count (3k steps, 1 h on a V100) and the base
#: model (SD v1.4, 512 px); the rest is the diffusers textual-inversion README command that the 3000 steps
#: match: lr 5e-4 scaled by batch 1 x gradient accumulation 4 (effective 2e-3), constant schedule, no
#: warm-up, AdamW weight decay 1e-2, one vector, token <lung-xray>.
TEXTUAL_INVERSION_PAPER = {
    "steps": 3000, "batch_size": 1, "gradient_accumulation_steps": 4, "lr": 5e-4, "scale_lr": True,
    "lr_scheduler": "constant", "warmup": 0, "adam_weight_decay": 1e-2, "resolution": 512,
    "mixed_precision": "no", "checkpoint_every": 500, "token": "<lung-xray>", "num_vectors": 1,
    "max_grad_norm": None,
}


@dataclass
class TextualInversionConfig(TrainConfig):
    """Textual inversion settings (shared loop fields: see :class:`TrainConfig`).

    token: placeholder, e.g. ``<lung-xray>``. num_vectors: embedding vectors for it (de Wilde et al. sweep
    8-64). template: "object" or "style" prompt templates. initializer: word whose embedding starts every
    vector ("radiology" or "lung" in Chambon et al.; a word of several BPE tokens starts from the mean of their
    embeddings). init_per_vector: the initializer's tokens start the vectors in order instead (each token over
    its share of the vectors, or each vector from the mean of its share of the tokens; the stable-diffusion-webui's
    "initialization text"), so a phrase such as "a photo of a lung xray" starts an embedding at that phrase.
    classes: few-shot class labels to train on (``train_from_sample`` filters the manifest by them; None = all
    images).

    Miniature defaults (the embedded workflow; ~1-2 min on 2 CPU cores with the default foundation): 400
    steps, batch 8, lr 5e-3 constant; the miniature foundation's embeddings are small (width 64), so a
    larger step than SD's 2e-3 effective lr moves them within the budget. Paper scale: :data:`TEXTUAL_INVERSION_PAPER`.
    """

    steps: int = 400
    batch_size: int = 8
    lr: float = 5e-3
    checkpoint_every: int = 100
    token: str = "<lung-xray>"
    num_vectors: int = 1
    template: str = "object"
    initializer: str = "radiology"
    init_per_vector: bool = False
    classes: tuple[str, ...] | None = None
    #: train on this many of the given images (de Wilde et al.'s training-case sweep, 5-100); a seeded permutation's
    #: prefix, so smaller subsets are nested in larger ones. None = all images.
    max_images: int | None = None

    @classmethod
    def paper(cls, **overrides) -> TextualInversionConfig:
        return cls.from_dict({**TEXTUAL_INVERSION_PAPER, **overrides})

    def validate(self) -> None:
        super().validate()
        if self.template not in TEMPLATES:
            raise InputError(f"TextualInversionConfig.template={self.template!r}; expected one of {list(TEMPLATES)}")
        if not (isinstance(self.num_vectors, int) and self.num_vectors >= 1):
            raise InputError(f"TextualInversionConfig.num_vectors={self.num_vectors!r}; expected an integer >= 1")
        if not isinstance(self.token, str) or not self.token.strip() or any(c.isspace() for c in self.token):
            raise InputError(f"TextualInversionConfig.token={self.token!r}; expected one word such as '<lung-xray>'")
        if not isinstance(self.initializer, str) or not self.initializer.strip():
            raise InputError(f"TextualInversionConfig.initializer={self.initializer!r}; expected a word such as "
                             f"'radiology' or 'lung'")
        if not isinstance(self.init_per_vector, bool):
            raise InputError(f"TextualInversionConfig.init_per_vector={self.init_per_vector!r}; expected true or false")
        if self.max_images is not None and not (isinstance(self.max_images, int) and self.max_images >= 1):
            raise InputError(f"TextualInversionConfig.max_images={self.max_images!r}; expected an integer >= 1 or None")


# ------------------------------------------------------------------------------------------------ U-Net fine-tuning
#: Paper-scale settings. Chambon et al. give 400 steps (15 min on a V100) on SD v1.4; the rest follows the
#: diffusers DreamBooth README command those 400 steps match: lr 5e-6, batch 1, constant schedule, no
#: warm-up, prior_loss_weight 1.0, 200 class images (generated with the pipeline defaults: 50 steps,
#: guidance 7.5), 512 px. The class prompt is not stated: "a photo of a lung xray" is the paper's base prompt.
UNET_PAPER = {
    "steps": 400, "batch_size": 1, "gradient_accumulation_steps": 1, "lr": 5e-6, "scale_lr": False,
    "lr_scheduler": "constant", "warmup": 0, "adam_weight_decay": 1e-2, "resolution": 512,
    "max_grad_norm": 1.0, "checkpoint_every": 100, "prior_loss_weight": 1.0, "num_class_images": 200,
    "class_prompt": CHAMBON_PROMPTS["normal"], "class_sample_steps": 50, "class_guidance": 7.5,
    "class_batch_size": 4,
}


def check_prior_settings(cfg) -> None:
    """The DreamBooth prior-preservation fields of :class:`UNetFinetuneConfig` and :class:`DreamBoothLoRAConfig`."""
    name = type(cfg).__name__
    for key in ("num_class_images", "class_sample_steps", "class_batch_size"):
        v = getattr(cfg, key)
        if not (isinstance(v, int) and v >= 1):
            raise InputError(f"{name}.{key}={v!r}; expected an integer >= 1")
    if float(cfg.prior_loss_weight) < 0:
        raise InputError(f"{name}.prior_loss_weight={cfg.prior_loss_weight!r}; expected >= 0")
    if not isinstance(cfg.class_prompt, str) or not cfg.class_prompt.strip():
        raise InputError(f"{name}.class_prompt={cfg.class_prompt!r}; expected a prompt")


def class_embedding_settings(settings: Mapping, label: str, vectors: int, cases: int) -> dict:
    """Textual-inversion settings of one class embedding (de Wilde et al.): ``settings`` with the class token, its
    vector count, the class as the only training class and ``cases`` training images. An ``initializer`` given as
    a mapping ``{class: text}`` starts each class's embedding from its own text."""
    out = {**settings, "token": class_token(label), "num_vectors": int(vectors), "classes": [label],
           "max_images": int(cases)}
    init = settings.get("initializer")
    if isinstance(init, Mapping):
        if label not in init:
            raise InputError(f"textual_inversion.initializer names no text for class {label!r} (it has "
                             f"{sorted(init)}); expected one entry per embedded class")
        out["initializer"] = init[label]
    return out


@dataclass
class UNetFinetuneConfig(TrainConfig):
    """U-Net fine-tuning settings (shared loop fields: see :class:`TrainConfig`).

    prior_preservation: add the DreamBooth prior loss. prior_loss_weight: its weight. num_class_images:
    class images generated by the foundation for ``class_prompt`` (``class_sample_steps`` DDIM steps,
    guidance ``class_guidance``, ``class_batch_size`` per sampling call). classes: few-shot class labels
    to train on (``train_from_sample`` filters the manifest by them; Chambon's "trained on no findings" is
    ``[No Finding]``; None = all).

    Miniature defaults (the embedded workflow; ~1.5 min on 2 CPU cores with the default foundation without
    prior, about twice that with it): 400 steps (the paper's count), batch 8 (+8 class images), lr 2e-4
    constant; the tiny U-Net needs a far larger lr than SD's 5e-6 to move in 400 steps. Paper: :data:`UNET_PAPER`.
    """

    steps: int = 400
    batch_size: int = 8
    lr: float = 2e-4
    checkpoint_every: int = 100
    prior_preservation: bool = False
    prior_loss_weight: float = 1.0
    num_class_images: int = 40
    class_prompt: str = CHAMBON_PROMPTS["normal"]
    class_sample_steps: int = 20
    class_guidance: float = 4.0
    class_batch_size: int = 20
    classes: tuple[str, ...] | None = None

    @classmethod
    def paper(cls, **overrides) -> UNetFinetuneConfig:
        return cls.from_dict({**UNET_PAPER, **overrides})

    def validate(self) -> None:
        super().validate()
        check_prior_settings(self)


# ---------------------------------------------------------------------------- Zafar: DreamBooth + LoRA, full fine-tuning
UNET_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")

#: Paper-scale settings (SD v1.5, 512 px). Zafar et al. give the data (960 mixed / 325 normal AP/PA PadChest
#: images, the highest-complexity prompt, prior preservation: VI.A "with prior preservation") and sample epochs
#: (Figs. 6/7, up to 180) but no optimiser settings, rank or batch size; those follow diffusers'
#: ``train_dreambooth_lora.py`` README command: rank 4 (alpha 4), lr 1e-4 constant, batch 1, 500 steps, U-Net
#: attention projections only, prior_loss_weight 1.0, 200 class images at 50 steps / guidance 7.5.
LORA_PAPER = {
    "steps": 500, "batch_size": 1, "gradient_accumulation_steps": 1, "lr": 1e-4, "lr_scheduler": "constant",
    "warmup": 0, "resolution": 512, "rank": 4, "alpha": 4.0, "target_modules": list(UNET_TARGETS),
    "train_text_encoder": False, "prior_preservation": True, "prior_loss_weight": 1.0, "num_class_images": 200,
    "class_prompt": "chest x-ray", "class_sample_steps": 50, "class_guidance": 7.5, "class_batch_size": 4,
    "prompt_level": "full", "checkpoint_every": 100,
}


@dataclass
class ZafarTrainConfig(TrainConfig):
    """Fields shared by the Zafar trainers (the loop's fields: see :class:`TrainConfig`).

    prompt_level: :data:`cxrgen.data.prompts.ZAFAR_STYLES` ("modality" = "chest x-ray" ... "full"; "compact" is
    this project's short form for a short text context). normal_only: train only on No Finding images without a
    positive or uncertain finding (Zafar's "325 normal" runs). max_images: at most this many images (a seeded
    random subset; None = all). sample_steps: training steps at which the step samples are drawn (0 = before the
    first step). sample_prompts: their prompts (empty = the first training prompt). sample_n: images per prompt
    (image i from seed ``seed + i`` at every step). sample_inference_steps / sample_guidance: DDIM steps and CFG.
    """

    prompt_level: str = "full"
    normal_only: bool = False
    max_images: int | None = None
    sample_steps: tuple[int, ...] = ()
    sample_prompts: tuple[str, ...] = ()
    sample_n: int = 2
    sample_inference_steps: int = 10
    sample_guidance: float = 4.0

    def validate(self) -> None:
        super().validate()
        name = type(self).__name__
        if self.prompt_level not in ZAFAR_STYLES:
            raise InputError(f"{name}.prompt_level={self.prompt_level!r}; expected one of {list(ZAFAR_STYLES)}")
        if self.max_images is not None and not (isinstance(self.max_images, int) and self.max_images >= 1):
            raise InputError(f"{name}.max_images={self.max_images!r}; expected None or an integer >= 1")
        steps = tuple(self.sample_steps or ())
        if not all(isinstance(s, int) and 0 <= s <= self.steps for s in steps):
            raise InputError(f"{name}.sample_steps={list(steps)}; expected integers between 0 and steps={self.steps}")
        if not all(isinstance(p, str) and p.strip() for p in (self.sample_prompts or ())):
            raise InputError(f"{name}.sample_prompts={self.sample_prompts!r}; expected non-empty prompt strings")
        for key in ("sample_n", "sample_inference_steps"):
            if not (isinstance(getattr(self, key), int) and getattr(self, key) >= 1):
                raise InputError(f"{name}.{key}={getattr(self, key)!r}; expected an integer >= 1")


@dataclass
class DreamBoothLoRAConfig(ZafarTrainConfig):
    """DreamBooth + LoRA settings (shared fields: :class:`ZafarTrainConfig`, :class:`TrainConfig`).

    rank / alpha: LoRA rank and alpha (scale alpha / rank). target_modules: U-Net modules that get adapters.
    lora_dropout: PEFT dropout. train_text_encoder: also adapt the text encoder (``text_target_modules``).
    prior_preservation, prior_loss_weight, num_class_images, class_prompt, class_sample_steps, class_guidance,
    class_batch_size: the DreamBooth prior loss, as in :class:`cxrgen.adapt.unet_finetune.UNetFinetuneConfig`.

    Miniature defaults (~30-40 s on 2 CPU cores with the default foundation): 150 steps, batch 8, lr 1e-3 (a rank-4
    adapter on a 0.8 M-parameter U-Net needs a much larger lr than SD's 1e-4 to move in 150 steps), rank 4, prior
    preservation with 24 class images. Paper: :data:`LORA_PAPER`.
    """

    steps: int = 150
    batch_size: int = 8
    lr: float = 1e-3
    checkpoint_every: int = 50
    rank: int = 4
    alpha: float = 4.0
    target_modules: tuple[str, ...] = UNET_TARGETS
    lora_dropout: float = 0.0
    train_text_encoder: bool = False
    text_target_modules: tuple[str, ...] = TEXT_TARGETS
    prior_preservation: bool = True
    prior_loss_weight: float = 1.0
    num_class_images: int = 24
    class_prompt: str = "chest x-ray"
    class_sample_steps: int = 10
    class_guidance: float = 4.0
    class_batch_size: int = 24

    @classmethod
    def paper(cls, **overrides) -> DreamBoothLoRAConfig:
        return cls.from_dict({**LORA_PAPER, **overrides})

    def validate(self) -> None:
        super().validate()
        if not (isinstance(self.rank, int) and self.rank >= 1):
            raise InputError(f"DreamBoothLoRAConfig.rank={self.rank!r}; expected an integer >= 1")
        if float(self.alpha) <= 0:
            raise InputError(f"DreamBoothLoRAConfig.alpha={self.alpha!r}; expected a positive number")
        if not (0.0 <= float(self.lora_dropout) < 1.0):
            raise InputError(f"DreamBoothLoRAConfig.lora_dropout={self.lora_dropout!r}; expected a number in [0, 1)")
        for key in ("target_modules", "text_target_modules"):
            v = getattr(self, key)
            if not (isinstance(v, (list, tuple)) and v and all(isinstance(m, str) and m for m in v)):
                raise InputError(f"DreamBoothLoRAConfig.{key}={v!r}; expected a non-empty list of module names "
                                 f"such as {list(UNET_TARGETS if key == 'target_modules' else TEXT_TARGETS)}")
        check_prior_settings(self)


#: Paper-scale settings (SD v1.5, 512 px). Zafar et al. state batch size 2 (IV.E), 325 normal AP/PA images with
#: the prompt "Chest X-ray" and samples up to step 9100 (Fig. 5); the learning rate and schedule are not given:
#: 1e-5 constant, no warm-up, as in diffusers' ``train_text_to_image.py`` README; gradient checkpointing and
#: fp16 because the paper's runs fit a 16 GB GPU.
FULL_FINETUNE_PAPER = {
    "steps": 9100, "batch_size": 2, "gradient_accumulation_steps": 1, "lr": 1e-5, "lr_scheduler": "constant",
    "warmup": 0, "resolution": 512, "train_text_encoder": True, "prompt_level": "modality", "normal_only": True,
    "max_images": 325, "gradient_checkpointing": True, "mixed_precision": "fp16", "checkpoint_every": 500,
}


@dataclass
class FullFinetuneConfig(ZafarTrainConfig):
    """Full fine-tuning settings (shared fields: :class:`ZafarTrainConfig`, :class:`TrainConfig`).

    train_text_encoder: train the text encoder jointly with the U-Net (RoentGen's best setting; False trains the
    U-Net alone). Miniature defaults (~40 s on 2 CPU cores with the default foundation): 150 steps, batch 8,
    lr 2e-4 (the tiny U-Net's U-Net fine-tuning lr, as in :mod:`cxrgen.adapt.unet_finetune`).
    Paper: :data:`FULL_FINETUNE_PAPER`.
    """

    steps: int = 150
    batch_size: int = 8
    lr: float = 2e-4
    checkpoint_every: int = 50
    train_text_encoder: bool = True

    @classmethod
    def paper(cls, **overrides) -> FullFinetuneConfig:
        return cls.from_dict({**FULL_FINETUNE_PAPER, **overrides})


# ------------------------------------------------------------------------------------------------ textual projection
VARIANTS: tuple[str, ...] = ("document", "token", "none")

#: Lexical variants of the paper's two base prompts (2.5); the first of each is the paper's own wording.
TEMPLATE_FAMILIES: dict[str, tuple[str, ...]] = {
    "object": (
        "a photo of a {}",
        "a picture of a {}",
        "an image of a {}",
        "the photo of a {}",
        "a good photo of a {}",
        "a close-up photo of a {}",
    ),
    "style": (
        "a photo in the style of a {}",
        "a picture in the style of a {}",
        "an image in the style of a {}",
        "a photo in the style of the {}",
        "a rendering in the style of a {}",
    ),
    "caption": ("{}",),  # the caption as it is (LAION captions are not "a photo of ..." phrases)
}

#: Paper-scale values (Chambon et al. 2022). ``None`` / comments mark where the paper is silent.
PROJECTION_PAPER: dict = {
    "encoder": "cxr-bert-specialized",  # 2.5 / end of 3.3: CXR-BERT-specialized
    "trust_remote_code": True,
    "pooling": "cls",  # silent; 768-d input (2.5) and CLS is CXR-BERT-specialized's best method (Table 2)
    "hidden_size": 768,  # 2.5: "768-dimensional input ... 768-dimensional translated output"; width assumed 768
    "steps": 10_000,  # 2.9: 10k steps (3 h document-level, 8 h token-level on one Quadro P5000)
    "captions": "LAION-400M, a sample of 1M captions",  # 2.1
    "max_captions": 1_000_000,
    "templates": ["object", "style"],  # 2.5: object and style prompts with lexical variants
    "loss": "mse",  # 2.5: "MLE loss" (Gaussian MLE == MSE)
    "batch_size": None,  # silent
    "lr": None,  # silent
    "optimizer": None,  # silent (we use AdamW)
}


@dataclass
class ProjectionConfig:
    """Textual-projection training settings. Defaults: the 2-CPU miniature; see :data:`PROJECTION_PAPER` for paper
    scale."""

    variant: str = "token"
    encoder: str = "minilm"  # a name in cxrgen.text.names.TEXT_ENCODER_REGISTRY
    encoder_path: str | None = None  # local folder overriding the registry's hub id
    trust_remote_code: bool = False
    pooling: str = "mean"  # document variant: cls | mean | pooler | model_specific (paper scale: cls)
    hidden_size: int | None = None  # None: the output size (CLIP's hidden size; 768 -> 768 -> 768 in the paper)
    norm_first: bool = False  # False: Linear-ReLU-LayerNorm-Linear; True: Linear-LayerNorm-ReLU-Linear
    steps: int = 400
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    warmup_steps: int = 20
    lr_schedule: str = "cosine"  # cosine | constant (after warmup)
    seed: int = 0
    templates: tuple[str, ...] = ("object", "style")  # family names or literal templates with "{}"
    uncond_share: float = 0.05  # share of empty prompts, so encode([""]) learns CLIP's unconditional embedding
    max_length: int | None = None  # None: the foundation tokenizer's model_max_length (77 for SD v1)
    max_captions: int | None = None  # deterministic subsample of the corpus (paper: 1M LAION captions)
    eval_prompts: int = 64
    eval_every: int = 50
    checkpoint_every: int = 100
    num_threads: int | None = None
    device: str = "auto"  # auto: cuda when available

    @classmethod
    def from_dict(cls, d: dict | None) -> ProjectionConfig:
        d = dict(d or {})
        refuse_unknown_keys(d, [f.name for f in dataclasses.fields(cls)], "textual_projection: unknown config keys")
        if isinstance(d.get("templates"), (list, str)):
            d["templates"] = (d["templates"],) if isinstance(d["templates"], str) else tuple(d["templates"])
        cfg = cls(**d)
        cfg.validate()
        return cfg

    @classmethod
    def from_settings(cls, settings: Mapping | None, seed: int | None = None,
                      variant: str | None = None) -> ProjectionSettings:
        """A workflow ``settings`` block: the engine's runtime keys (:class:`~cxrgen.runtime.RuntimeConfig`), the
        ``captions`` source, the workflow-level ``variants`` list (dropped; ``variant`` picks this run's, else the
        block's ``variant``) and the config fields; ``seed`` overrides the block's."""
        names = [f.name for c in (cls, RuntimeConfig) for f in dataclasses.fields(c)] + ["captions", "variants"]
        refuse_unknown_keys(settings or {}, names, "textual_projection: unknown settings keys")
        runtime, d = RuntimeConfig.split(settings, "textual_projection settings")
        captions = d.pop("captions", None)
        listed = d.pop("variants", None)
        if variant is not None:
            d["variant"] = variant
        if listed is not None and d.get("variant") is None:
            raise InputError(f"textual_projection: which of variants {listed} to train? expected variant=... per run")
        if seed is not None:
            d["seed"] = int(seed)
        return ProjectionSettings(runtime=runtime, config=cls.from_dict(d), captions=captions)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    def validate(self) -> None:
        if self.variant not in VARIANTS:
            raise InputError(f"textual_projection.variant={self.variant!r}; expected one of {list(VARIANTS)}")
        if self.encoder not in TEXT_ENCODER_REGISTRY:
            raise InputError(
                f"textual_projection.encoder={self.encoder!r}; expected one of {sorted(TEXT_ENCODER_REGISTRY)} "
                f"(give a local folder as encoder_path)"
            )
        if self.pooling not in POOLING_METHODS:
            raise InputError(f"textual_projection.pooling={self.pooling!r}; expected one of {list(POOLING_METHODS)}")
        if self.lr_schedule not in ("cosine", "constant"):
            raise InputError(f"textual_projection.lr_schedule={self.lr_schedule!r}; expected 'cosine' or 'constant'")
        for key in ("steps", "warmup_steps"):
            if int(getattr(self, key)) < 0:
                raise InputError(f"textual_projection.{key}={getattr(self, key)}; expected >= 0")
        for key in ("batch_size", "eval_prompts", "eval_every", "checkpoint_every"):
            if int(getattr(self, key)) < 1:
                raise InputError(f"textual_projection.{key}={getattr(self, key)}; expected >= 1")
        if self.hidden_size is not None and int(self.hidden_size) < 1:
            raise InputError(f"textual_projection.hidden_size={self.hidden_size}; expected >= 1 or null")
        if not 0.0 <= float(self.uncond_share) < 1.0:
            raise InputError(f"textual_projection.uncond_share={self.uncond_share}; expected in [0, 1)")
        if not self.lr > 0:
            raise InputError(f"textual_projection.lr={self.lr}; expected > 0")
        expand_templates(self.templates)


@dataclass
class ProjectionSettings:
    """A parsed textual-projection ``settings`` block (:meth:`ProjectionConfig.from_settings`): how the engine runs,
    the trainer's config and the captions file (``None``: the foundation corpus captions)."""

    runtime: RuntimeConfig
    config: ProjectionConfig
    captions: str | None = None


def expand_templates(templates) -> list[str]:
    """Family names (``object``, ``style``, ``caption``) and literal ``"...{}..."`` templates -> a flat list."""
    if isinstance(templates, str):
        templates = (templates,)
    out: list[str] = []
    for t in templates or ():
        if t in TEMPLATE_FAMILIES:
            out += TEMPLATE_FAMILIES[t]
        elif isinstance(t, str) and t.count("{}") == 1:
            out.append(t)
        else:
            raise InputError(
                f"textual_projection.templates: {t!r} is neither a family ({sorted(TEMPLATE_FAMILIES)}) "
                f"nor a template with one '{{}}'"
            )
    if not out:
        raise InputError(f"textual_projection.templates is empty; expected some of {sorted(TEMPLATE_FAMILIES)}")
    return list(dict.fromkeys(out))
