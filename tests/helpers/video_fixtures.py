"""Builders of small synthetic data set directories (patchlens layout) for the tracking and
keypoint tests: videos of moving boxes with instance masks, image pairs with keypoints, and
feature files whose right answer is known (oracle identity / coordinate codes)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from patchlens.data.dataset import KEYPOINT_COLUMNS, MANIFEST_COLUMNS
from patchlens.features.store import write_features
from patchlens.evaluation.upsample import resize_nearest


def _row(image, path, split, height, width, instance="", sequence="", frame=-1):
    return {"image": image, "path": path, "split": split, "semantic": "", "instance": instance,
            "sequence": sequence, "frame": frame, "height": height, "width": width,
            "labels": "", "uv": ""}


def _write_png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def write_video_dataset(root, videos: dict[str, np.ndarray], split: str = "video") -> Path:
    """Write sequences ``{name: instance masks (T, H, W) uint8}`` as frames + instance PNGs."""
    root = Path(root)
    rows = []
    for name, masks in videos.items():
        for t, m in enumerate(masks):
            image = f"{name}_{t:03d}"
            rgb = np.repeat((m.astype(np.int64) * 40 % 256).astype(np.uint8)[..., None], 3, axis=2)
            _write_png(root / "images" / f"{image}.png", rgb)
            _write_png(root / "instances" / f"{image}.png", m.astype(np.uint8))
            rows.append(_row(image, f"images/{image}.png", split, *m.shape,
                             instance=f"instances/{image}.png", sequence=name, frame=t))
    pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(root / "manifest.csv", index=False)
    pd.DataFrame({"class": [0, 1], "name": ["background", "object"]}).to_csv(
        root / "classes.csv", index=False)
    return root


def moving_boxes(T: int, H: int, W: int, boxes: list[tuple]) -> np.ndarray:
    """(T, H, W) uint8 instance masks; box i (id i+1) = (y0, x0, height, width, dy, dx): its
    top-left corner moves by (dy, dx) pixels per frame; later boxes occlude earlier ones."""
    out = np.zeros((T, H, W), np.uint8)
    for t in range(T):
        for i, (y0, x0, bh, bw, dy, dx) in enumerate(boxes):
            y, x = int(round(y0 + t * dy)), int(round(x0 + t * dx))
            out[t, max(0, y):max(0, y + bh), max(0, x):max(0, x + bw)] = i + 1
    return out


def position_code(grid: tuple[int, int], n_freq: int = 2) -> np.ndarray:
    """(h, w, 4 n_freq) smooth code of the patch position (sines/cosines of y and x)."""
    h, w = grid
    y, x = np.meshgrid(np.arange(h) / h, np.arange(w) / w, indexing="ij")
    parts = []
    for k in range(1, n_freq + 1):
        parts += [np.sin(np.pi * k * y), np.cos(np.pi * k * y),
                  np.sin(np.pi * k * x), np.cos(np.pi * k * x)]
    return np.stack(parts, -1) / np.sqrt(2 * n_freq)


def oracle_video_tokens(masks: np.ndarray, grid: tuple[int, int], n_ids: int,
                        pos_weight: float = 0.1) -> np.ndarray:
    """(T, h, w, C): one-hot of the patch's instance id (nearest pixel to the patch centre; void
    counts as background) plus a weak position code."""
    small = np.stack([resize_nearest(m, grid) for m in masks]).astype(np.int64)
    small[small > n_ids] = 0
    onehot = np.eye(n_ids + 1, dtype=np.float32)[small]
    pos = np.broadcast_to(position_code(grid), (len(masks), *grid, position_code(grid).shape[-1]))
    return np.concatenate([onehot, pos_weight * pos], -1).astype(np.float32)


def write_tokens(path, tokens: np.ndarray, images: list[str], patch_size: int = 8) -> Path:
    """Feature file from per-image tokens: (n, h, w, C) -> one layer, or (n, L, h, w, C)."""
    if tokens.ndim == 4:
        tokens = tokens[:, None]
    n, L, h, w, C = tokens.shape
    write_features(path, tokens.reshape(n, L, h * w, C), images, (h, w),
                   {"model": "oracle", "patch_size": patch_size})
    return Path(path)


# -- keypoint pairs ------------------------------------------------------------------------------

def write_pair_dataset(root, sizes: dict[str, tuple[int, int]], keypoints: pd.DataFrame,
                       split: str = "pair") -> Path:
    """Still images ``{image: (H, W)}`` (plain grey PNGs) and a keypoints.csv table."""
    root = Path(root)
    rows = []
    for image, (H, W) in sizes.items():
        _write_png(root / "images" / f"{image}.png", np.full((H, W, 3), 128, np.uint8))
        rows.append(_row(image, f"images/{image}.png", split, H, W))
    pd.DataFrame(rows, columns=MANIFEST_COLUMNS).to_csv(root / "manifest.csv", index=False)
    pd.DataFrame({"class": [0], "name": ["background"]}).to_csv(root / "classes.csv", index=False)
    keypoints[KEYPOINT_COLUMNS].to_csv(root / "keypoints.csv", index=False)
    return root


def patch_centres(size: tuple[int, int], grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (y (h,), x (w,)) that the patch centres map to under bilinear resizing
    with half-pixel centres: grid index j <-> pixel (j + 0.5) * W / w - 0.5."""
    (H, W), (h, w) = size, grid
    return (np.arange(h) + 0.5) * H / h - 0.5, (np.arange(w) + 0.5) * W / w - 0.5


def rbf_code(uv: np.ndarray, n_anchor: int = 9, sigma: float = 0.12) -> np.ndarray:
    """Smooth embedding (..., n_anchor^2 + 1) of object coordinates uv (..., 2) in [0, 1]^2:
    Gaussian bumps on an anchor grid; NaN uv (background) -> a separate background channel."""
    c = np.linspace(0, 1, n_anchor)
    anchors = np.stack(np.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)
    off = np.isnan(uv).any(-1)
    d2 = ((np.nan_to_num(uv)[..., None, :] - anchors) ** 2).sum(-1)
    code = np.exp(-d2 / (2 * sigma ** 2))
    code[off] = 0
    return np.concatenate([code, off[..., None].astype(float)], -1).astype(np.float32)


def box_uv(size, grid, box) -> np.ndarray:
    """(h, w, 2) object coordinates at the patch centres of an axis-aligned object ``box`` =
    (y0, x0, y1, x1) in pixels: uv = (y - y0, x - x0) / (y1 - y0, x1 - x0), NaN outside."""
    ys, xs = patch_centres(size, grid)
    y0, x0, y1, x1 = box
    v = (ys - y0) / (y1 - y0)
    u = (xs - x0) / (x1 - x0)
    uv = np.stack(np.meshgrid(v, u, indexing="ij"), -1)
    uv[((uv < 0) | (uv > 1)).any(-1)] = np.nan
    return uv
