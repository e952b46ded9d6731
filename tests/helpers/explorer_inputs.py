"""Real inputs of the patch views, made by the functions the workflow's rules run: a few of
scikit-image's photographs (the demo's `photos`), feature files written by the extraction (a random-init
tiny ViT and the pixels baseline) and their channel statistics (rule channel_variance)."""
from __future__ import annotations

from pathlib import Path

from patchlens.data.dataset import Dataset
from patchlens.data.imageset import skimage_photos
from patchlens.features.channel_stats import channel_stats, write_stats
from patchlens.features.extract import extract
from patchlens.features.store import FeatureStore
from patchlens.models.resolve import resolve_model

TINY = {"timm": "vit_tiny_patch16_224", "pretrained": False,
        "kwargs": {"depth": 3, "embed_dim": 48, "num_heads": 3}}
MODELS = {"tiny": TINY, "pixels": {"baseline": "pixels", "patch_size": 16}}
SIZE = (64, 96)  # px: a 4 x 6 patch grid
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle", "clock")


def write_photo_dataset(root: Path, photos=PHOTOS) -> Path:
    """scikit-image's bundled photographs as the demo's ``photos`` data set is made (the data
    preparation's own function, no crops)."""
    skimage_photos(None, root, {"photos": list(photos), "crops": 0})
    return root


def explorer_inputs(tmp: Path) -> dict:
    """{pairs, features, variances, manifests}: the explorer rule's inputs, files made by the
    extraction and the channel-variance functions."""
    data = write_photo_dataset(tmp / "data" / "photos")
    ds = Dataset(data)
    pairs, feats, variances = [], [], []
    for m, entry in MODELS.items():
        out = tmp / "features" / m / "photos.h5"
        out.parent.mkdir(parents=True, exist_ok=True)
        extract(resolve_model(m, entry), ds, out, img_size=list(SIZE), batch_size=4,
                progress=False)
        var = tmp / "variance" / m / "photos.h5"
        var.parent.mkdir(parents=True, exist_ok=True)
        with FeatureStore(out) as store:
            mean, v, n = channel_stats(store, ds.split("train"))
            write_stats(var, store.layers, mean, v, {"split": "train", "n_tokens": n})
        pairs.append(["photos", m])
        feats.append(out)
        variances.append(var)
    return {"pairs": pairs, "features": feats, "variances": variances,
            "manifests": [data / "manifest.csv"]}
