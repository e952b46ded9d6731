"""A small score table made by the pipeline's own producers, for the report/best-layer tests.

``real_score_files(root)`` generates the tiny ``scenes`` data set (the generator the
``prepare_dataset`` rule runs), extracts the ``oracle`` and ``pixels`` baselines with the
extractor the ``extract_features`` rule runs, writes a 3-block "deep" model whose layers are the
oracle features plus noise that shrinks with depth (and a final-norm entry ``layer == n_blocks``,
the contract of the final-norm feature files), and runs every task's real evaluator
(``patchlens.evaluate.evaluate``, what the task rules run) on each. ``collect_scores`` then
builds ``scores.parquet`` as the ``collect_scores`` rule does. About 10 s on one core.

Other test modules import it read-only (``from helpers.real_scores import ...``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from patchlens.config import task_spec
from patchlens.data.dataset import Dataset
from patchlens.data.scenes import generate_scenes
from patchlens.evaluate import evaluate
from patchlens.features.extract import extract
from patchlens.features.store import FeatureStore, write_features
from patchlens.models.resolve import resolve_model
from patchlens.params import merge_params

SCENES = {"seed": 0, "image_size": 96, "patch_align": 16, "rotation": 0, "n_train": 12,
          "n_val": 10, "n_gallery": 12, "n_identities": 8, "n_videos": 2, "n_frames": 5,
          "n_pairs": 6, "n_keypoints": 5, "n_shots_max": 2}
# config.models entries, as rules/common.smk passes them to collect_scores (label, family)
MODELS = {"deep": {"label": "Deep (noisy oracle)", "family": "contrastive", "timm": "synthetic"},
          "oracle": {"label": "oracle", "family": "baseline", "timm": "oracle"},
          "pixels": {"label": "pixels", "family": "baseline", "timm": "pixels"}}
TASK_PARAMS = {"fewshot_seg": {"seeds": [0, 1], "n_shots": 2}, "instance_id": {},
               "retrieval": {}, "tracking": {}, "keypoints": {},
               "lowshot_cls": {"seeds": [0], "n_shots": [1, 2]},
               "hummingbird": {"memory_size": 500},
               "depth": {"head": "log_regression"}}
DEEP_BLOCKS = 3
NOISE = [3.0, 1.5, 0.6, 0.3]  # per layer of "deep": 3 blocks, then the final-norm entry


def _deep_store(oracle_path: Path, out: Path) -> Path:
    """Oracle tokens + Gaussian noise of std NOISE[l] at layer l (layers 0..3, 3 = "out")."""
    with FeatureStore(oracle_path) as st:
        x = st.tokens(st.layers[0], st.images)  # (n, h, w, C) float32
        images, grid, attrs = st.images, st.grid, dict(st.attrs)
    rng = np.random.default_rng(0)
    n, h, w, C = x.shape
    tok = np.stack([x + s * rng.standard_normal(x.shape).astype(np.float32) for s in NOISE], 1)
    attrs.update(model="deep", n_blocks=DEEP_BLOCKS, norm_layer=DEEP_BLOCKS)
    write_features(out, tok.reshape(n, len(NOISE), h * w, C), images, grid, attrs,
                   layers=list(range(len(NOISE))))
    return out


def real_score_files(root) -> list[Path]:
    """Score CSVs of every task x model (raw variant), written by the real evaluators."""
    root = Path(root)
    data = root / "data" / "scenes"
    generate_scenes(data, SCENES)
    ds = Dataset(data)
    feats = {}
    for m in ("oracle", "pixels"):
        feats[m] = root / "features" / m / "scenes.h5"
        feats[m].parent.mkdir(parents=True, exist_ok=True)
        extract(resolve_model(m, {"baseline": m, "patch_size": 16}), ds, feats[m], 96)
    feats["deep"] = root / "features" / "deep" / "scenes.h5"
    feats["deep"].parent.mkdir(parents=True, exist_ok=True)
    _deep_store(feats["oracle"], feats["deep"])
    paths = []
    for task, given in TASK_PARAMS.items():
        params = merge_params(given, task_spec(task).defaults, f"tasks.{task}.params")
        for m, f in feats.items():
            out = root / "scores" / task / m / "scenes" / "raw.csv"
            evaluate(task, params, f, data, "raw", out, labels={"model": m, "dataset": "scenes"})
            paths.append(out)
    return paths


_CACHE: dict = {}


def real_scores(tmp_path_factory):
    """(scores.parquet table, models) from :func:`real_score_files`, built once per session."""
    if "scores" not in _CACHE:
        from patchlens.report.tables import collect_scores

        root = tmp_path_factory.mktemp("real_scores")
        _CACHE["scores"] = collect_scores(real_score_files(root), MODELS)
        _CACHE["root"] = root
    return _CACHE["scores"].copy(), MODELS


def real_tables_dir(tmp_path_factory) -> Path:
    """results/tables/ as the rules write it from the real score table: scores.parquet and
    models.csv (collect_scores), best_layer.csv (best_layer)."""
    if "tables" not in _CACHE:
        from patchlens.analysis.best_layer import best_layer_table
        from patchlens.io import write_csv, write_parquet
        from patchlens.report.models import write_models

        scores, models = real_scores(tmp_path_factory)
        out = tmp_path_factory.mktemp("real_tables")
        write_parquet(scores, out / "scores.parquet")
        depth = scores.groupby("model")["n_layers"].max().to_dict()  # as scripts/collect_scores
        write_models({m: {**e, "n_layers": depth.get(m)} for m, e in models.items()},
                     out / "models.csv")
        from patchlens.tasks.registry import lower_is_better

        write_csv(best_layer_table(scores, lower_is_better()), out / "best_layer.csv")
        _CACHE["tables"] = out
    return _CACHE["tables"]
