"""Rule explorer: the self-contained patch-similarity explorer page (results/report/explorer.html)
from the stored features of the shown images, and its statistics (size, compression error)."""
from patchlens.report.explorer_page import explorer_entries, write_explorer
from patchlens.workflow import run


def main(snakemake):
    entries = explorer_entries(snakemake.params.pairs, snakemake.input.features,
                               snakemake.input.variances, snakemake.input.manifests)
    stats = write_explorer(entries, snakemake.params.settings, snakemake.params.labels,
                           snakemake.output.page, snakemake.output.stats)
    print(f"explorer: {stats['bytes'] / 1e6:.2f} MB, max abs cosine error "
          f"{stats['max_error']:.4f}")


run(snakemake, main)  # noqa: F821
