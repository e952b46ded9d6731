"""Principal components of patch features as colours, and the settings of the patch views.

Protocol (docs/protocols.md#patch-views): the patch tokens of one layer of one model, for the
shown images of one data set, are stacked into an (N, C) matrix; its principal components are
fitted jointly over all of them (centred, by SVD), so a colour means the same direction in
every image. The first three component scores, each min-max scaled to [0, 1] over all shown
patches, are the red, green and blue of each patch (Oquab et al. 2024, DINOv2, Fig. 1; Amir et
al. 2022, "Deep ViT Features as Dense Visual Descriptors"). No foreground mask is applied: the
background is part of what a layer encodes. A component's sign is fixed so that its loading of
largest magnitude is positive (the sign of a principal component is arbitrary).

:func:`explorer_settings` resolves and checks ``report.explorer`` of the config (the patch-view
figure and the explorer page share it). Pure numpy; :func:`patch_pca_table` reads feature files
through :class:`patchlens.features.store.FeatureStore`.
"""
from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
from PIL import Image

from patchlens.config import model_datasets
from patchlens.data.dataset import Dataset
from patchlens.errors import ConfigError
from patchlens.features.store import FeatureStore

EXPLORER_DEFAULTS = {"images": 12, "models": "all", "layers": "all", "dims": 64, "top_k": 5,
                     "figure_images": 2}
TABLE_COLUMNS = ["kind", "model", "dataset", "image", "layer", "n_layers", "row", "col",
                 "r", "g", "b"]
THUMB = 112  # px, longer side of the image drawn beside the PCA maps in the figure


# ----------------------------------------------------------------------------------- settings
def explorer_settings(config: dict) -> dict | None:
    """``report.explorer`` with defaults filled and references checked, or None when the config
    has no explorer. Returns {datasets, images, models: {dataset: [model, ...]}, layers, dims,
    top_k, figure_images, variants}; raises ConfigError naming the key."""
    entry = ((config.get("report") or {}).get("explorer"))
    if entry is None:
        return None
    s = {**EXPLORER_DEFAULTS, **entry}
    datasets = list(s.get("datasets") or [])
    if not datasets:
        raise ConfigError("report.explorer.datasets: name at least one data set of `datasets`")
    for d in datasets:
        if d not in config["datasets"]:
            raise ConfigError(f"report.explorer.datasets: unknown data set {d!r} "
                              f"(have {', '.join(config['datasets'])})")
    wanted = list(config["models"]) if s["models"] == "all" else list(s["models"])
    for m in wanted:
        if m not in config["models"]:
            raise ConfigError(f"report.explorer.models: unknown model {m!r} "
                              f"(have {', '.join(config['models'])})")
    models = {d: [m for m in wanted if d in model_datasets(config, m)] for d in datasets}
    for d, ms in models.items():
        if not ms:
            raise ConfigError(f"report.explorer.datasets: no model of report.explorer.models "
                              f"extracts data set {d!r}; add one or drop the data set")
    sets = s["images"].values() if isinstance(s["images"], dict) else [s["images"]]
    if any(isinstance(v, list) for v in sets) and len(datasets) > 1:
        raise ConfigError("report.explorer.images: a list of image ids needs exactly one data "
                          "set in report.explorer.datasets (or give a number)")
    if isinstance(s["images"], dict) and not s["images"]:
        raise ConfigError("report.explorer.images: name at least one image set")
    return {"datasets": datasets, "models": models, "images": s["images"],
            "layers": s["layers"], "dims": int(s["dims"]), "top_k": int(s["top_k"]),
            "figure_images": int(s["figure_images"]), "variants": list(config["variants"])}


def image_sets(images) -> dict:
    """``report.explorer.images`` as {set name: count or ids}: a count or a list is one set
    named "" (the page then names the data set alone)."""
    return dict(images) if isinstance(images, dict) else {"": images}


def shown_images(all_images: list[str], images, where: str = "report.explorer.images"
                 ) -> list[str]:
    """The images a view shows: ``images`` ids (checked), or that many spread evenly over
    ``all_images`` (manifest order), first and last included."""
    if isinstance(images, list):
        missing = [i for i in images if i not in set(all_images)]
        if missing:
            raise ConfigError(f"{where}: image {missing[0]!r} is not in the data set")
        return list(images)
    n = min(int(images), len(all_images))
    idx = np.unique(np.round(np.linspace(0, len(all_images) - 1, n)).astype(int))
    return [all_images[i] for i in idx]


def shown_layers(store_layers: list[int], layers, norm_layer: int | None = None) -> list[int]:
    """``layers: all`` -> every stored layer (with the final-norm entry); else the listed block
    indices, checked against the feature file ('out' = the final-norm entry ``norm_layer``)."""
    if layers == "all":
        return list(store_layers)
    out = []
    for x in layers:
        li = (-1 if norm_layer is None else norm_layer) if x == "out" else int(x)
        if li not in store_layers:
            raise ConfigError(f"report.explorer.layers: layer {x!r} not extracted "
                              f"(have {store_layers})")
        out.append(li)
    return sorted(set(out))


