"""Rule channel_variance: per layer x channel mean/variance of patch tokens on the support split."""
from patchlens.data.dataset import Dataset
from patchlens.features.store import FeatureStore
from patchlens.features.channel_stats import channel_stats, write_stats
from patchlens.workflow import run


def main(snakemake):
    dataset = Dataset.from_manifest(snakemake.input.manifest)
    images = dataset.split(*snakemake.params.split)
    with FeatureStore(snakemake.input.features) as store:
        mean, var, n = channel_stats(store, images)
        write_stats(snakemake.output[0], store.layers, mean, var,
                    {"split": ",".join(snakemake.params.split), "n_images": len(images),
                     "n_tokens": n, "model": snakemake.wildcards.model})


run(snakemake, main)  # noqa: F821
