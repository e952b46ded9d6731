"""A scenes data set with a 3-layer feature file (oracle, oracle + noise, noise; class token =
the patches' mean) and the channel statistics of its train split, as the evaluator tests use."""
from pathlib import Path

import numpy as np

from patchlens.data.dataset import Dataset
from patchlens.data.scenes import generate_scenes
from patchlens.features.channel_stats import channel_stats, write_stats
from patchlens.features.store import FeatureStore, write_features
from patchlens.models.oracle import oracle_tokens


def three_layer_study(root: Path, scenes: dict):
    """(data set, feature file, statistics file, tokens (n, 3, P, C), cls (n, 3, C), images)."""
    generate_scenes(root / "scenes", scenes)
    ds = Dataset(root / "scenes")
    images = list(ds.manifest.index)
    oracle = oracle_tokens(ds, images, (4, 4))[:, 0]          # (n, P, C)
    noise = np.random.default_rng(0).normal(size=oracle.shape).astype(np.float32)
    tokens = np.stack([oracle, oracle + 0.5 * noise, noise], 1)
    cls = tokens.mean(axis=2)
    feats = root / "f.h5"
    write_features(feats, tokens, images, (4, 4), {"model": "m", "n_blocks": 3, "patch_size": 16},
                   cls=cls)
    with FeatureStore(feats) as store:
        mean, var, _ = channel_stats(store, ds.split("train"))
        write_stats(root / "v.h5", store.layers, mean, var, {"split": "train"})
    return ds, feats, root / "v.h5", tokens, cls, images
