"""Per layer x head attention statistics, accumulated over batches (never full maps on disk).

Protocols (queries are the patch tokens; the prefix tokens -- CLS, registers -- are excluded as
keys and each query row is renormalised over the patch keys, as in Raghu et al. 2021 "Do Vision
Transformers See Like Convolutional Neural Networks?" and Walmer et al. CVPR 2023 "Teaching
Matters", whose ``AvgAlignedAttentionOnToken`` removes the CLS token and renormalises the same way):

``distance``  mean attention distance in pixels: sum_k a'(q, k) * ||c_q - c_k|| * patch_size,
              averaged over query patches and images (c = patch centre in patch units, a' the
              renormalised row). Raghu et al. 2021, Fig. 3; Xie et al. 2022 "Revealing the Dark
              Secrets of MIM", Sec. 4.1.
``entropy``   Shannon entropy (nats) of a'(q, .), averaged over queries and images; uniform
              attention over P patches gives log P.
``cls_share`` attention mass of patch queries on the prefix tokens (before renormalisation),
              averaged over queries and images.
``centred``   the query-centred average map (Walmer et al. 2023): each renormalised row is shifted
              so its query sits at (dy, dx) = (0, 0), then averaged over queries and images, on a
              (2K-1) x (2K-1) canvas, K = radius + 1 (or the grid). dy > 0 is down, dx > 0 right,
              so a head that always looks one patch right has its mass at (0, +1). With the full
              canvas every head's map sums to 1; a radius crops offsets beyond it.
``diversity`` per layer: mean over head pairs and query positions of the Jensen-Shannon divergence
              (nats, in [0, log 2]) between the heads' mean attention distributions
              Abar_h(q, .) = E_images a'(q, .). Xie et al. 2022 (Sec. 4.2) measure head diversity
              with a divergence between the heads' maps; we use the symmetric, bounded JS
              divergence of the image-averaged maps so that it can be streamed. By joint convexity
              it is a lower bound of the per-image mean JS: it counts heads that look at
              *different places on average*, not per-image variation.

References, parameters and every known difference from the papers: ``docs/protocols.md#attention``
(and ``#offset_heads`` for Walmer et al.'s average attention offset, computed from ``centred`` in
:mod:`patchlens.analysis.offset_heads`).

Rows whose whole mass sits on prefix tokens (patch mass exactly 0) cannot be renormalised; they are
left out of ``distance`` and ``entropy`` and contribute zeros to ``centred`` and ``diversity``.

Memory: per layer the accumulator keeps a float64 (heads, P, P) sum of renormalised maps (for
``centred`` and ``diversity``): 12 heads x 196^2 patches = 3.7 MB per layer. Per batch, the
reductions run on the model's device (torch); only (heads, P, P) sums come back to the host.

The numpy functions and the table helpers import no torch; only :func:`attention_statistics` and
:meth:`AttentionAccumulator.add` import it (lazily), so report code can import this module cheaply.
"""
from __future__ import annotations

from itertools import combinations
from typing import Iterable

import numpy as np
import pandas as pd
import xarray as xr

from patchlens.errors import ConfigError, DataError
from patchlens.io import atomic_path
from patchlens.params import expect_int, merge_params

STAT_VARS = ("distance", "entropy", "cls_share")
DEFAULT_PARAMS = {"radius": None, "layers": None}  # parameters of :func:`attention_statistics`
WHERE = "analyses.attention.params"  # where they live in the config (error messages)


# ----------------------------------------------------------------------------- geometry (numpy)

def patch_distance_matrix(grid: tuple[int, int], patch_size: float) -> np.ndarray:
    """(P, P) Euclidean distance in pixels between patch centres of an (h, w) grid, row-major."""
    h, w = grid
    yy, xx = np.divmod(np.arange(h * w), w)
    d = np.hypot(yy[:, None] - yy[None, :], xx[:, None] - xx[None, :])
    return d * float(patch_size)


def resolve_radius(grid: tuple[int, int], radius: int | None) -> tuple[int, int]:
    """Canvas half-sizes (ry, rx): ``radius`` clipped to the grid, or the whole grid if None."""
    h, w = grid
    if radius is None:
        return h - 1, w - 1
    if isinstance(radius, bool) or not isinstance(radius, (int, np.integer)) or radius < 0:
        raise ConfigError(f"{WHERE}.radius = {radius!r}: expected a non-negative integer "
                          "(patches) or null for the whole grid")
    return min(int(radius), h - 1), min(int(radius), w - 1)


