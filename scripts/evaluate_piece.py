"""Rules <task>_piece: one piece of a task job too long for cluster.max_runtime (a group of
layers, or of one layer's seeds, or a part of their query images; patchlens.plan.splits) -> per
variant its score rows without intervals and its units, which the task's rule gathers
(rules/tasks.smk)."""
from patchlens.data.dataset import Dataset
from patchlens.device import device
from patchlens.evaluate import evaluate_piece
from patchlens.features.store import FeatureStore, expect_identity
from patchlens.plan import parse_piece
from patchlens.workflow import run


def main(snakemake):
    with FeatureStore(snakemake.input.features) as store:  # the features this job expects
        expect_identity(store, snakemake.wildcards.model, snakemake.wildcards.dataset)
    variants = list(snakemake.params.variants)
    layers, seeds, query = parse_piece(snakemake.wildcards.piece)
    evaluate_piece(task=snakemake.params.task, params=dict(snakemake.params.settings),
                   features=snakemake.input.features,
                   dataset_dir=Dataset.from_manifest(snakemake.input.manifest).root,
                   out_scores=dict(zip(variants, snakemake.output.piece_scores, strict=True)),
                   out_units=dict(zip(variants, snakemake.output.piece_units, strict=True)),
                   layers=layers, seeds=seeds, query=query,
                   variance=snakemake.input.get("variance"),
                   labels={"model": snakemake.wildcards.model,
                           "dataset": snakemake.wildcards.dataset},
                   device=device(bool(snakemake.config["gpu"])))


run(snakemake, main)  # noqa: F821
