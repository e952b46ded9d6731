# patchlens: what are the patch tokens of a Vision Transformer good for, layer by layer?
#
#   data -> features (one forward pass, all layers) -> variance -> tasks / analyses -> tables
#   -> figures -> report
#
# Run the offline demo:     snakemake --cores 2 --configfile config/demo.yaml
# Run the real study:       snakemake --cores 8 --use-conda            (config.yaml, needs network)
from snakemake.utils import min_version

min_version("9.0")

if (
    not config
):  # a --configfile on the command line replaces the default study, never merges

    configfile: "config.yaml"


import sys

from patchlens.config import validate
from patchlens.startup import check_values
from patchlens.errors import PatchlensError

# schemas/config.schema.yaml: types, defaults, cross-references; parameter values and model facts
# once, in the driver (the jobs it spawns re-read this file with the config already checked)
try:
    validate(config)
    if not (workflow.subprocess_exec or workflow.remote_exec):
        check_values(config)
except (
    PatchlensError
) as exc:  # the config alone shows it: one line, no traceback, exit code 1
    sys.exit(f"patchlens: {exc}")


report: "report/workflow.rst"


include: "rules/common.smk"
include: "rules/data.smk"
include: "rules/features.smk"
include: "rules/variance.smk"
include: "rules/tasks.smk"
include: "rules/analysis.smk"
include: "rules/statistics.smk"
include: "rules/report.smk"


onstart:
    disk_check()  # before the first extraction: planned feature bytes vs free space (rules/common.smk)


rule all:
    default_target: True
    input:
        "results/report/index.html",