def offset_index(grid: tuple[int, int], radius: tuple[int, int]) -> np.ndarray:
    """(P, P) flat canvas index of key k relative to query q, -1 where the offset is cropped.

    Canvas is (2 ry + 1, 2 rx + 1); offset (dy, dx) = (row_k - row_q, col_k - col_q) sits at
    ((dy + ry), (dx + rx)).
    """
    h, w = grid
    ry, rx = radius
    yy, xx = np.divmod(np.arange(h * w), w)
    dy = yy[None, :] - yy[:, None]
    dx = xx[None, :] - xx[:, None]
    idx = (dy + ry) * (2 * rx + 1) + (dx + rx)
    idx[(np.abs(dy) > ry) | (np.abs(dx) > rx)] = -1
    return idx


def centred_maps(mean_attn: np.ndarray, grid: tuple[int, int],
                 radius: tuple[int, int]) -> np.ndarray:
    """Query-centred average map (Walmer et al. 2023): (H, P, P) -> (H, 2ry+1, 2rx+1).

    Each query row is placed with its query at the canvas centre and the rows are averaged over
    the P queries (offsets a query cannot reach contribute nothing).
    """
    H, P, _ = mean_attn.shape
    ry, rx = radius
    idx = offset_index(grid, radius)
    keep = idx >= 0
    flat = idx[keep]
    size = (2 * ry + 1) * (2 * rx + 1)
    out = np.stack([np.bincount(flat, weights=mean_attn[h][keep], minlength=size)
                    for h in range(H)])
    return (out / P).reshape(H, 2 * ry + 1, 2 * rx + 1)


def entropy(p: np.ndarray, axis: int = -1) -> np.ndarray:
    """Shannon entropy in nats, 0 log 0 = 0."""
    p = np.asarray(p, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), axis=axis)


def js_divergence(p: np.ndarray, q: np.ndarray, axis: int = -1) -> np.ndarray:
    """Jensen-Shannon divergence (nats): H((p+q)/2) - (H(p) + H(q))/2, in [0, log 2]."""
    return entropy((p + q) / 2, axis) - (entropy(p, axis) + entropy(q, axis)) / 2


def head_diversity(mean_attn: np.ndarray) -> float:
    """Mean over head pairs and queries of JS(Abar_i(q, .), Abar_j(q, .)); 0 for one head."""
    H = mean_attn.shape[0]
    if H < 2:
        return 0.0
    ent = entropy(mean_attn)  # (H, P)
    vals = [np.mean(entropy((mean_attn[i] + mean_attn[j]) / 2) - (ent[i] + ent[j]) / 2)
            for i, j in combinations(range(H), 2)]
    return float(np.mean(vals))


# ----------------------------------------------------------------------------- accumulation

