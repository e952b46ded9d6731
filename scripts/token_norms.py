"""Rule token_norms: high-norm token statistics of one model on one data set, every layer."""
from patchlens.analysis.token_norms import analyse
from patchlens.data.dataset import Dataset
from patchlens.features.store import FeatureStore, expect_identity
from patchlens.io import write_parquet
from patchlens.workflow import run


def main(snakemake):
    settings = dict(snakemake.params.settings)
    split = settings.pop("split")
    dataset = Dataset.from_manifest(snakemake.input.manifest)
    with FeatureStore(snakemake.input.features) as store:
        expect_identity(store, snakemake.wildcards.model, snakemake.wildcards.dataset)
        images = dataset.split(*split) if split else store.images
        images = [im for im in images if im in set(store.images)]
        table = analyse(store, dataset, settings, images)
    write_parquet(table.assign(model=snakemake.wildcards.model,
                               dataset=snakemake.wildcards.dataset), snakemake.output[0])


run(snakemake, main)  # noqa: F821
