"""Rules fewshot_seg, instance_id, retrieval, tracking, keypoints, lowshot_cls: one task on one
(model, data set) for every layer and every variant (each layer read once) -> one tidy CSV per
variant; for a job cut into pieces (rules/tasks.smk), the pieces gathered into the same CSVs."""
from pathlib import Path

from patchlens.data.dataset import Dataset
from patchlens.device import device
from patchlens.evaluate import evaluate_all, gather_pieces
from patchlens.features.store import FeatureStore, expect_identity
from patchlens.plan import parse_piece
from patchlens.workflow import run


def by_variant(paths, variants):
    """{variant: [path of every piece, in order]} of a piece_file list (piece-major)."""
    return {v: [p for p in paths if Path(p).stem == v] for v in variants}


def blocks(paths):
    """Per piece (in order) the (layers, seeds) cell whose query images it is a part of, or
    None (the piece's name is the folder above its files: rules/common.smk, piece_file)."""
    out = []
    for p in paths:
        layers, seeds, query = parse_piece(Path(p).parent.parent.name)
        out.append(None if query is None else (tuple(layers), tuple(seeds or ()), query[1]))
    return out


def main(snakemake):
    variants = list(snakemake.params.variants)
    scores = list(snakemake.output.scores)
    labels = {"model": snakemake.wildcards.model, "dataset": snakemake.wildcards.dataset}
    out_units = (dict(zip(variants, snakemake.output.units, strict=True))
                 if "units" in snakemake.output.keys() else None)
    if "piece_scores" in snakemake.input.keys():  # a job cut into pieces: gather them
        piece_scores = by_variant(snakemake.input.piece_scores, variants)
        gather_pieces(task=snakemake.params.task, piece_scores=piece_scores,
                      piece_units=by_variant(snakemake.input.piece_units, variants),
                      blocks=blocks(piece_scores[variants[0]]),
                      out_csvs=dict(zip(variants, scores, strict=True)), out_units=out_units,
                      labels=labels, bootstrap=snakemake.params.get("bootstrap"))
        return
    with FeatureStore(snakemake.input.features) as store:  # the features this job expects
        expect_identity(store, snakemake.wildcards.model, snakemake.wildcards.dataset)
    evaluate_all(task=snakemake.params.task, params=dict(snakemake.params.settings),
                 features=snakemake.input.features,
                 dataset_dir=Dataset.from_manifest(snakemake.input.manifest).root,
                 out_csvs=dict(zip(variants, scores, strict=True)),
                 variance=snakemake.input.get("variance"), labels=labels, out_units=out_units,
                 bootstrap=snakemake.params.get("bootstrap"),
                 device=device(bool(snakemake.config["gpu"])))  # CUDA when asked and present


run(snakemake, main)  # noqa: F821
