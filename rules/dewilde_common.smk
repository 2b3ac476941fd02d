# Helpers of rules/dewilde.smk (de Wilde et al. 2023): config checks, embedding and sweep-point paths.

from cxrgen.adapt.config import TextualInversionConfig, class_embedding_settings
from cxrgen.data.prompts import class_slug

DW = config["dewilde"]
DW_DIR = f"{RESULTS}/dewilde"
DW_CATEGORY = "Textual inversion on a budget (de Wilde et al.)"
DW_HEALTHY = DW["healthy"]


DW_SLUGS = {class_slug(c): c for c in DW["classes"]}
for _key, _labels in [
    ("healthy", [DW["healthy"]]),
    ("sweep.class", [DW["sweep"]["class"]]),
    ("composability.findings", DW["composability"]["findings"]),
    ("inpainting.findings", DW["inpainting"]["findings"]),
    ("classifier.finding", [DW["classifier"]["finding"]]),
]:
    for _l in _labels:
        if _l not in DW["classes"]:
            raise WorkflowError(
                f"config dewilde.{_key}: {_l!r} is not in dewilde.classes {DW['classes']}; expected a class with an embedding"
            )
for _spec in DW["composability"]["multi"]:  # a token without a learned embedding would be read as plain text
    _unknown = sorted(set(re.findall(r"<[^<>]+>", _spec["prompt"])) - {f"<{_s}>" for _s in DW_SLUGS})
    if _unknown:
        raise WorkflowError(
            f"config dewilde.composability.multi prompt {_spec['prompt']!r} names {_unknown}, which "
            f"dewilde.classes {DW['classes']} learn no embedding for; expected tokens among "
            f"{sorted(f'<{_s}>' for _s in DW_SLUGS)}"
        )
# the embeddings' trainer settings parse now, as the embedding jobs will parse them, so a typo stops `snakemake -n`
# instead of the first embedding job
try:
    for _label in DW["classes"]:  # an initializer given per class must name each
        TextualInversionConfig.from_dict(
            {
                **class_embedding_settings(DW["textual_inversion"], _label, DW["vectors"], DW["cases"]),
                "seed": config["seed"],
            }
        )
except InputError as _exc:
    raise WorkflowError(f"config dewilde.textual_inversion: {_exc}")
for _key in ("sample", "sweep.real_sample", "classifier.val_sample", "classifier.test_sample"):
    _section, _, _name = _key.rpartition(".")
    _value = (DW[_section] if _section else DW)[_name]
    if _value not in config["samples"]:
        raise WorkflowError(f"config dewilde.{_key}={_value!r} is not a configured sample; expected one of {SAMPLES}")
if not set(DW["classes"]) <= set(config["samples"][DW["sample"]].get("classes", [])):
    raise WorkflowError(
        f"config dewilde.classes {DW['classes']} are not all classes of sample {DW['sample']!r} ({config['samples'][DW['sample']].get('classes')})"
    )
_max_vectors = config["foundation"]["overrides"].get("max_length", 32) - 2
if max([DW["vectors"], *DW["sweep"]["vectors"]]) > _max_vectors and config["foundation"]["model"] == "build":
    raise WorkflowError(
        f"config dewilde vectors up to {max([DW['vectors'], *DW['sweep']['vectors']])}; the miniature tokenizer holds {_max_vectors} tokens besides BOS/EOS"
    )


def dw_embedding(label, vectors=None, cases=None):
    v = DW["vectors"] if vectors is None else vectors
    n = DW["cases"] if cases is None else cases
    return f"{DW_DIR}/embeddings/{class_slug(label)}_v{v}_n{n}"


def dw_points():
    """Sweep points (de Wilde 4.1): steps at the default CFG, CFG at the default steps, vectors, cases."""
    inf, sw = DW["inference"], DW["sweep"]
    base = {
        "class": sw["class"],
        "steps": inf["steps"],
        "cfg_scale": float(inf["guidance"]),
        "embedding_size": DW["vectors"],
        "training_cases": DW["cases"],
    }
    pts = [{**base, "table": "table1", "sweep": "steps", "steps": s} for s in sw["steps"]]
    pts += [{**base, "table": "table1", "sweep": "cfg scale", "cfg_scale": float(g)} for g in sw["guidance"]]
    pts += [{**base, "table": "table2", "sweep": "embedding size", "embedding_size": v} for v in sw["vectors"]]
    pts += [{**base, "table": "table3", "sweep": "training cases", "training_cases": n} for n in sw["cases"]]
    return pts


def dw_point_dir(p):
    return f"{DW_DIR}/sweep/{class_slug(p['class'])}_v{p['embedding_size']}_n{p['training_cases']}/steps{p['steps']}_cfg{p['cfg_scale']:g}"


DW_POINTS = dw_points()
# run-time patient checks (cxrgen.data.leakage): the embeddings' training images vs the sets they are scored on
DW_SWEEP_LEAKAGE = manifest_checks(
    (DW["sample"], DW["sweep"]["real_sample"], "de Wilde Tables 1-3 FID: real set vs the embeddings' training images")
)
DW_CLASSIFIER_LEAKAGE = manifest_checks(
    *[
        (DW["sample"], DW["classifier"][k], f"de Wilde Table 4: ResNet-18 {k} vs its real training images")
        for k in ("val_sample", "test_sample")
    ]
)
DW_SYN_CASES = sorted({DW["cases"], DW["classifier"]["few_cases"]})
DW_PAIR = [DW_HEALTHY, DW["classifier"]["finding"]]


def dw_table_outputs():
    return {
        f"table{n}_{ext}": report(
            f"{RESULTS}/tables/dewilde2023_table{n}.{ext}",
            caption=f"../report/dewilde_table{n}.rst",
            category=DW_CATEGORY,
        )
        for n in (1, 2, 3, 4)
        for ext in ("csv", "md", "tex")
    }


def dewilde_reported_outputs():
    """The de Wilde tables and figures for results/<run>/README.md (see reported_outputs in common.smk)."""
    what = {
        1: "FID per sampling steps and CFG scale (de Wilde Table 1)",
        2: "FID per embedding size (de Wilde Table 2)",
        3: "FID per training cases (de Wilde Table 3)",
        4: "ResNet-18 AUC with real / synthetic data (de Wilde Table 4)",
    }
    items = [(f"{RESULTS}/tables/dewilde2023_table{n}.md", "render_dewilde", w) for n, w in what.items()]
    figs = {
        "fig2": "samples per sweep setting (de Wilde Fig. 2 style)",
        "fig3": "healthy -> finding interpolation (de Wilde Fig. 3)",
        "fig4": "multiple findings composed (de Wilde Fig. 4)",
        "fig5": "inpainting a finding (de Wilde Fig. 5)",
        "composability": "classifier probability vs interpolation weight (de Wilde 4.3, measured)",
        "inpainting": "classifier probability and pixel change after inpainting (de Wilde 4.4, measured)",
    }
    items += [(f"{RESULTS}/figures/dewilde2023_{f}.png", "render_dewilde", w) for f, w in figs.items()]
    return items
