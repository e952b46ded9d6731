"""Rule attention_stats: per layer x head attention statistics, streamed over the data set."""
import torch

from patchlens.analysis.attention_sample import stratified_sample
from patchlens.analysis.attention_stats import attention_statistics, write_attention
from patchlens.data.dataset import Dataset
from patchlens.device import device
from patchlens.features.extract import build_model, image_batches
from patchlens.models.resolve import input_geometry, resolve_model
from patchlens.workflow import run


def main(snakemake):
    torch.set_num_threads(snakemake.threads)
    settings = dict(snakemake.params.settings)
    split, max_images = settings.pop("split"), settings.pop("max_images")
    seed = settings.pop("seed")
    settings.pop("offset_heads", None)  # thresholds reach attention_tables only
    spec = resolve_model(snakemake.wildcards.model, snakemake.params.model)
    dataset = Dataset.from_manifest(snakemake.input.manifest)
    pool = dataset.split(*split) if split else dataset.images
    # stratified over the primary label (first manifest label) where the data set has labels
    strata = [(dataset.labels(im) or [""])[0] for im in pool]
    images = stratified_sample(pool, strata, max_images, seed)
    size, grid = input_geometry(snakemake.params.img_size, spec["patch_size"])
    bs = snakemake.config["extraction"]["batch_size"]
    batches = map(torch.from_numpy, image_batches(dataset, images, size, spec["mean"],
                                                  spec["std"], bs))
    model = build_model(spec, snakemake.config["weights_dir"], size,
                        device(bool(snakemake.config["gpu"])))  # CUDA when asked and present
    ds = attention_statistics(model, batches, spec["patch_size"], grid,
                              spec["num_prefix_tokens"], settings)
    ds = ds.assign_coords(image=("image", list(images)))  # the images the statistics are over
    write_attention(snakemake.output[0], ds, model=spec["key"], dataset=snakemake.wildcards.dataset,
                    n_images=len(images), sample_seed=int(seed), patch_size=spec["patch_size"],
                    grid=list(grid))


run(snakemake, main)  # noqa: F821
