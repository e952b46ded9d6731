"""Data of the patch-similarity explorer (``results/report/explorer.html``): compressed patch
features of the shown images, per model, variant and layer, and the error of that compression.

Compression (docs/protocols.md#patch-views): the variant's features of one layer, for the shown
images of one data set, ``x`` (N, C), are projected on their first ``d`` principal components
(:func:`patchlens.report.patch_pca.pca_fit`, fitted on these N patches). The reconstruction
``x_hat = mean + z @ V`` has the same dot products as the (d + 1)-vector ``y = [z + V mean,
|mean - V^T V mean|]`` (the part of the mean outside the components' span is one more
coordinate, the same for every patch), so the page computes cosine similarities of
reconstructed features from ``y`` alone. ``y`` is stored as int8 with one scale per coordinate
(``code = round(y / scale)``, ``scale = max |y_j| / 127``) for the first 16 components and the
mean coordinate, and as 4-bit codes (``scale = max |y_j| / 7``) for the others, which carry
less of the variance: at the same bytes, twice the components of an all-int8 code halve the
error on the demo's ViT-S/14 (``benchmarks/README.md``). The first three coordinates minus
``V mean`` are the principal-component scores the PCA view colours (:func:`pca_rgb`).

The error stated on the page is the largest absolute difference, over every pair of shown
patches, between the cosine similarity of the decoded vectors and that of the stored float16
features after the variant (:func:`cosine_errors`; their mean is stated too). A patch of zero norm has similarity 0.
"""
from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

from patchlens.data.dataset import Dataset
from patchlens.features.channel_stats import VarianceStats
from patchlens.features.store import FeatureStore
from patchlens.features.variants import apply_variant, needs_stats
from patchlens.report.figures.core import layer_name
from patchlens.report.patch_pca import pca_fit, shown_layers

EPS = 1e-12  # norms below this count as zero (similarity 0), in numpy and on the page
HIGH = 16    # leading principal components stored as int8; the others as 4-bit codes


