"""Every shipped config (the default, smoke and paper ones) validates against the schema, merged over config.yaml as
Snakemake merges it, and every adapted model's settings parse into its method's settings class (cxrgen.adapt.methods),
as the workflow checks them when it builds its jobs."""

from pathlib import Path

import pytest
import yaml
from snakemake.utils import update_config, validate

from cxrgen.adapt.config import ProjectionConfig, UNetFinetuneConfig
from cxrgen.adapt.methods import SECTIONS, check_settings
from cxrgen.errors import InputError

REPO = Path(__file__).resolve().parents[1]
SCHEMA = str(REPO / "schemas" / "config.schema.yaml")


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
    for section in SECTIONS:
        methods = config[section]["methods"]
        assert methods and len({m["name"] for m in methods}) == len(methods)
        check_settings(methods, section)


def test_unknown_trainer_setting_is_named():
    with pytest.raises(InputError, match="stepz"):
        UNetFinetuneConfig.from_dict({"stepz": 3})
    with pytest.raises(InputError, match="stepz"):
        ProjectionConfig.from_dict({"stepz": 3})
    with pytest.raises(InputError, match=r"adaptation\.methods\[u\]\.settings \(method 'unet'\).*stepz.*expected"):
        check_settings([{"name": "u", "method": "unet", "settings": {"stepz": 3}}], "adaptation")
    with pytest.raises(InputError, match=r"zafar\.methods\[l\]\.settings \(method 'lora'\).*rank=0"):
        check_settings([{"name": "l", "method": "lora", "settings": {"rank": 0}}], "zafar")
    with pytest.raises(InputError, match=r"method 'unet'; expected one of \['lora', 'full'\]"):
        check_settings([{"name": "u", "method": "unet"}], "zafar")  # a section lists only its own methods


def test_schema_rejects_unknown_adaptation_method():
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    config["adaptation"]["methods"].append({"name": "x", "method": "dreamfusion"})
    with pytest.raises(Exception, match="dreamfusion"):
        validate(config, schema=SCHEMA)