class AttentionAccumulator:
    """Streaming sums of the per-row statistics of one model's attention maps.

    ``add(layer, attn)`` takes one layer's probabilities (b, heads, N, N), N = prefix + h*w, as a
    torch tensor (any device) or a numpy array; ``result()`` returns the xarray Dataset.
    """

    def __init__(self, layers: Iterable[int], grid: tuple[int, int], patch_size: float,
                 num_prefix_tokens: int, radius: int | None = None):
        self.layers = [int(x) for x in layers]
        self.grid = (int(grid[0]), int(grid[1]))
        self.patch_size = float(patch_size)
        self.num_prefix = int(num_prefix_tokens)
        self.radius = resolve_radius(self.grid, radius)
        self.P = self.grid[0] * self.grid[1]
        self._dist = patch_distance_matrix(self.grid, self.patch_size)
        self._dist_t = {}
        self._sums: dict[int, dict[str, np.ndarray]] = {}
        self._images: dict[int, int] = {}

    def _distance_on(self, device):
        import torch
        key = str(device)
        if key not in self._dist_t:
            self._dist_t[key] = torch.as_tensor(self._dist, dtype=torch.float32, device=device)
        return self._dist_t[key]

    def add(self, layer: int, attn) -> None:
        """Accumulate one batch of one layer's attention probabilities."""
        import torch
        layer = int(layer)
        if layer not in self.layers:
            return
        a = torch.as_tensor(attn)
        if a.ndim != 4 or a.shape[-1] != a.shape[-2]:
            raise DataError(f"attention of layer {layer}: expected (batch, heads, N, N), "
                            f"got {tuple(a.shape)}")
        b, H, N, _ = a.shape
        if N != self.num_prefix + self.P:
            raise DataError(f"attention of layer {layer} has {N} tokens but grid {self.grid} + "
                            f"{self.num_prefix} prefix tokens gives {self.num_prefix + self.P}; "
                            "pass the grid of the input size and model.num_prefix_tokens")
        n_p = self.num_prefix
        with torch.no_grad():
            a = a.float()
            cls = a[:, :, n_p:, :n_p].sum(-1)                    # (b, H, P)
            pp = a[:, :, n_p:, n_p:]                               # (b, H, P, P)
            rs = pp.sum(-1, keepdim=True)
            valid = (rs[..., 0] > 0)
            r = pp / torch.where(rs > 0, rs, torch.ones_like(rs))
            dist = torch.einsum("bhqk,qk->bhq", r, self._distance_on(r.device))
            ent = -torch.special.xlogy(r, r).sum(-1)
            red = {
                "cls_share": cls.sum((0, 2)),
                "distance": dist.sum((0, 2)),
                "entropy": ent.sum((0, 2)),
                "n_valid": valid.sum((0, 2)),
                "mean_attn": r.sum(0),
            }
            red = {k: v.double().cpu().numpy() for k, v in red.items()}
        red["n_rows"] = np.full(H, b * self.P, dtype=np.float64)
        acc = self._sums.get(layer)
        if acc is None:
            self._sums[layer] = red
        else:
            if acc["mean_attn"].shape != red["mean_attn"].shape:
                raise DataError(f"attention of layer {layer}: head count changed between batches")
            for k, v in red.items():
                acc[k] += v
        self._images[layer] = self._images.get(layer, 0) + b

    @property
    def n_images(self) -> int:
        return self._images.get(self.layers[0], 0) if self.layers else 0

    def result(self) -> xr.Dataset:
        """Finalise the means into an xarray Dataset (dims layer, head, dy, dx)."""
        missing = [x for x in self.layers if x not in self._sums]
        if missing or len(set(self._images.values())) > 1:
            raise DataError(f"attention capture incomplete: layers "
                            f"{missing or sorted(self._images)} saw no batch or a different "
                            "number of images")
        n = self.n_images
        if n == 0:
            raise DataError("attention statistics: no images were passed through the model")
        heads = {self._sums[x]["mean_attn"].shape[0] for x in self.layers}
        if len(heads) != 1:
            raise DataError(f"attention statistics: layers differ in head count {sorted(heads)}")
        H = heads.pop()
        ry, rx = self.radius
        L = len(self.layers)
        out = {k: np.zeros((L, H)) for k in STAT_VARS}
        cen = np.zeros((L, H, 2 * ry + 1, 2 * rx + 1))
        div = np.zeros(L)
        for i, layer in enumerate(self.layers):
            s = self._sums[layer]
            with np.errstate(invalid="ignore", divide="ignore"):
                out["distance"][i] = s["distance"] / s["n_valid"]
                out["entropy"][i] = s["entropy"] / s["n_valid"]
            out["cls_share"][i] = s["cls_share"] / s["n_rows"]
            mean_attn = s["mean_attn"] / n
            cen[i] = centred_maps(mean_attn, self.grid, self.radius)
            div[i] = head_diversity(mean_attn)
        dims = ("layer", "head")
        ds = xr.Dataset(
            {
                "distance": (dims, out["distance"], {"units": "pixels",
                             "long_name": "mean attention distance (patch keys, renormalised)"}),
                "entropy": (dims, out["entropy"], {"units": "nats",
                            "long_name": "entropy of the patch-key attention distribution"}),
                "cls_share": (dims, out["cls_share"], {"units": "1",
                              "long_name": "attention mass of patch queries on prefix tokens"}),
                "diversity": (("layer",), div, {"units": "nats",
                              "long_name": "mean pairwise JS divergence between heads' mean maps"}),
                "centred": (("layer", "head", "dy", "dx"), cen, {"units": "1",
                            "long_name": "query-centred mean attention (dy down, dx right)"}),
            },
            coords={"layer": np.array(self.layers, dtype=np.int32),
                    "head": np.arange(H, dtype=np.int32),
                    "dy": np.arange(-ry, ry + 1, dtype=np.int32),
                    "dx": np.arange(-rx, rx + 1, dtype=np.int32)},
            attrs={"patch_size": self.patch_size, "grid": list(self.grid), "n_images": int(n),
                   "num_prefix_tokens": self.num_prefix, "radius": [ry, rx]},
        )
        return ds


# ----------------------------------------------------------------------------- model driver

