"""Rules fewshot_seg, instance_id, retrieval, tracking, keypoints, lowshot_cls: one task on one
(model, data set, variant) for every layer -> tidy CSV."""
from patchlens.evaluate import evaluate
from patchlens.workflow import run


def main(snakemake):
    evaluate(task=snakemake.params.task, params=dict(snakemake.params.settings),
             features=snakemake.input.features,
             dataset_dir=snakemake.input.manifest.rsplit("/", 1)[0],
             variant=snakemake.wildcards.variant,
             variance=snakemake.input.get("variance"), out_csv=snakemake.output[0],
             labels={"model": snakemake.wildcards.model, "dataset": snakemake.wildcards.dataset},
             units_out=snakemake.output.get("units"),
             bootstrap=snakemake.params.get("bootstrap"))


run(snakemake, main)  # noqa: F821
