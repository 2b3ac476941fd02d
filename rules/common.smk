# Helpers shared by the workflow: config validation, result paths, input functions.

import dataclasses
import re
import sys
from pathlib import Path

from snakemake.utils import validate

sys.path.insert(0, str(Path(workflow.basedir) / "src"))  # the checkout's package, installed or not
from cxrgen.adapt import methods as adapt_methods
from cxrgen.data import leakage
from cxrgen.errors import InputError
from cxrgen.models.foundation_config import FoundationConfig
from cxrgen.cheff.config import CheffConfig
from cxrgen.runs import PAPERS, output_roots

validate(config, schema="../schemas/config.schema.yaml")
STUDIES = config["studies"]  # the selected papers (rule all, the index, the report and the findings follow)
# every output of this run under results/<run>/, its logs and benchmarks under logs/<run>/ and benchmarks/<run>/
RUN = config["run"]
RESULTS, LOGS, BENCHMARKS = (output_roots(RUN)[top] for top in ("results", "logs", "benchmarks"))

DATASET = config["data"]["name"]
DATA_DIR = f"{RESULTS}/data/{DATASET}"
SAMPLES = sorted(config["samples"])
MODELS_DIR = f"{RESULTS}/models"
TEXT_DIR = f"{RESULTS}/text_encoders"
# the foundation pipeline folder: built here, or a registry name / local folder given in the config
FOUNDATION = f"{MODELS_DIR}/foundation" if config["foundation"]["model"] == "build" else config["foundation"]["model"]
TEXT_CORPORA = [DATASET if c == "dataset" else c for c in config["text_encoders"]["corpora"]]
for _section, _key in [
    ("vae_study", "sample"),
    ("synthesis", "real_sample"),
    *(("reference_classifier", k) for k in ("train_sample", "val_sample", "test_sample")),
]:
    if config[_section][_key] not in config["samples"]:
        raise WorkflowError(
            f"config {_section}.{_key}={config[_section][_key]!r} is not a configured sample; expected one of {SAMPLES}"
        )
# adapted models (Chambon 2.5-2.7): name -> {method, sample, settings}; "none" is the foundation as is
ADAPTED = {m["name"]: m for m in config["adaptation"]["methods"]}
if len(ADAPTED) != len(config["adaptation"]["methods"]):
    _names = [m["name"] for m in config["adaptation"]["methods"]]
    raise WorkflowError(
        f"config adaptation.methods: duplicate names {sorted({n for n in _names if _names.count(n) > 1})}; expected each name once"
    )
TRAINED = [name for name, m in ADAPTED.items() if m["method"] != "none"]
# leakage (cxrgen.data.leakage): every evaluation sample on splits none of its training samples use, unless allowed
try:
    for _name, _spec in config["samples"].items():
        leakage.sample_splits(_spec, config["data"]["splits"])
    leakage.check_config(config)
    ALLOWED_OVERLAPS = leakage.allowed_overlaps(config)  # {frozenset({trains, evaluates}): reason}
except InputError as _exc:
    raise WorkflowError(f"config leakage check: {_exc}")
# the methods that train on a sample's images (cxrgen.adapt.methods; textual projection trains on captions)
FEW_SHOT_METHODS = adapt_methods.image_trained_methods()
# every adapted model's settings parse into its trainer's config now, not when its job starts
try:
    adapt_methods.check_settings(config["adaptation"]["methods"], "adaptation")
    adapt_methods.check_settings(config["zafar"]["methods"], "zafar")
except InputError as _exc:
    raise WorkflowError(str(_exc))


def adaptation_sample(name):
    """The sample an adapted model trains on: its own, else adaptation.sample."""
    return ADAPTED[name].get("sample", config["adaptation"]["sample"])


for _name, _m in ADAPTED.items():
    if _m["method"] in FEW_SHOT_METHODS and adaptation_sample(_name) not in config["samples"]:
        raise WorkflowError(
            f"config adaptation.methods[{_name}].sample={adaptation_sample(_name)!r} is not a configured sample; expected one of {SAMPLES}"
        )
