"""Rule report: one self-contained results/report/index.html (figures embedded, tables, config,
provenance)."""
from pathlib import Path

from patchlens.report.html import write_report
from patchlens.report.provenance import collect_provenance
from patchlens.workflow import run


def main(snakemake):
    tables_dir = Path(snakemake.input.tables[0]).parent
    config = snakemake.params.config
    provenance = collect_provenance(config, features=snakemake.input.features,
                                    manifests=snakemake.input.manifests)
    write_report(tables_dir, snakemake.input.figures, snakemake.output[0], config, provenance)


run(snakemake, main)  # noqa: F821
