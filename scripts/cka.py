"""Rule cka: linear CKA between every layer pair, within each model and across every model pair."""
from itertools import combinations_with_replacement

import pandas as pd

from patchlens.analysis.cka_stores import cka_layers
from patchlens.device import gpu_scope
from patchlens.data.dataset import Dataset
from patchlens.features.store import FeatureStore, expect_identity
from patchlens.io import write_parquet
from patchlens.workflow import run


def main(snakemake):
    settings = dict(snakemake.params.settings)
    split = settings.pop("split")
    dataset = Dataset.from_manifest(snakemake.input.manifest)
    images = dataset.split(*split) if split else dataset.images
    paths = {k: v for k, v in snakemake.input.items() if k != "manifest"}
    stores = {m: FeatureStore(p) for m, p in paths.items()}
    for m, store in stores.items():
        expect_identity(store, m, snakemake.wildcards.dataset)
    with gpu_scope(bool(snakemake.config["gpu"])):  # CUDA when asked and present
        tables = [cka_layers(stores[a], stores[b], images, settings).assign(model_a=a, model_b=b)
                  for a, b in combinations_with_replacement(sorted(stores), 2)]
    table = pd.concat(tables, ignore_index=True).assign(dataset=snakemake.wildcards.dataset)
    write_parquet(table, snakemake.output[0])


run(snakemake, main)  # noqa: F821
