"""Rule paired: every pair of models at their best and last layer, paired bootstrap over the same
units -> tables/paired.csv."""
from patchlens.io import read_table, write_csv
from patchlens.stats.paired import paired_table, read_units
from patchlens.tasks.registry import lower_is_better
from patchlens.workflow import run


def main(snakemake):
    b = dict(snakemake.params.bootstrap)
    table = paired_table(read_table(snakemake.input.scores), read_units(snakemake.input.units),
                         int(b["n_boot"]), float(b["level"]), int(b["seed"]),
                         lower_is_better=lower_is_better())
    write_csv(table, snakemake.output[0])


run(snakemake, main)  # noqa: F821