def _quantize(y: np.ndarray, top_code: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric uniform codes of the columns of ``y``: (codes in [-top_code, top_code] as
    int8, float32 scale per column = max |column| / top_code; 1 for an all-zero column)."""
    top = np.abs(y).max(axis=0) if len(y) else np.zeros(y.shape[1])
    scale = np.where(top > 0, top / top_code, 1.0).astype(np.float32)
    return np.clip(np.round(y / scale), -top_code, top_code).astype(np.int8), scale


def compress(x: np.ndarray, dims: int) -> dict:
    """Codes of the (d + 1)-vectors ``y`` of the rows of ``x`` (N, C), see the module docstring:
    the first min(d, :data:`HIGH`) coordinates and the mean coordinate as int8 (``codes`` (N,
    h + 1), ``scale``), the other d - h coordinates as 4-bit codes in [-7, 7] (``codes4``: two
    per byte, code + 8, the first in the low nibble; ``scale4``); ``shift`` (3,) = V mean on
    the first three coordinates (scores = y[:, :3] - shift); ``dims`` d."""
    mean, comps, z = pca_fit(x, dims)
    vm = comps @ mean
    rest = float(np.linalg.norm(mean - comps.T @ vm))
    d = comps.shape[0]
    h = min(d, HIGH)
    y = z + vm
    codes, scale = _quantize(np.concatenate([y[:, :h], np.full((len(y), 1), rest)], axis=1), 127)
    low, scale4 = _quantize(y[:, h:], 7)
    nib = (low.astype(np.int16) + 8).astype(np.uint8)
    if nib.shape[1] % 2:
        nib = np.concatenate([nib, np.full((len(nib), 1), 8, np.uint8)], axis=1)
    packed = (nib[:, 0::2] | (nib[:, 1::2] << 4)).astype(np.uint8)
    shift = np.zeros(3, np.float32)
    shift[:min(3, d)] = vm[:3]
    return {"codes": codes, "scale": scale, "codes4": packed, "scale4": scale4,
            "shift": shift, "dims": int(d)}


def decode(comp: dict) -> np.ndarray:
    """The float32 vectors the page decodes, (N, d + 1): the int8 coordinates (codes * scale;
    the first three are the PCA scores plus ``shift``, the last the mean coordinate), then
    the 4-bit ones."""
    packed = comp["codes4"]
    nib = np.stack([packed & 15, packed >> 4], axis=2).reshape(len(packed), -1)
    low = (nib[:, :len(comp["scale4"])].astype(np.float32) - 8) * comp["scale4"]
    return np.concatenate([comp["codes"].astype(np.float32) * comp["scale"], low], axis=1)


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float64); rows of norm below :data:`EPS` become 0."""
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(n > EPS, x / np.where(n > EPS, n, 1.0), 0.0)


def cosine_matrix(x: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair of rows of ``x`` (N, D), zero-norm rows 0."""
    u = unit_rows(x)
    return u @ u.T


def cosine_errors(x: np.ndarray, comp: dict, block: int = 1024) -> tuple[float, float]:
    """(max, mean) of |cos(decoded) - cos(x)| over every pair of rows (x: the uncompressed
    features)."""
    a, b = unit_rows(x), unit_rows(decode(comp))
    worst, total = 0.0, 0.0
    for i in range(0, len(a), block):
        e = np.abs(a[i:i + block] @ a.T - b[i:i + block] @ b.T)
        worst, total = max(worst, float(e.max())), total + float(e.sum())
    return worst, total / max(1, len(a) ** 2)


def variant_features(store: FeatureStore, layer: int, images: list[str], variant: str,
                     stats: VarianceStats | None) -> np.ndarray:
    """(N, C') patch features of ``images`` at ``layer`` after ``variant`` (float32 of the
    stored float16, channel statistics of the variance file)."""
    x = store.tokens(layer, images)
    x = x.reshape(-1, x.shape[-1])
    if needs_stats(variant):
        x = apply_variant(x, variant, stats.mean(layer), stats.var(layer))
    return np.asarray(x, np.float32)


def image_uri(dataset: Dataset, image: str, size: tuple[int, int]) -> str:
    """The image resized to ``size`` (H, W), as the extraction saw it, as an inline JPEG."""
    im = Image.fromarray(dataset.load_image(image)).resize(size[::-1], Image.BICUBIC)
    buf = io.BytesIO()
    im.save(buf, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def model_payload(feature_file, variance_file, images: list[str], variants: list[str],
                  layers, dims: int, label: str) -> tuple[dict, dict]:
    """One model on one data set: ({label, grid, input_size, layers, layer_names, variants:
    {variant: [per layer {codes, codes4 (base64), scale, scale4, shift, dims}]}}, errors {variant:
    [(max, mean) abs cosine error per layer]})."""
    with FeatureStore(feature_file) as store:
        stats = VarianceStats(variance_file) if variance_file else None
        chosen = shown_layers(store.layers, layers, store.norm_layer)
        out = {"label": label, "grid": list(store.grid),
               "input_size": [int(v) for v in store.attrs.get("input_size", [0, 0])],
               "layers": chosen, "layer_names": [layer_name(li, -1 if store.norm_layer is None
                                                            else store.norm_layer)
                                                 for li in chosen], "variants": {}}
        errors = {}
        for v in variants:
            if needs_stats(v) and stats is None:
                continue
            out["variants"][v], errors[v] = [], []
            for li in chosen:
                x = variant_features(store, li, images, v, stats)
                comp = compress(x, dims)
                errors[v].append(cosine_errors(x, comp))
                out["variants"][v].append({
                    "codes": base64.b64encode(comp["codes"].tobytes()).decode("ascii"),
                    "scale": [float(s) for s in comp["scale"]],
                    "codes4": base64.b64encode(comp["codes4"].tobytes()).decode("ascii"),
                    "scale4": [float(s) for s in comp["scale4"]],
                    "shift": [float(s) for s in comp["shift"]], "dims": comp["dims"]})
    return out, errors