ADAPT_DIR = f"{MODELS_DIR}/adapted"
SYNTH_DIR = f"{RESULTS}/synthesis"
CLASSIFIER_DIR = f"{RESULTS}/reference_classifier"
# the reference classifier: trained here, or torchxrayvision weights by name ("xrv:densenet121-res224-all")
REFERENCE_CLASSIFIER = (
    f"{MODELS_DIR}/reference_classifier"
    if config["reference_classifier"]["model"] == "train"
    else config["reference_classifier"]["model"]
)


def manifest_checks(*pairs):
    """Run-time patient check of (trains, evaluates, purpose) sample pairs a rule reads (cxrgen.data.leakage.check_sample_dirs)."""
    return [
        {
            "trains": t,
            "trains_dir": f"{DATA_DIR}/samples/{t}",
            "evaluates": e,
            "evaluates_dir": f"{DATA_DIR}/samples/{e}",
            "purpose": purpose,
            "allowed_reason": ALLOWED_OVERLAPS.get(frozenset((t, e))),
        }
        for t, e, purpose in pairs
    ]


def manifest_check_inputs(checks):
    """The sample folders a rule's run-time leakage check reads."""
    return sorted({c[k] for c in checks for k in ("trains_dir", "evaluates_dir")})


def dataset_root_input(wildcards):
    """The phantom root is a workflow output; a real dataset root must already exist."""
    root = config["data"]["root"]
    if config["data"]["source"] != "phantom" and not Path(root).exists():
        raise WorkflowError(
            f"config data.root={root!r} does not exist; expected the {config['data']['source']} dataset root"
        )
    return root


def foundation_input(wildcards):
    """A workflow-built or local foundation folder is a file dependency; a hub id is not."""
    if config["foundation"]["model"] == "build" or Path(FOUNDATION).exists():
        return FOUNDATION
    return []


def reference_classifier_input(wildcards):
    """A reference-classifier folder is a file dependency; an 'xrv:<weights>' name is not."""
    return [] if str(REFERENCE_CLASSIFIER).startswith("xrv:") else REFERENCE_CLASSIFIER


def text_corpus_input(wildcards):
    """OpenI reports ship with torchxrayvision; the dataset's own reports come from its table."""
    return [] if wildcards.corpus == "openi" else f"{DATA_DIR}/table.csv"


def name_pattern(names):
    """A wildcard constraint matching exactly these names (nothing when the list is empty)."""
    return "|".join(re.escape(n) for n in names) if names else "(?!)"


def adaptation_inputs(wildcards):
    """What an adaptation trains on: the few-shot sample (TI, U-Net) or the foundation's captions (projection)."""
    if ADAPTED[wildcards.adapted]["method"] not in FEW_SHOT_METHODS:
        return []
    return f"{DATA_DIR}/samples/{adaptation_sample(wildcards.adapted)}"


def adapter_input(wildcards):
    """The adapted-model folder a synthetic set comes from; none for the foundation as is."""
    return [] if ADAPTED[wildcards.adapted]["method"] == "none" else [f"{ADAPT_DIR}/{wildcards.adapted}"]


def fig5_method():
    """The adapted model shown beside its training images (Chambon Fig. 5): configured, or the last one."""
    name = config["synthesis"]["fig5_method"] or list(ADAPTED)[-1]
    if name not in ADAPTED:
        raise WorkflowError(f"config synthesis.fig5_method={name!r}; expected one of {list(ADAPTED)}")
    return name


def fig5_sample():
    """The sample the Fig. 5 model was fine-tuned on (the adaptation sample for models without one)."""
    return adaptation_sample(fig5_method())


def needs_foundation():
    """Whether a selected study samples or adapts the foundation (Cheff trains its own cascade)."""
    return any(paper in STUDIES for paper in ("chambon2022", "zafar2023", "dewilde2023"))