# --------------------------------------------------------------------------------------- PCA
def pca_fit(x: np.ndarray, dims: int):
    """Principal components of the rows of ``x`` (N, C): (mean (C,), components (d, C) with
    orthonormal rows, scores (N, d) = (x - mean) @ components.T), d = min(dims, N, C), float64.
    Each component's loading of largest magnitude is positive."""
    x = np.asarray(x, np.float64)
    mean = x.mean(axis=0)
    _, _, vt = np.linalg.svd(x - mean, full_matrices=False)
    comps = vt[:min(int(dims), vt.shape[0])]
    sign = np.sign(comps[np.arange(len(comps)), np.abs(comps).argmax(axis=1)])
    comps = comps * np.where(sign == 0, 1.0, sign)[:, None]
    return mean, comps, (x - mean) @ comps.T


def pca_rgb(scores: np.ndarray) -> np.ndarray:
    """The first three principal-component scores (N, >=3) as RGB in [0, 1]: each component
    min-max scaled over all N patches (a constant component gives 0.5). Fewer than three
    components leave the missing channels at 0."""
    s = np.asarray(scores, np.float64)[:, :3]
    lo, hi = s.min(axis=0), s.max(axis=0)
    span = hi - lo
    rgb = np.where(span > 0, (s - lo) / np.where(span > 0, span, 1.0), 0.5)
    if rgb.shape[1] < 3:
        rgb = np.concatenate([rgb, np.zeros((len(rgb), 3 - rgb.shape[1]))], axis=1)
    return rgb


def figure_layers(layers: list[int], norm_layer: int | None, best: int | None) -> list[int]:
    """Layers the figure shows: an early block (a quarter of the depth), the middle block, the
    best layer (when known) and the final-norm entry ``out`` (when stored), in order."""
    blocks = [li for li in layers if li != norm_layer]
    if not blocks:
        return list(layers)
    n = len(blocks)
    pick = {blocks[(n - 1) // 4], blocks[(n - 1) // 2]}
    if best is not None and best in layers:
        pick.add(int(best))
    pick.add(norm_layer if norm_layer is not None else blocks[-1])
    return sorted(pick)


def best_layers(best: pd.DataFrame | None, dataset_models: list[str]) -> dict[str, int]:
    """Per model: the best layer of the raw features most tasks agree on (best_layer.csv; ties
    go to the deeper layer); models without rows are left out."""
    out = {}
    if best is None or not len(best):
        return out
    d = best[best["variant"] == "raw"] if (best["variant"] == "raw").any() else best
    for m in dataset_models:
        votes = Counter(int(x) for x in d.loc[d["model"] == m, "best_layer"])
        if votes:
            out[m] = max(votes, key=lambda li: (votes[li], li))
    return out


def thumbnail(dataset: Dataset, image: str, size: int = THUMB) -> np.ndarray:
    """The image resized (aspect kept) to ``size`` px on its longer side: uint8 (h, w, 3)."""
    im = Image.fromarray(dataset.load_image(image))
    scale = size / max(im.size)
    return np.asarray(im.resize((max(1, round(im.width * scale)),
                                 max(1, round(im.height * scale))), Image.BICUBIC))


def patch_pca_table(features: dict, dataset: Dataset, dataset_name: str, images: list[str],
                    best: dict | None = None) -> pd.DataFrame:
    """Rows of ``tables/patch_pca.parquet``: for every model of ``features`` ({model: feature
    file}) and each of its :func:`figure_layers`, one ``kind == "pca"`` row per patch of the
    shown ``images`` with its RGB (:func:`pca_rgb`, fitted jointly over those images); and one
    ``kind == "image"`` row per pixel of each image's :func:`thumbnail` (model "", layer -1)."""
    rows = []
    for model, path in features.items():
        with FeatureStore(path) as store:
            layers = figure_layers(store.layers, store.norm_layer, (best or {}).get(model))
            h, w = store.grid
            n_layers = len([li for li in store.layers if li != store.norm_layer])
            for li in layers:
                x = store.tokens(li, images)
                rgb = pca_rgb(pca_fit(x.reshape(-1, x.shape[-1]), 3)[2])
                img, r, c = np.unravel_index(np.arange(len(rgb)), (len(images), h, w))
                rows.append(pd.DataFrame({
                    "kind": "pca", "model": model, "dataset": dataset_name,
                    "image": np.asarray(images)[img], "layer": li, "n_layers": n_layers,
                    "row": r, "col": c, "r": rgb[:, 0], "g": rgb[:, 1], "b": rgb[:, 2]}))
    for image in images:
        t = thumbnail(dataset, image).astype(np.float64) / 255.0
        r, c = np.unravel_index(np.arange(t.shape[0] * t.shape[1]), t.shape[:2])
        px = t.reshape(-1, 3)
        rows.append(pd.DataFrame({
            "kind": "image", "model": "", "dataset": dataset_name, "image": image, "layer": -1,
            "n_layers": 0, "row": r, "col": c, "r": px[:, 0], "g": px[:, 1], "b": px[:, 2]}))
    if not rows:
        return pd.DataFrame(columns=TABLE_COLUMNS)
    out = pd.concat(rows, ignore_index=True)[TABLE_COLUMNS]
    for col in ("r", "g", "b"):
        out[col] = out[col].astype(np.float32)
    return out
