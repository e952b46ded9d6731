"""DINO's video label propagation and its per-frame mask upsampling in torch, on any device:
the device path of :mod:`patchlens.tasks.tracking`, whose numpy functions
(:mod:`patchlens.evaluation.propagation`: ``propagate``, ``track``, ``labels_to_mask``) define the
protocol (Caron et al., ICCV 2021, reference
``eval_video_segmentation.py`` of github.com/facebookresearch/dino; ``docs/protocols.md#tracking``).

Steps 3-4 of the tracking protocol, the same arithmetic as the numpy path: cosine similarities of
the target frame's L2-normalised patches with every context frame's, -inf outside the square
window of ``radius`` patches, the ``topk`` largest over all context frames jointly, weights
``exp((s - max) / temperature)`` normalised to 1, labels the weighted sum; the soft map is resized
bilinearly (align_corners=False, the separable matrices of
:func:`patchlens.evaluation.upsample.interp_matrix`), channels with a positive maximum min-max
normalised, argmax (ties to the lower channel). Frames are tracked by
:func:`patchlens.evaluation.propagation.track_variants` with a torch-backed affinity, which runs
this module's band loop (:func:`propagate_bands`): features, labels, the queue of context frames
and the predicted masks stay on the device; a target frame is processed in bands of rows whose
sources are only the rows within the radius, each band's similarity block under
``band_budget`` entries. The unit tests run this code on the CPU against the numpy path.
Torch is imported inside the functions.
"""
from __future__ import annotations

from patchlens.evaluation.bands import CPU_BAND_BUDGET, band_rows
from patchlens.evaluation.upsample import interp_matrix

BAND_BUDGET = {"cpu": CPU_BAND_BUDGET, "cuda": 1 << 28}  # similarity entries per band (float32)


def _budget(device: str) -> int:
    return BAND_BUDGET.get(str(device).split(":")[0], BAND_BUDGET["cpu"])


def propagate(target, ctx_feats, ctx_labels, grid: tuple[int, int], radius: int, topk: int,
              temperature: float, band_budget: int | None = None):
    """Soft labels (P, K) of one target frame: target (P, C), ctx_feats (n, P, C) normalised,
    ctx_labels (n, P, K), all tensors on one device (the twin of ``propagation.propagate``)."""
    n, _, C = ctx_feats.shape
    w = grid[1]

    def sims(a, b, sa, sb):
        yield ["_"], target[a * w:b * w] @ ctx_feats[:, sa * w:sb * w].reshape(-1, C).T

    return propagate_bands(grid, n, sims, {"_": ctx_labels}, radius, topk, temperature,
                           target.device.type, band_budget)["_"]


def propagate_bands(grid, n: int, sims, labels: dict, radius: int, topk: int,
                    temperature: float, device: str, band_budget: int | None = None) -> dict:
    """The band loop (the twin of ``propagation._propagate_bands``) on the labels' device, with
    the band budget of ``device`` unless ``band_budget`` is given."""
    import torch

    h, w = grid
    P = h * w
    dev = next(iter(labels.values())).device
    rows = band_rows(h, w, n, radius, band_budget or _budget(device))
    yy, xx = torch.div(torch.arange(P, device=dev), w, rounding_mode="floor"), \
        torch.arange(P, device=dev) % w
    out = {v: torch.empty((P, lab.shape[-1]), dtype=torch.float32, device=dev)
           for v, lab in labels.items()}
    for a in range(0, h, rows):
        b = min(h, a + rows)
        sa, sb = (max(0, a - radius), min(h, b + radius)) if radius > 0 else (0, h)
        nq, ns = (b - a) * w, (sb - sa) * w
        win = None
        if radius > 0:
            qa, sr = slice(a * w, b * w), slice(sa * w, sb * w)
            win = ((yy[qa, None] - yy[None, sr]).abs() <= radius) & \
                ((xx[qa, None] - xx[None, sr]).abs() <= radius)     # (nq, ns)
        for names, sim in sims(a, b, sa, sb):                       # (nq, n*ns)
            if win is not None:
                sim.view(nq, n, ns).masked_fill_(~win[:, None, :], float("-inf"))
            val, idx = torch.topk(sim, min(topk, sim.shape[1]), dim=1)
            wgt = torch.exp((val - val.max(dim=1, keepdim=True).values) / temperature)
            wgt = wgt / wgt.sum(dim=1, keepdim=True)
            for v in names:
                lab = labels[v][:, sa * w:sb * w].reshape(n * ns, -1)
                out[v][a * w:b * w] = torch.einsum("qk,qkc->qc", wgt, lab[idx])
    return out


def labels_to_mask(probs, size: tuple[int, int], norm_mask: bool = True):
    """Predicted index map (H, W) int64 tensor from soft labels (h, w, K) tensor (the twin of
    ``propagation.labels_to_mask``): bilinear resize, per-channel min-max normalisation of channels
    with a positive maximum (a constant positive channel becomes 1), argmax."""
    import torch

    H, W = size
    h, w, _ = probs.shape
    dev = probs.device
    my = torch.from_numpy(interp_matrix(H, h)).to(dev)
    mx = torch.from_numpy(interp_matrix(W, w)).to(dev)
    up = torch.einsum("Hh,hwk->kHw", my, probs.to(torch.float32))
    up = torch.einsum("Ww,kHw->kHW", mx, up).contiguous()           # (K, H, W)
    if norm_mask:
        lo = up.amin(dim=(1, 2)).double()
        hi = up.amax(dim=(1, 2)).double()
        span = hi - lo
        scale = torch.where(span > 0, 1.0 / torch.where(span > 0, span, 1.0), 0.0).float()
        shift = torch.where(span > 0, lo, 0.0).float()
        norm = (up - shift.view(-1, 1, 1)) * scale.view(-1, 1, 1)
        norm = torch.where((span > 0).view(-1, 1, 1), norm, torch.ones_like(up))
        up = torch.where((hi > 0).view(-1, 1, 1), norm, up)
    return up.argmax(dim=0)
