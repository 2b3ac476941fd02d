"""The ``cheff`` config section as one dataclass per stage, each from a named preset plus overrides.

``config["cheff"]`` = ``{"preset": "default"|"smoke"|"paper", "machex": {...}, "autoencoder": {...}, "sdm": {...},
"sr": {...}, "evaluation": {...}, "runtime": {...}}``; the stage dicts override fields of the preset's dataclasses (the workflow's
schema, ``schemas/config.schema.yaml``, documents every field and gives no defaults to preset-dependent ones).
``runtime`` is how the training stages run (:class:`cxrgen.engine.RuntimeConfig`: mixed precision, gradient
accumulation, CPU-only, DataLoader workers); batch sizes stay global whatever the process count.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from cxrgen.cheff.autoencoder import AutoencoderConfig
from cxrgen.cheff.diffusion import SDMConfig
from cxrgen.cheff.super_resolution import SRConfig
from cxrgen.engine import RuntimeConfig
from cxrgen.errors import InputError

PRESETS = ("default", "smoke", "paper")
SECTIONS = ("preset", "machex", "autoencoder", "sdm", "sr", "evaluation", "runtime")
#: ``config["data"]["source"]`` -> the dataset adapter that reads it (the phantom is written in the MIMIC layout)
ADAPTER_FOR_SOURCE = {"phantom": "mimic"}
SOURCE_NAMES = {"phantom": "MIMIC-CXR (phantom)", "mimic": "MIMIC-CXR", "chexpert": "CheXpert", "padchest": "PadChest",
                "nih": "ChestX-ray14", "folder": "folder"}


@dataclass
class MaCheXConfig:
    """Which sources form MaCheX (sec. 4) and how many of its images a run uses.

    ``sources`` empty = the workflow's configured dataset (``config["data"]``) as the only source.  ``max_train`` /
    ``max_test`` cap the images loaded into memory (a seeded subset; None = all, as in the paper).
    """

    sources: tuple[dict, ...] = ()
    frontal_only: bool = True  # sec. 4: "only frontal AP/PA scans are considered"
    test_fraction: float = 0.1  # patient share held out for sources without a designated test split
    max_train: int | None = 300
    max_test: int | None = 48

    @classmethod
    def preset(cls, name: str = "default", **overrides) -> MaCheXConfig:
        presets = {"default": {}, "smoke": dict(max_train=24, max_test=8),
                   "paper": dict(max_train=None, max_test=25_000)}  # sec. 5: a separate test set of size 25,000
        bad = [k for k in overrides if k not in cls.__dataclass_fields__]
        if bad:
            raise InputError(f"cheff.machex: unknown setting(s) {bad}; expected some of {sorted(cls.__dataclass_fields__)}")
        cfg = replace(replace(cls(), **presets[name]), **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})
        for key in ("max_train", "max_test"):
            v = getattr(cfg, key)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise InputError(f"cheff.machex.{key}={v!r}; expected a positive integer or null (all images)")
        if not 0.0 < float(cfg.test_fraction) < 1.0:
            raise InputError(f"cheff.machex.test_fraction={cfg.test_fraction!r}; expected a fraction in (0, 1)")
        return cfg

    def resolve_sources(self, data_cfg: dict | None = None) -> list[dict]:
        """The MaCheX source list: the configured ``sources``, or the workflow's dataset (``data_cfg``) as one.

        The source that is the workflow's own dataset (same root) carries ``workflow_splits`` (``data.splits``): MaCheX
        then splits it as the workflow does (its test split held out, the rest trains the cascade), so the cascade
        never trains on patients of the workflow's held-out samples (cxrgen.data.leakage).
        """
        from cxrgen.data.leakage import same_dataset_root

        splits = (data_cfg or {}).get("splits")
        if self.sources:
            out = []
            for i, src in enumerate(self.sources):
                if not isinstance(src, dict) or not src.get("adapter") or not src.get("root"):
                    raise InputError(f"cheff.machex.sources[{i}]={src!r}; expected a mapping with 'adapter' and 'root'")
                own = splits and data_cfg.get("root") and same_dataset_root(src["root"], data_cfg["root"])
                out.append({**src, **({"workflow_splits": dict(splits)} if own else {})})
            return out
        if not data_cfg or "root" not in data_cfg or "source" not in data_cfg:
            raise InputError("cheff.machex.sources is empty and no data section was given; expected sources or the "
                             "workflow's data config (source, root)")
        source = data_cfg["source"]
        options = {"csv": data_cfg["csv"]} if data_cfg.get("csv") else {}
        return [{"adapter": ADAPTER_FOR_SOURCE.get(source, source), "root": data_cfg["root"],
                 "name": SOURCE_NAMES.get(source, source), "options": options,
                 **({"workflow_splits": dict(splits)} if splits else {})}]


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
    def preset(cls, name: str = "default", **overrides) -> EvaluationConfig:
        presets = {"default": dict(n_test=12, n_samples=32, kid_subset_size=16),
                   "smoke": dict(n_test=4, n_samples=6, kid_subset_size=3, n_inpaint=2, n_outpaint=2),
                   "paper": dict(n_test=25_000, n_samples=10_000, fid_extractor="inception", kid_subset_size=1000)}
        bad = [k for k in overrides if k not in cls.__dataclass_fields__]
        if bad:
            raise InputError(f"cheff.evaluation: unknown setting(s) {bad}; expected some of {sorted(cls.__dataclass_fields__)}")
        return replace(replace(cls(), **presets[name]), **{k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()})


@dataclass
class CheffConfig:
    preset: str = "default"
    machex: MaCheXConfig = field(default_factory=MaCheXConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    sdm: SDMConfig = field(default_factory=SDMConfig)
    sr: SRConfig = field(default_factory=SRConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    @classmethod
    def from_dict(cls, section: dict | None) -> CheffConfig:
        section = dict(section or {})
        bad = [k for k in section if k not in SECTIONS]
        if bad:
            raise InputError(f"cheff: unknown key(s) {bad}; expected some of {list(SECTIONS)}")
        name = section.get("preset", "default")
        if name not in PRESETS:
            raise InputError(f"cheff.preset={name!r}; expected one of {list(PRESETS)}")
        ae = AutoencoderConfig.preset(name, **(section.get("autoencoder") or {}))
        sr = SRConfig.preset(name, **{"lr_size": ae.image_size, **(section.get("sr") or {})})
        if sr.lr_size != ae.image_size:
            raise InputError(f"cheff.sr.lr_size={sr.lr_size} differs from cheff.autoencoder.image_size={ae.image_size}; "
                             "expected the SR input to be the autoencoder's resolution")
        return cls(name, MaCheXConfig.preset(name, **(section.get("machex") or {})), ae,
                   SDMConfig.preset(name, **(section.get("sdm") or {})), sr,
                   EvaluationConfig.preset(name, **(section.get("evaluation") or {})),
                   RuntimeConfig.from_dict(section.get("runtime"), "cheff.runtime"))

    def sdm_for(self, variant: str) -> SDMConfig:
        """``unconditional`` or ``report`` (the report model of the paper preset trains for 750k steps)."""
        if variant not in ("unconditional", "report"):
            raise InputError(f"SDM variant {variant!r}; expected 'unconditional' or 'report'")
        cfg = replace(self.sdm, conditioning="none" if variant == "unconditional" else "report")
        if self.preset == "paper" and variant == "report" and cfg.steps == 500_000:
            cfg = replace(cfg, steps=750_000)
        return cfg
