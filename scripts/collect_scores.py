"""Rule collect_scores: every score CSV -> tables/scores.parquet (+ tables/models.csv)."""
from patchlens.report.tables import write_models, write_scores
from patchlens.workflow import run


def main(snakemake):
    models = snakemake.params.models
    write_scores(list(snakemake.input), models, snakemake.output.scores)
    write_models(models, snakemake.output.models)


run(snakemake, main)  # noqa: F821
