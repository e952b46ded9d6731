"""Rule best_layer: argmax layer per (model, task, variant, metric) and its gap to the last layer."""
from patchlens.analysis.best_layer import best_layer_table
from patchlens.io import read_table, write_csv
from patchlens.tasks.registry import lower_is_better
from patchlens.workflow import run


def main(snakemake):
    write_csv(best_layer_table(read_table(snakemake.input[0]), lower_is_better()),
              snakemake.output[0])


run(snakemake, main)  # noqa: F821
