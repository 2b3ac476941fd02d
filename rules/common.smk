# Helpers shared by the workflow: config validation, result paths, input functions.

from pathlib import Path

from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

DATASET = config["data"]["name"]
DATA_DIR = f"results/data/{DATASET}"
SAMPLES = sorted(config["samples"])



def dataset_root_input(wildcards):
    """The phantom root is a workflow output; a real dataset root must already exist."""
    root = config["data"]["root"]
    if config["data"]["source"] != "phantom" and not Path(root).exists():
        raise WorkflowError(
            f"config data.root={root!r} does not exist; expected the {config['data']['source']} dataset root"
        )
    return root


def all_targets():
    return [
        f"{DATA_DIR}/summary/label_counts.csv",
        f"{DATA_DIR}/summary/phantom_grid.png",
        *[f"{DATA_DIR}/samples/{s}" for s in SAMPLES],
    ]
