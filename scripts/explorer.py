"""Rule explorer: the self-contained patch-similarity explorer page (results/report/explorer.html)
from the stored features of the shown images, and its statistics (size, compression error)."""
import logging

from patchlens.report.explorer_page import explorer_entries, write_explorer
from patchlens.workflow import run


def main(snakemake):
    entries = explorer_entries(snakemake.params.pairs, snakemake.input.features,
                               snakemake.input.variances, snakemake.input.manifests)
    stats = write_explorer(entries, snakemake.params.settings, snakemake.params.labels,
                           snakemake.output.page, snakemake.output.stats)
    log = logging.getLogger("patchlens")
    log.info("explorer: %.2f MB, cosine error max %.4f mean %.4f", stats["bytes"] / 1e6,
             stats["max_error"], stats["mean_error"])
    if stats["bytes"] > 15e6:
        log.warning("explorer: the page is %.0f MB; browsers load it slowly. Fewer "
                    "report.explorer images, layers or dims make it smaller",
                    stats["bytes"] / 1e6)


run(snakemake, main)  # noqa: F821
