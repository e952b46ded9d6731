"""Rule extract_features: one forward pass per batch -> every layer's tokens in one HDF5 file."""
import torch

from patchlens.data.dataset import Dataset
from patchlens.device import device
from patchlens.features.extract import extract
from patchlens.models.resolve import resolve_model
from patchlens.workflow import run


def main(snakemake):
    torch.set_num_threads(snakemake.threads)
    spec = resolve_model(snakemake.wildcards.model, snakemake.params.model)
    dataset = Dataset.from_manifest(snakemake.input.manifest)
    extract(spec, dataset, snakemake.output[0], snakemake.params.img_size,
            batch_size=snakemake.config["extraction"]["batch_size"],
            layers=snakemake.params.model.get("layers", "all"),
            weights_dir=snakemake.config["weights_dir"],
            device=device(bool(snakemake.config["gpu"])))  # CUDA when asked and present


run(snakemake, main)  # noqa: F821
