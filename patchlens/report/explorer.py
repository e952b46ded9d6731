"""Data of the patch-similarity explorer (``results/report/explorer.html``): compressed patch
features of the shown images, per model, variant and layer, and the error of that compression.

Compression (docs/protocols.md#patch-views): the variant's features of one layer, for the shown
images of one data set, ``x`` (N, C), are projected on their first ``d`` principal components
(:func:`patchlens.report.patch_pca.pca_fit`, fitted on these N patches). The reconstruction
``x_hat = mean + z @ V`` has the same dot products as the (d + 1)-vector ``y = [z + V mean,
|mean - V^T V mean|]`` (the part of the mean outside the components' span is one more
coordinate, the same for every patch), so the page computes cosine similarities of
reconstructed features from ``y`` alone. ``y`` is stored as int8 with one scale per coordinate
(``code = round(y / scale)``, ``scale = max |y_j| / 127``). The first three coordinates minus
``V mean`` are the principal-component scores the PCA view colours (:func:`pca_rgb`).

The error stated on the page is the largest absolute difference, over every pair of shown
patches, between the cosine similarity of the decoded vectors and that of the stored float16
features after the variant (:func:`cosine_error`). A patch of zero norm has similarity 0.
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
from patchlens.report.patch_pca import pca_fit, shown_layers

EPS = 1e-12  # norms below this count as zero (similarity 0), in numpy and on the page


def compress(x: np.ndarray, dims: int) -> dict:
    """int8 codes of the (d + 1)-vectors ``y`` of the rows of ``x`` (N, C), see the module
    docstring: {codes int8 (N, d + 1), scale float32 (d + 1,), shift float32 (3,) (= V mean
    on the first three coordinates: scores = y[:, :3] - shift), dims d}."""
    mean, comps, z = pca_fit(x, dims)
    vm = comps @ mean
    rest = float(np.linalg.norm(mean - comps.T @ vm))
    y = np.concatenate([z + vm, np.full((len(z), 1), rest)], axis=1)
    top = np.abs(y).max(axis=0)
    scale = np.where(top > 0, top / 127.0, 1.0).astype(np.float32)
    codes = np.clip(np.round(y / scale), -127, 127).astype(np.int8)
    shift = np.zeros(3, np.float32)
    shift[:min(3, len(vm))] = vm[:3]
    return {"codes": codes, "scale": scale, "shift": shift, "dims": int(comps.shape[0])}


def decode(comp: dict) -> np.ndarray:
    """The float32 vectors the page decodes: codes * scale (N, d + 1)."""
    return comp["codes"].astype(np.float32) * comp["scale"]


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float64); rows of norm below :data:`EPS` become 0."""
    x = np.asarray(x, np.float64)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.where(n > EPS, x / np.where(n > EPS, n, 1.0), 0.0)


def cosine_matrix(x: np.ndarray) -> np.ndarray:
    """Cosine similarity of every pair of rows of ``x`` (N, D), zero-norm rows 0."""
    u = unit_rows(x)
    return u @ u.T


def cosine_error(x: np.ndarray, comp: dict, block: int = 1024) -> float:
    """Max |cos(decoded) - cos(x)| over every pair of rows (x: the uncompressed features)."""
    a, b = unit_rows(x), unit_rows(decode(comp))
    worst = 0.0
    for i in range(0, len(a), block):
        worst = max(worst, float(np.abs(a[i:i + block] @ a.T - b[i:i + block] @ b.T).max()))
    return worst


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


def layer_name(layer: int, norm_layer: int | None) -> str:
    return "out" if norm_layer is not None and layer == norm_layer else str(layer)


def model_payload(feature_file, variance_file, images: list[str], variants: list[str],
                  layers, dims: int, label: str) -> tuple[dict, dict]:
    """One model on one data set: ({label, grid, input_size, layers, layer_names, variants:
    {variant: [per layer {codes (base64 int8), scale, shift, dims}]}}, errors {variant:
    [max abs cosine error per layer]})."""
    with FeatureStore(feature_file) as store:
        stats = VarianceStats(variance_file) if variance_file else None
        chosen = shown_layers(store.layers, layers)
        out = {"label": label, "grid": list(store.grid),
               "input_size": [int(v) for v in store.attrs.get("input_size", [0, 0])],
               "layers": chosen, "layer_names": [layer_name(li, store.norm_layer)
                                                 for li in chosen], "variants": {}}
        errors = {}
        for v in variants:
            if needs_stats(v) and stats is None:
                continue
            out["variants"][v], errors[v] = [], []
            for li in chosen:
                x = variant_features(store, li, images, v, stats)
                comp = compress(x, dims)
                errors[v].append(cosine_error(x, comp))
                out["variants"][v].append({
                    "codes": base64.b64encode(comp["codes"].tobytes()).decode("ascii"),
                    "scale": [float(s) for s in comp["scale"]],
                    "shift": [float(s) for s in comp["shift"]], "dims": comp["dims"]})
    return out, errors
