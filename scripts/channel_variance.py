"""Rule channel_variance: per layer x channel mean/variance of patch tokens on the support split,
pooled from the per-split moments the extractor stored (no token is read; files extracted
before those existed fall back to two passes over the tokens)."""
import logging

from patchlens.data.dataset import Dataset
from patchlens.features.channel_stats import channel_stats, split_stats, write_stats
from patchlens.features.store import FeatureStore
from patchlens.workflow import run


def main(snakemake):
    dataset = Dataset.from_manifest(snakemake.input.manifest)
    split = list(snakemake.params.split)
    images = dataset.split(*split)
    with FeatureStore(snakemake.input.features) as store:
        stats = split_stats(store, split, images)
        if stats is None:
            logging.getLogger("patchlens").info(
                "%s has no stored channel moments (extracted by an older version): reading "
                "its tokens", store.path)
            stats = channel_stats(store, images)
        mean, var, n = stats
        write_stats(snakemake.output[0], store.layers, mean, var,
                    {"split": ",".join(split), "n_images": len(images), "n_tokens": n,
                     "model": snakemake.wildcards.model})


run(snakemake, main)  # noqa: F821
