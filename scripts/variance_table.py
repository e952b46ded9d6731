"""Rule variance_table: channel variance spectra per model, data set and layer."""
from collections import defaultdict
from pathlib import Path

from patchlens.report.variance_table import write_variance
from patchlens.workflow import run


def main(snakemake):
    files = defaultdict(list)
    for path in snakemake.input:  # results/variance/{model}/{dataset}.h5
        files[Path(path).parent.name].append(path)
    write_variance(dict(files), snakemake.output[0])


run(snakemake, main)  # noqa: F821
