"""The ``cheff`` config section as one dataclass per stage, each from a named preset plus overrides.

``config["cheff"]`` = ``{"preset": "default"|"smoke"|"paper", "autoencoder": {...}, "sdm": {...}, "sr": {...},
"machex": {...}, "evaluation": {...}}``; the stage dicts override fields of the preset's dataclasses.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from cxrgen.cheff.autoencoder import AutoencoderConfig
from cxrgen.cheff.diffusion import SDMConfig
from cxrgen.cheff.super_resolution import SRConfig
from cxrgen.errors import InputError

PRESETS = ("default", "smoke", "paper")


@dataclass
class EvaluationConfig:
    n_test: int = 64  # Table 2 images (paper: 25,000)
    n_samples: int = 128  # cascade samples for FID/KID
    fid_extractor: str = "reference"  # reference | inception | xrv
    kid_subset_size: int = 50
    n_inpaint: int = 4
    n_outpaint: int = 4
    prompts: tuple[str, ...] = (
        "Large right pleural effusion.", "Cardiomegaly.", "No acute cardiopulmonary process.",
        "Left lower lobe atelectasis.",
    )

    @classmethod
    def preset(cls, name: str = "default", **overrides) -> "EvaluationConfig":
        presets = {"default": {}, "smoke": dict(n_test=4, n_samples=6, kid_subset_size=3, n_inpaint=2, n_outpaint=2),
                   "paper": dict(n_test=25_000, n_samples=10_000, fid_extractor="inception", kid_subset_size=1000)}
        bad = [k for k in overrides if k not in cls.__dataclass_fields__]
        if bad:
            raise InputError(f"cheff.evaluation: unknown setting(s) {bad}; expected some of {sorted(cls.__dataclass_fields__)}")
        return replace(replace(cls(), **presets[name]), **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


@dataclass
class CheffConfig:
    preset: str = "default"
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    sdm: SDMConfig = field(default_factory=SDMConfig)
    sr: SRConfig = field(default_factory=SRConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    @classmethod
    def from_dict(cls, section: dict | None) -> "CheffConfig":
        section = dict(section or {})
        name = section.get("preset", "default")
        if name not in PRESETS:
            raise InputError(f"cheff.preset={name!r}; expected one of {list(PRESETS)}")
        ae = AutoencoderConfig.preset(name, **(section.get("autoencoder") or {}))
        sr = SRConfig.preset(name, **{"lr_size": ae.image_size, **(section.get("sr") or {})})
        if sr.lr_size != ae.image_size:
            raise InputError(f"cheff.sr.lr_size={sr.lr_size} differs from cheff.autoencoder.image_size={ae.image_size}; "
                             "expected the SR input to be the autoencoder's resolution")
        return cls(name, ae, SDMConfig.preset(name, **(section.get("sdm") or {})), sr,
                   EvaluationConfig.preset(name, **(section.get("evaluation") or {})))

    def sdm_for(self, variant: str) -> SDMConfig:
        """``unconditional`` or ``report`` (the report model of the paper preset trains for 750k steps)."""
        if variant not in ("unconditional", "report"):
            raise InputError(f"SDM variant {variant!r}; expected 'unconditional' or 'report'")
        cfg = replace(self.sdm, conditioning="none" if variant == "unconditional" else "report")
        if self.preset == "paper" and variant == "report" and cfg.steps == 500_000:
            cfg = replace(cfg, steps=750_000)
        return cfg
