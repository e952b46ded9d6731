"""Rule figures: every figure of the catalogue that the tables support, PNG + PDF."""
from pathlib import Path

from patchlens.report.figures import make_figures
from patchlens.workflow import run


def main(snakemake):
    out = Path(snakemake.output[0])
    out.mkdir(parents=True, exist_ok=True)
    make_figures(Path(snakemake.input[0]).parent, out)


run(snakemake, main)  # noqa: F821
