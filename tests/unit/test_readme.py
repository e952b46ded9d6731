"""The README's configuration examples are valid configs (a newcomer copies them)."""
import copy
import re

import yaml

from patchlens.config import ROOT
from patchlens.startup import validate


def _yaml_blocks():
    text = (ROOT / "README.md").read_text()
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, re.S)]


def test_readme_config_example_validates():
    example = next(b for b in _yaml_blocks() if "datasets" in b)
    validate(example)


def test_readme_model_entries_validate():
    demo = yaml.safe_load((ROOT / "config" / "demo.yaml").read_text())
    entries = {k: v for b in _yaml_blocks() if "datasets" not in b for k, v in b.items()}
    assert {"my_dinov2", "my_ssl_vits16"} <= set(entries)
    cfg = copy.deepcopy(demo)
    cfg["models"].update(entries)
    validate(cfg)
