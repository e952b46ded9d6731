"""Rule cka_table: per-data-set parquet tables -> one table."""
import pandas as pd

from patchlens.io import read_table, write_parquet
from patchlens.workflow import run


def main(snakemake):
    write_parquet(pd.concat([read_table(p) for p in snakemake.input], ignore_index=True),
                  snakemake.output[0])


run(snakemake, main)  # noqa: F821
