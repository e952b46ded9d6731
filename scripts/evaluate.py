"""Rules fewshot_seg, instance_id, retrieval, tracking, keypoints, lowshot_cls: one task on one
(model, data set) for every layer and every variant (each layer read once) -> one tidy CSV per
variant."""
from patchlens.data.dataset import Dataset
from patchlens.device import device
from patchlens.evaluate import evaluate_all
from patchlens.features.store import FeatureStore, expect_identity
from patchlens.workflow import run


def main(snakemake):
    with FeatureStore(snakemake.input.features) as store:  # the features this job expects
        expect_identity(store, snakemake.wildcards.model, snakemake.wildcards.dataset)
    variants = list(snakemake.params.variants)
    scores = list(snakemake.output.scores)
    evaluate_all(task=snakemake.params.task, params=dict(snakemake.params.settings),
                 features=snakemake.input.features,
                 dataset_dir=Dataset.from_manifest(snakemake.input.manifest).root,
                 out_csvs=dict(zip(variants, scores, strict=True)),
                 variance=snakemake.input.get("variance"),
                 labels={"model": snakemake.wildcards.model,
                         "dataset": snakemake.wildcards.dataset},
                 out_units=(dict(zip(variants, snakemake.output.units, strict=True))
                            if "units" in snakemake.output.keys() else None),
                 bootstrap=snakemake.params.get("bootstrap"),
                 device=device(bool(snakemake.config["gpu"])))  # CUDA when asked and present


run(snakemake, main)  # noqa: F821
