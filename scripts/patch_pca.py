"""Rule patch_pca: the first three principal components of the patch features as RGB, for a few
images per model and layer (tables/patch_pca.parquet, drawn by the figure patch_pca)."""
import pandas as pd

from patchlens.data.dataset import Dataset
from patchlens.io import write_parquet
from patchlens.report.patch_pca import (best_layers, image_sets, patch_pca_table,
                                        shown_images)
from patchlens.workflow import run


def main(snakemake):
    s = snakemake.params.settings
    dataset = Dataset.from_manifest(snakemake.input.manifest)
    models = dict(zip(snakemake.params.models, snakemake.input.features))
    best_files = list(snakemake.input.best_layer)  # none when the config has no task
    best = best_layers(pd.read_csv(best_files[0]) if best_files else None, list(models))
    first = next(iter(image_sets(s["images"]).values()))  # the first image set
    shown = shown_images(dataset.images, first)[: s["figure_images"]]
    table = patch_pca_table(models, dataset, snakemake.params.dataset, shown, best)
    write_parquet(table, snakemake.output[0])


run(snakemake, main)  # noqa: F821
