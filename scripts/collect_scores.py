"""Rule collect_scores: every score CSV -> tables/scores.parquet (+ tables/models.csv)."""
from patchlens.report.models import write_models
from patchlens.report.tables import write_scores
from patchlens.workflow import run


def main(snakemake):
    scores = write_scores(list(snakemake.input), snakemake.params.models,
                          snakemake.output.scores)
    depth = scores.groupby("model")["n_layers"].max().to_dict()
    write_models({m: {**e, "n_layers": depth.get(m)} for m, e in snakemake.params.models.items()},
                 snakemake.output.models)


run(snakemake, main)  # noqa: F821
