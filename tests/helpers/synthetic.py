"""Tiny synthetic data set directories and feature files for evaluator tests.

Everything is grid-aligned: images are ``grid * patch`` pixels, so a patch cell is an exact block
of pixels and "oracle" features built from the ground truth at the grid are exact.

    write_dataset(root, images, classes, objects=None, keypoints=None) -> Path
    write_store(path, images, tokens, cls=None, patch_size=PATCH) -> Path
    band_map(rng, grid, labels, ...)  a grid-aligned label map made of straight bands
    one_hot(labels, n)                float32 one-hot along a new last axis
    identity(layer, x)                the ``raw`` transform
    random_ranking_ap(n_items, n_pos) chance-level AP of a uniformly random ranking

Other test modules may import these read-only (``from helpers.synthetic import ...``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from patchlens.data.dataset import KEYPOINT_COLUMNS, OBJECT_COLUMNS
from patchlens.features.store import write_features

PATCH = 8


def identity(layer: int, x: np.ndarray) -> np.ndarray:
    """The ``raw`` feature variant."""
    return x


def one_hot(labels: np.ndarray, n: int) -> np.ndarray:
    """Float32 one-hot of integer ``labels`` (any shape) along a new last axis of length n."""
    return np.eye(n, dtype=np.float32)[np.asarray(labels)]


def upscale(grid_map: np.ndarray, patch: int = PATCH) -> np.ndarray:
    """(h, w) grid map -> (h*patch, w*patch) pixel map (each cell a block)."""
    return np.kron(grid_map, np.ones((patch, patch), dtype=grid_map.dtype))


def band_map(rng: np.random.Generator, grid: tuple[int, int], labels: list[int],
             axis: int | None = None) -> np.ndarray:
    """A (h, w) uint8 grid map split into ``len(labels)`` straight bands along ``axis`` (random if
    None) at random cell boundaries, band i filled with labels[i]. Straight grid-aligned edges
    survive bilinear upsampling of one-hot scores exactly (no corners inside the image)."""
    axis = int(rng.integers(2)) if axis is None else axis
    n = grid[axis]
    cuts = np.sort(rng.choice(np.arange(1, n), size=len(labels) - 1, replace=False))
    band = np.searchsorted(cuts, np.arange(n), side="right")
    line = np.asarray(labels, dtype=np.uint8)[band]
    return np.repeat(line[:, None], grid[1], 1) if axis == 0 else np.repeat(line[None], grid[0], 0)


def _png(root: Path, rel: str, arr: np.ndarray) -> str:
    (root / rel).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(arr, dtype=np.uint8)).save(root / rel)
    return rel


def write_dataset(root, images: list[dict], classes, objects: list[dict] | None = None,
                  keypoints: list[dict] | None = None) -> Path:
    """Write a data set directory in the layout of :mod:`patchlens.data.dataset`.

    ``images``: dicts with ``image`` (id) and ``split``, optional ``semantic`` / ``instance``
    (uint8 (H, W) arrays), ``rgb`` (uint8 (H, W, 3); grey if absent), ``height``/``width`` (when no
    array gives them), ``labels`` (list of ints), ``sequence``, ``frame``, ``uv`` (float32
    (H, W, 2)). ``classes``: list of names (ids 0..n-1) or a {id: name} dict. ``objects`` /
    ``keypoints``: row dicts with the columns of objects.csv / keypoints.csv."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for spec in images:
        im = spec["image"]
        shape = next((spec[k].shape[:2] for k in ("semantic", "instance", "rgb", "uv")
                      if spec.get(k) is not None), (spec.get("height", 32), spec.get("width", 32)))
        rgb = spec.get("rgb")
        rgb = np.full((*shape, 3), 128, np.uint8) if rgb is None else rgb
        row = {"image": im, "path": _png(root, f"images/{im}.png", rgb),
               "split": spec["split"], "semantic": "", "instance": "",
               "sequence": spec.get("sequence", ""), "frame": spec.get("frame", -1),
               "height": shape[0], "width": shape[1],
               "labels": " ".join(str(int(x)) for x in spec.get("labels", [])), "uv": ""}
        for kind in ("semantic", "instance"):
            if spec.get(kind) is not None:
                row[kind] = _png(root, f"{kind}/{im}.png", spec[kind])
        if spec.get("uv") is not None:
            (root / "uv").mkdir(exist_ok=True)
            np.save(root / "uv" / f"{im}.npy", np.asarray(spec["uv"], np.float32))
            row["uv"] = f"uv/{im}.npy"
        rows.append(row)
    pd.DataFrame(rows).to_csv(root / "manifest.csv", index=False)
    items = classes.items() if isinstance(classes, dict) else enumerate(classes)
    pd.DataFrame([{"class": int(c), "name": n} for c, n in items]).to_csv(
        root / "classes.csv", index=False)
    if objects is not None:
        pd.DataFrame(objects, columns=OBJECT_COLUMNS).to_csv(root / "objects.csv", index=False)
    if keypoints is not None:
        pd.DataFrame(keypoints, columns=KEYPOINT_COLUMNS).to_csv(root / "keypoints.csv",
                                                                 index=False)
    return root


def write_store(path, images: list[str], tokens: np.ndarray, cls: np.ndarray | None = None,
                patch_size: int = PATCH, layers: list[int] | None = None) -> Path:
    """Write a feature file from tokens (n, L, h, w, C) (and cls (n, L, C))."""
    n, L, h, w, C = tokens.shape
    attrs = {"model": "synthetic", "patch_size": patch_size,
             "input_size": np.array([h * patch_size, w * patch_size])}
    write_features(path, tokens.reshape(n, L, h * w, C), list(images), (h, w), attrs, cls=cls,
                   layers=layers)
    return Path(path)


def object_rows(image: str, instance: np.ndarray, classes: dict[int, int],
                identities: dict[int, int]) -> list[dict]:
    """objects.csv rows for every instance id of an instance map (area_frac and bbox computed)."""
    rows = []
    for inst in sorted(set(np.unique(instance).tolist()) - {0, 255}):
        ys, xs = np.nonzero(instance == inst)
        rows.append({"image": image, "instance": inst, "class": classes[inst],
                     "identity": identities[inst], "area_frac": ys.size / instance.size,
                     "x0": int(xs.min()), "y0": int(ys.min()),
                     "x1": int(xs.max()) + 1, "y1": int(ys.max()) + 1})
    return rows


def random_ranking_ap(n_items: int, n_pos: int) -> float:
    """Expected AP of a uniformly random ranking of ``n_items`` with ``n_pos`` positives (chance
    level): E[AP] = (H_N + (R - 1) / (N - 1) * (N - H_N)) / N with H_N the N-th harmonic number,
    from E[rel_k rel_j] = R/N (j = k) and R(R-1)/(N(N-1)) (j < k)."""
    n, r = int(n_items), int(n_pos)
    if not 0 < r <= n:
        raise ValueError(f"need 0 < n_pos <= n_items, got {r}, {n}")
    h = float(np.sum(1.0 / np.arange(1, n + 1)))
    return (h + ((r - 1) / (n - 1) if n > 1 else 0.0) * (n - h)) / n
