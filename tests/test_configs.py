"""Every shipped config (the default, smoke and paper ones) validates against the schema, merged over config.yaml as
Snakemake merges it, and every adaptation method's settings parse into its trainer's config class."""

import copy
from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config, validate

from cxrgen.adapt.textual_inversion import TextualInversionConfig
from cxrgen.adapt.textual_projection import ProjectionConfig
from cxrgen.adapt.unet_finetune import UNetFinetuneConfig
from cxrgen.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "schemas" / "config.schema.yaml")
CONFIG_CLASSES = {"textual_inversion": TextualInversionConfig, "unet": UNetFinetuneConfig}


def merged(config_file: Path) -> dict:
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    if config_file.name != "config.yaml":
        update_config(config, yaml.safe_load(config_file.read_text()))
    validate(config, schema=SCHEMA)
    return config


@pytest.mark.parametrize("config_file", [REPO / "config.yaml", *sorted((REPO / "configs").glob("*.yaml"))],
                         ids=lambda p: p.name)
def test_config_validates_and_method_settings_parse(config_file):
    config = merged(config_file)
    methods = config["adaptation"]["methods"]
    assert methods and len({m["name"] for m in methods}) == len(methods)
    for m in methods:
        settings = m.get("settings", {})
        if m["method"] == "textual_projection":
            d = {k: v for k, v in settings.items() if k not in ("captions",)}
            ProjectionConfig.from_dict(d)
        elif m["method"] in CONFIG_CLASSES:
            CONFIG_CLASSES[m["method"]].from_dict(copy.deepcopy(settings)).validate()


def test_unknown_trainer_setting_is_named():
    with pytest.raises(InputError, match="stepz"):
        UNetFinetuneConfig.from_dict({"stepz": 3})
    with pytest.raises(InputError, match="stepz"):
        ProjectionConfig.from_dict({"stepz": 3})


def test_schema_rejects_unknown_adaptation_method():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["adaptation"]["methods"].append({"name": "x", "method": "dreamfusion"})
    with pytest.raises(Exception, match="dreamfusion"):
        validate(config, schema=SCHEMA)
