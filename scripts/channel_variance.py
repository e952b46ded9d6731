"""Rule channel_variance: per layer x channel mean/variance of patch tokens on the support split,
pooled from the per-split moments the extractor stored (no token is read; files extracted
before those existed fall back to two passes over the tokens)."""
import logging

from patchlens.data.dataset import Dataset
from patchlens.errors import DataError
from patchlens.features.channel_stats import channel_stats, split_stats, write_stats
from patchlens.features.store import FeatureStore, expect_identity
from patchlens.workflow import run


def main(snakemake):
    dataset = Dataset.from_manifest(snakemake.input.manifest)
    split = list(snakemake.params.split)
    missing = sorted(set(split) - set(dataset.manifest["split"]))
    if missing:
        raise DataError(f"variance.split = {split!r}: data set {snakemake.wildcards.dataset!r} has "
                        f"no split {', '.join(missing)} (its splits: "
                        f"{', '.join(sorted(set(dataset.manifest['split'])))}); fix variance.split")
    images = dataset.split(*split)
    with FeatureStore(snakemake.input.features) as store:
        expect_identity(store, snakemake.wildcards.model, snakemake.wildcards.dataset)
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