def needs_reference_classifier():
    """Whether a selected study scores images with the reference classifier (Cheff only for its FID features)."""
    return needs_foundation() or ("weber2023" in STUDIES and CHEFF_FID_EXTRACTOR == "reference")


def chambon_reported_outputs():
    """(path, rule, description) of the Chambon et al. tables and figures (VAE, text encoders, synthesis, privacy)."""
    items = [
        (
            f"{RESULTS}/tables/chambon2022_table1.md",
            "render_vae_study",
            "VAE reconstruction: classifier on originals vs reconstructions (Chambon Table 1)",
        ),
        (
            f"{RESULTS}/tables/chambon2022_vae_summary.md",
            "render_vae_study",
            "VAE reconstruction: RMSE, PSNR, SSIM, FID, cosine similarity (Chambon 3.2)",
        ),
        (
            f"{RESULTS}/figures/chambon2022_fig3.png",
            "render_vae_study",
            "original vs reconstruction examples (Chambon Fig. 3)",
        ),
    ]
    for corpus in TEXT_CORPORA:
        for n, what in ((2, "macro CheXpert@k per encoder and method"), (3, "CheXpert@k per abnormality")):
            items.append(
                (
                    f"{RESULTS}/tables/chambon2022_table{n}_{corpus}.md",
                    "render_text_encoder_study",
                    f"{what} on {corpus} (Chambon Table {n})",
                )
            )
    items += [
        (
            f"{RESULTS}/tables/chambon2022_table4.md",
            "render_synthesis",
            "FID per adaptation method and prompt (Chambon Table 4)",
        ),
        (
            f"{RESULTS}/tables/chambon2022_table5.md",
            "render_synthesis",
            "reference classifier on synthetic images (Chambon Table 5)",
        ),
        (
            f"{RESULTS}/tables/chambon2022_prompt_dependence.md",
            "render_synthesis",
            "does the prompt change the image: effusion minus normal prompt on the same noise, per adapted model",
        ),
        (
            f"{RESULTS}/figures/chambon2022_samples.png",
            "render_synthesis",
            "synthetic images per method and prompt (Chambon Figs. 1, 4)",
        ),
        (
            f"{RESULTS}/figures/chambon2022_fig5.png",
            "render_synthesis",
            "training images beside synthetic ones (Chambon Fig. 5)",
        ),
        (
            f"{RESULTS}/tables/privacy_memorization.md",
            "render_memorization",
            "nearest fine-tuning image of synthetic images (privacy)",
        ),
        (
            f"{RESULTS}/figures/privacy_closest_pairs.png",
            "render_memorization",
            "synthetic images closest to a fine-tuning image",
        ),
    ]
    return items


def paper_reported_outputs(paper):
    """(path, rule, description) of one paper's tables and figures (called once every study's rules are defined)."""
    return {
        "chambon2022": chambon_reported_outputs,
        "weber2023": cheff_reported_outputs,
        "zafar2023": zafar_reported_outputs,
        "dewilde2023": dewilde_reported_outputs,
    }[paper]()


def paper_targets(paper):
    """Target of `snakemake <paper>`: that paper's tables and figures (and what they need), selected or not."""
    return [path for path, _, _ in paper_reported_outputs(paper)]


