"""Offset local attention heads from the query-centred average attention maps.

Walmer et al. (CVPR 2023, "Teaching Matters", Sec. 4.1 and Fig. 3) find heads -- mostly in early
layers of supervised and contrastive ViTs -- that attend to a *fixed* neighbouring patch, e.g.
always one patch to the right: a learned convolution-like shift. They are visible in the query
-centred average map (see :mod:`patchlens.analysis.attention_stats`): the head's mass piles up at
one offset next to the centre instead of at the centre.

Protocol, per (layer, head) map m(dy, dx) (dy > 0 down, dx > 0 right):
  share(dy, dx) = m(dy, dx) / sum(m)   (with the full canvas sum(m) = 1, so share = mean mass)
  peak          = argmax share (the centre competes too: a head peaking on itself is "self")
  flagged       = peak is exactly one patch from the centre (|dy| + |dx| = 1; with
                  ``diagonals: true`` also the 4 diagonal neighbours), share(peak) >= min_share and
                  share(peak) >= min_ratio * share(0, 0).
Self heads (peak at the centre) and heads whose peak lies further away ("far") are never flagged.
Ties are broken by the first maximum in (dy, dx) order.

Defaults and why:
  min_share = 0.3: a head must put at least 30 % of its average mass on one fixed neighbour. Uniform
      attention gives each offset at most 1/P (0.5 % on a 14 x 14 grid) and a head spread evenly
      over its 3 x 3 neighbourhood about 1/9 (11 %); 0.3 is ~3x the latter, so only a head dominated
      by one offset passes, while a clean shift head (share (w-1)/w, e.g. 0.93 on 14 x 14, edge
      queries cannot look further) passes easily.
  min_ratio = 2.0: the neighbour must carry at least twice the mass of the query itself, so a local
      blob centred on the query that leans slightly to one side is not called an offset head.
  diagonals = false: Walmer et al. report axis-aligned offsets; diagonal peaks are reported with
      their direction but flagged only on request.

Average attention offset (Walmer et al. 2023, Sec. 4.1; ``average_att_offset`` in
``analysis/attention_metrics.py`` of github.com/mwalmer-umd/vit_analysis), the paper's continuous
statistic next to the threshold rule above (which is this project's own): the centroid of the
query-aligned map m(dy, dx) normalised to sum 1, in the *unit canvas* where the offset of a
whole grid side maps to 1 (x = dx / (w - 1), y = dy / (h - 1); the reference's templates
``2 i / (2K - 2) - 1`` on the (2K-1)-wide canvas of a K x K grid), and its length
``avg_offset = ||(x, y)||``. A head that always looks one patch right on a K x K grid has
(x, y) = (1 / (K - 1), 0); a head centred on its query (or symmetric around it) has 0. The
values go into the attention table as metrics ``avg_offset``, ``offset_x`` and ``offset_y``
(:func:`offset_table`). With ``radius`` cropping the canvas the mass beyond it is lost and the
centroid is taken over the crop (the reference always uses the whole canvas).
See ``docs/protocols.md#offset_heads``.
No torch import: this runs on the stored ``centred`` variable.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from patchlens.errors import ConfigError
from patchlens.params import expect_number, merge_params

DEFAULT_PARAMS = {"min_share": 0.3, "min_ratio": 2.0, "diagonals": False}
WHERE = "analyses.attention.params.offset_heads"  # where they live in the config (messages)

DIRECTIONS = {(0, 0): "self", (0, 1): "right", (0, -1): "left", (-1, 0): "up", (1, 0): "down",
              (-1, 1): "up-right", (-1, -1): "up-left", (1, 1): "down-right",
              (1, -1): "down-left"}


def check_params(params: dict | None) -> dict:
    """Validated thresholds (keys of :data:`DEFAULT_PARAMS`); ConfigError naming the key otherwise."""
    if params is not None and not isinstance(params, dict):
        raise ConfigError(f"{WHERE} = {params!r}: expected a mapping of "
                          f"{', '.join(DEFAULT_PARAMS)}")
    p = merge_params(params, DEFAULT_PARAMS, WHERE)
    share = expect_number(p["min_share"], f"{WHERE}.min_share", 0, 1, lo_open=True)
    ratio = expect_number(p["min_ratio"], f"{WHERE}.min_ratio", 0, lo_open=True)
    if not isinstance(p["diagonals"], bool):
        raise ConfigError(f"{WHERE}.diagonals = {p['diagonals']!r}: expected true or false")
    return {"min_share": share, "min_ratio": ratio, "diagonals": p["diagonals"]}


offset_params = check_params  # the former name


def find_offset_heads(centred: xr.DataArray | xr.Dataset,
                      params: dict | None = None) -> pd.DataFrame:
    """One row per head of ``centred`` (dims [model,] layer, head, dy, dx; see module doc).

    ``centred`` may also be a whole attention statistics Dataset (its ``centred`` variable and
    ``model`` attribute are used). NaN cells (padding of smaller canvases) count as 0.

    Columns: [model,] layer, head, direction ("self", "right", "left", "up", "down",
    "up-right", ..., or "far"), dy, dx (peak offset), strength (peak share of the map),
    centre_share, flagged. ``model`` comes from a ``model`` dimension or the ``model`` attribute.
    """
    p = offset_params(params)
    if isinstance(centred, xr.Dataset):  # an attention statistics file: take its model attribute
        model = centred.attrs.get("model")
        centred = centred["centred"].copy()
        if model is not None:
            centred.attrs["model"] = model
    if "dy" not in centred.dims or "dx" not in centred.dims:
        raise ConfigError(f"find_offset_heads: expected dims (..., dy, dx), got {centred.dims}")
    if 0 not in centred["dy"].values or 0 not in centred["dx"].values:
        raise ConfigError("find_offset_heads: the canvas has no centre (dy = dx = 0)")
    keys = [d for d in centred.dims if d not in ("dy", "dx")]
    da = centred.transpose(*keys, "dy", "dx")
    if keys:
        da = da.stack(row=keys)
        da = da.transpose("row", "dy", "dx")
    vals = np.asarray(da.values, dtype=np.float64).reshape(-1, da.sizes["dy"] * da.sizes["dx"])
    vals = np.nan_to_num(vals, nan=0.0)  # canvases of smaller grids padded by xr.concat
    dys, dxs = np.meshgrid(da["dy"].values, da["dx"].values, indexing="ij")
    dys, dxs = dys.ravel(), dxs.ravel()

    total = vals.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        share = vals / total[:, None]
    ok = np.isfinite(share).all(1) & (total > 0)
    peak = np.argmax(np.where(ok[:, None], share, 0), axis=1)
    rows = np.arange(len(vals))
    strength = np.where(ok, share[rows, peak], np.nan)
    centre = np.flatnonzero((dys == 0) & (dxs == 0))[0]
    centre_share = np.where(ok, share[:, centre], np.nan)
    pdy, pdx = dys[peak], dxs[peak]
    steps = np.abs(pdy) + np.abs(pdx)
    one_step = (steps == 1) | (p["diagonals"] & (np.abs(pdy) == 1) & (np.abs(pdx) == 1))
    flagged = (ok & one_step & (strength >= p["min_share"])
               & (strength >= p["min_ratio"] * centre_share))
    direction = [DIRECTIONS.get((int(a), int(b)), "far") for a, b in zip(pdy, pdx)]

    out = pd.DataFrame({"direction": direction, "dy": pdy.astype(int), "dx": pdx.astype(int),
                        "strength": strength, "centre_share": centre_share,
                        "flagged": flagged.astype(bool)})
    if keys:
        index = da.indexes["row"]
        for i, k in enumerate(keys):
            out.insert(i, k, np.asarray(index.get_level_values(k)))
    if "model" not in keys and "model" in centred.attrs:
        out.insert(0, "model", centred.attrs["model"])
    for k in ("layer", "head"):
        if k in out:
            out[k] = out[k].astype(int)
    return out


def average_offset(centred: xr.DataArray, grid: tuple[int, int]) -> xr.Dataset:
    """Walmer et al.'s average attention offset of query-aligned maps (module docstring).

    ``centred`` has dims (..., dy, dx) with integer patch offsets as coordinates; ``grid`` is the
    (h, w) patch grid the offsets are normalised by. Returns a Dataset with ``offset_x``,
    ``offset_y`` (centroid in the unit canvas) and ``avg_offset`` (its length), dims (...);
    NaN where a map has no mass.
    """
    h, w = int(grid[0]), int(grid[1])
    m = centred.fillna(0.0).astype(np.float64)
    total = m.sum(("dy", "dx"))
    ux = centred["dx"].astype(np.float64) / max(w - 1, 1)
    uy = centred["dy"].astype(np.float64) / max(h - 1, 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (m * ux).sum(("dy", "dx")) / total.where(total > 0)
        cy = (m * uy).sum(("dy", "dx")) / total.where(total > 0)
    return xr.Dataset({"offset_x": cx, "offset_y": cy, "avg_offset": np.hypot(cx, cy)})


OFFSET_METRICS = ("avg_offset", "offset_x", "offset_y")


def offset_table(ds: xr.Dataset, model: str, dataset: str) -> pd.DataFrame:
    """Rows of the attention table (model, dataset, layer, head, metric, value) with the average
    attention offset per layer x head of an attention statistics file (metrics
    :data:`OFFSET_METRICS`; the grid comes from the file's ``grid`` attribute)."""
    grid = tuple(int(x) for x in np.atleast_1d(ds.attrs["grid"]))
    off = average_offset(ds["centred"], grid)
    parts = []
    for name in OFFSET_METRICS:
        df = off[name].to_dataframe(name="value").reset_index()[["layer", "head", "value"]]
        parts.append(df.assign(metric=name))
    out = pd.concat(parts, ignore_index=True)
    out.insert(0, "dataset", dataset)
    out.insert(0, "model", model)
    out[["layer", "head"]] = out[["layer", "head"]].astype(int)
    return out[["model", "dataset", "layer", "head", "metric", "value"]]


def offset_candidates(maps: pd.DataFrame, per_model: int = 6) -> pd.DataFrame:
    """Per model the ``per_model`` heads with the most attention mass on one of the four
    neighbouring patches of the query (|dy| + |dx| = 1, named as in :data:`DIRECTIONS`): model,
    layer, head, direction, strength. ``maps`` is the tidy table of centred maps (``model``,
    ``layer``, ``head``, ``dy``, ``dx``, ``value``); what the offset-heads figure shows where no
    head passes the thresholds of :func:`find_offset_heads` (docs/protocols.md)."""
    nb = maps[(maps["dy"].abs() + maps["dx"].abs()) == 1]
    best = nb.sort_values("value", ascending=False, kind="stable").drop_duplicates(
        ["model", "layer", "head"])
    best = best.assign(direction=[DIRECTIONS[(int(a), int(b))] for a, b in zip(best.dy, best.dx)],
                       strength=best["value"])
    return best.groupby("model").head(per_model)[["model", "layer", "head", "direction",
                                                  "strength"]]
