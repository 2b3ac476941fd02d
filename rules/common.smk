# Helpers shared by the workflow: config validation, result paths, input functions.

from pathlib import Path

from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

DATASET = config["data"]["name"]
DATA_DIR = f"results/data/{DATASET}"
SAMPLES = sorted(config["samples"])
MODELS_DIR = "results/models"
TEXT_DIR = "results/text_encoders"
# the foundation pipeline folder: built here, or a registry name / local folder given in the config
FOUNDATION = f"{MODELS_DIR}/foundation" if config["foundation"]["model"] == "build" else config["foundation"]["model"]
TEXT_CORPORA = [DATASET if c == "dataset" else c for c in config["text_encoders"]["corpora"]]


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


def text_corpus_input(wildcards):
    """OpenI reports ship with torchxrayvision; the dataset's own reports come from its table."""
    return [] if wildcards.corpus == "openi" else f"{DATA_DIR}/table.csv"


def all_targets():
    return [
        f"{DATA_DIR}/summary/label_counts.csv",
        f"{DATA_DIR}/summary/phantom_grid.png",
        *[f"{DATA_DIR}/samples/{s}" for s in SAMPLES],
        *([FOUNDATION] if config["foundation"]["model"] == "build" else []),
        *[f"{TEXT_DIR}/{c}/table3.csv" for c in TEXT_CORPORA],
    ]