def check_params(params: dict | None) -> dict:
    """``radius`` (null or an integer >= 1) and ``layers`` (null or a non-empty list of block
    indices >= 0) of :func:`attention_statistics`; ConfigError naming the key otherwise. The
    range of ``layers`` against each model's depth is checked by :mod:`patchlens.startup`."""
    p = merge_params(params, DEFAULT_PARAMS, WHERE)
    if p["radius"] is not None:
        expect_int(p["radius"], f"{WHERE}.radius", 1)
    if p["layers"] is not None:
        if not isinstance(p["layers"], (list, tuple)) or not p["layers"]:
            raise ConfigError(f"{WHERE}.layers = {p['layers']!r}: expected null or a non-empty "
                              "list of block indices")
        for x in p["layers"]:
            expect_int(x, f"{WHERE}.layers", 0)
    return p


def attention_statistics(model, batches: Iterable, patch_size: int, grid: tuple[int, int],
                         num_prefix_tokens: int, params: dict | None = None) -> xr.Dataset:
    """Run ``model`` over ``batches`` and return the per layer x head statistics (module doc).

    ``batches`` yields normalised float (b, 3, H, W) tensors or arrays whose patch grid is
    ``grid``. ``params``: ``radius`` (int patches or None = whole grid; default None) crops the
    centred canvas; ``layers`` (list of block indices or None = all) selects blocks.
    The attention maps of one layer of one batch are the most ever held in memory.
    """
    params = merge_params(params, DEFAULT_PARAMS, WHERE)  # before importing torch: fail fast
    import torch

    from patchlens.models.attention import AttentionCapture

    probe = AttentionCapture(model)
    n_layers = probe.num_layers
    layers = params["layers"]
    layers = list(range(n_layers)) if layers is None else [int(x) for x in layers]
    bad = [x for x in layers if not 0 <= x < n_layers]
    if bad:
        raise ConfigError(f"{WHERE}.layers {bad}: the model has blocks 0..{n_layers - 1}")
    acc = AttentionAccumulator(layers, grid, patch_size, num_prefix_tokens, params["radius"])
    p0 = next(model.parameters())
    forward = getattr(model, "forward_features", model)
    with AttentionCapture(model, on_map=acc.add), torch.inference_mode():
        for batch in batches:
            x = torch.as_tensor(batch).to(device=p0.device, dtype=p0.dtype)
            forward(x)
    return acc.result()


# ----------------------------------------------------------------------------- I/O and tables

def write_attention(path, ds: xr.Dataset, **attrs) -> None:
    """Write ``ds`` as netCDF4/HDF5 (h5netcdf) atomically; ``attrs`` (e.g. model, dataset) are
    added to the file attributes. ``model`` is required (in ``ds.attrs`` or ``attrs``)."""
    ds = ds.copy()
    ds.attrs.update({k: v for k, v in attrs.items() if v is not None})
    if "model" not in ds.attrs:
        raise ValueError("write_attention: pass model=<model key> (file attribute 'model')")
    ds.attrs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in ds.attrs.items()
                if v is not None}
    with atomic_path(path) as tmp:
        ds.to_netcdf(tmp, engine="h5netcdf")


def read_attention(path) -> xr.Dataset:
    """Load an attention statistics file fully into memory (the file is closed on return)."""
    try:
        return xr.load_dataset(path, engine="h5netcdf")
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a readable attention file ({exc}); delete it and rerun "
                        "the attention rule") from None


def attention_table(ds: xr.Dataset, model: str, dataset: str) -> pd.DataFrame:
    """Long table: model, dataset, layer, head, metric, value (diversity rows have head = -1)."""
    parts = []
    for name in STAT_VARS:
        df = ds[name].to_dataframe(name="value").reset_index()[["layer", "head", "value"]]
        df["metric"] = name
        parts.append(df)
    div = ds["diversity"].to_dataframe(name="value").reset_index()[["layer", "value"]]
    div["head"], div["metric"] = -1, "diversity"
    parts.append(div)
    out = pd.concat(parts, ignore_index=True)
    out.insert(0, "dataset", dataset)
    out.insert(0, "model", model)
    out[["layer", "head"]] = out[["layer", "head"]].astype(int)
    return out[["model", "dataset", "layer", "head", "metric", "value"]]


def centred_table(ds, model: str, dataset: str | None = None) -> pd.DataFrame:
    """Long table of the query-centred maps: model[, dataset], layer, head, dy, dx, value."""
    da = ds["centred"] if isinstance(ds, xr.Dataset) else ds
    out = da.to_dataframe(name="value").reset_index()[["layer", "head", "dy", "dx", "value"]]
    if dataset is not None:
        out.insert(0, "dataset", dataset)
    out.insert(0, "model", model)
    return out
