# patchlens: what are the patch tokens of a Vision Transformer good for, layer by layer?
#
#   data -> features (one forward pass, all layers) -> variance -> tasks / analyses -> tables
#   -> figures -> report
#
# Run the offline demo:     snakemake --cores 2 --configfile config/demo.yaml
# Run the real study:       snakemake --cores 8 --use-conda            (config.yaml, needs network)
from snakemake.utils import min_version

min_version("9.0")

if not config:  # a --configfile on the command line replaces the default study, never merges
    configfile: "config.yaml"

from patchlens.config import validate

validate(config)  # schemas/config.schema.yaml: types, defaults, cross-references

report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/features.smk"
include: "rules/variance.smk"
include: "rules/tasks.smk"
include: "rules/analysis.smk"
include: "rules/statistics.smk"
include: "rules/report.smk"


rule all:
    input:
        "results/report/index.html",
    default_target: True