def reported_outputs():
    """The tables and figures of this run (the selected studies' and the shared prerequisites' they need) with the
    rule that makes each and what it shows (results/<run>/README.md)."""
    items = [
        (f"{DATA_DIR}/summary/label_counts.csv", "data_summary", "label counts per split"),
        (f"{DATA_DIR}/summary/phantom_grid.png", "data_summary", "example images per finding"),
    ]
    if needs_reference_classifier():
        items.append(
            (
                f"{CLASSIFIER_DIR}/test_metrics.csv",
                "evaluate_reference_classifier",
                "reference classifier on the test sample",
            )
        )
    for paper in PAPERS:
        if paper in STUDIES:
            items += paper_reported_outputs(paper)
    items += cheff_comparison_reported_outputs()
    items.append(
        (
            f"{RESULTS}/tables/findings.md",
            "findings",
            "the papers' directional claims: this run's effect, interval and verdict (issue 17)",
        )
    )
    if config["foundation"]["model"] == "build" and needs_foundation():
        items.append((f"{FOUNDATION}/preview.png", "foundation", "samples of the miniature foundation model"))
    return [{"path": path, "rule": rule, "description": what} for path, rule, what in items]


def findings_files():
    """The per-item result files the findings rule reads, keyed as cxrgen.render.findings's evaluators expect (the
    selected studies' only; called once every study's rules are defined)."""
    files = {
        "chambon2022": {
            "vae_per_image": rules.vae_study.output.per_image,
            "text_per_report": [f"{TEXT_DIR}/{corpus}/per_report.csv" for corpus in TEXT_CORPORA],
            "synthesis_scores": rules.evaluate_synthesis.output.scores,
        },
        "zafar2023": {"zafar_ood": rules.zafar_evaluate.output.ood_scores},
        "weber2023": {
            "cheff_reconstruction": rules.cheff_reconstruction.output.per_image,
            "cheff_beta": rules.cheff_beta_check.output.per_image,
        },
        "dewilde2023": {
            "dewilde_sweep": sorted({f"{dw_point_dir(p)}/fid.csv" for p in DW_POINTS}),
            "dewilde_classifier": expand(f"{DW_DIR}/classifier/seed{{seed}}.csv", seed=DW["classifier"]["seeds"]),
        },
    }
    return {key: path for paper in STUDIES for key, path in files[paper].items()}


def _asks_for_gpu(rule):
    # Snakemake 9's rule.resources.get() returns a Resource, truthy even when unset: test its value
    return bool(getattr(rule.resources.get("gpu"), "value", None))


def gpu_rules():
    """Rules that ask for a GPU: the results index charges their wall time to one."""
    return sorted(r.name for r in workflow.rules if _asks_for_gpu(r))


def cpu_rules():
    """Rules that need no GPU (profiles/slurm-gpu-only keeps them on the submit host)."""
    return sorted(r.name for r in workflow.rules if not _asks_for_gpu(r))


def final_outputs():
    """Everything the run makes except the index itself (the foundation is a folder, so the folder stands in). With
    every study selected that includes every configured sample; a selection makes only the samples its studies read."""
    return [
        *([f"{DATA_DIR}/samples/{s}" for s in SAMPLES] if set(STUDIES) == set(PAPERS) else []),
        *[item["path"] for item in reported_outputs() if item["rule"] != "foundation"],
        *([FOUNDATION] if config["foundation"]["model"] == "build" and needs_foundation() else []),
    ]


def all_targets():
    return [*final_outputs(), f"{RESULTS}/README.md"]


def cheff_settings(*stages):
    """The resolved settings (preset plus overrides) of the Cheff ``stages`` that a job depends on, for its params, so
    that a changed preset default reruns the stage's jobs (the ``cheff`` section itself would not change)."""
    try:
        resolved = CheffConfig.from_dict(config["cheff"])
    except InputError as exc:
        raise WorkflowError(f"config cheff: {exc}")
    return {stage: dataclasses.asdict(getattr(resolved, stage)) for stage in stages}


def foundation_settings():
    """The miniature foundation's resolved settings (preset, overrides, seed): a changed preset default reruns the
    foundation (a params change), and a bad key stops the dry run."""
    f = config["foundation"]
    try:
        return FoundationConfig.preset(f["preset"], **{"seed": config["seed"], **f["overrides"]}).to_dict()
    except (TypeError, ValueError) as exc:
        raise WorkflowError(f"config foundation (preset {f['preset']!r}, overrides {f['overrides']}): {exc}")
