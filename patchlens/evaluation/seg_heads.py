"""The two heads of few-shot segmentation (docs/protocols.md#fewshot_seg; Vanyan et al. 2024,
arXiv 2401.00463, Sec. 4) for every feature variant of one layer and one support draw, and the
per-image confusion matrices of their scores.

- ``knn``: DINO's cosine k-NN vote (Caron et al. 2021; :mod:`patchlens.evaluation.knn`); every
  :class:`~patchlens.features.variants.VariantSpec` is served by one
  :class:`~patchlens.evaluation.similarity.VariantIndex` searched on the raw tokens (one product
  for raw and every drop{m}, one more for zscore); an opaque ``transform(layer, x)`` gets an
  index of its own on its transformed tokens.
- ``linear``: :class:`~patchlens.evaluation.probes.LinearProbe` fitted per variant on the
  transformed support features (a drop{m} fit is a fit of its own).

Scores are bilinearly upsampled to the image and arg-maxed (:mod:`patchlens.evaluation.upsample`);
with ``device`` off the CPU, the search, the vote, the upsampling, the arg-max and the counting run
there (torch), and only the (K, K) matrices come back.
"""
from __future__ import annotations

import numpy as np

from patchlens.evaluation.knn import weighted_vote, weighted_vote_torch
from patchlens.evaluation.metrics import confusion_matrix
from patchlens.evaluation.probes import LinearProbe
from patchlens.evaluation.similarity import VariantIndex
from patchlens.evaluation.upsample import upsample_argmax, upsample_argmax_torch
from patchlens.features.variants import VariantSpec, variant_spec


def _bank_groups(variants: dict) -> list[dict]:
    """Variants whose k-NN one :class:`VariantIndex` serves: every :class:`VariantSpec` together
    (searched on the raw tokens), each opaque ``transform(layer, x)`` alone (searched on its own
    transformed tokens as ``raw``)."""
    specs = {v: t for v, t in variants.items() if isinstance(t, VariantSpec)}
    return ([specs] if specs else []) + [{v: t} for v, t in variants.items() if v not in specs]


def _features(t, layer: int, x: np.ndarray) -> np.ndarray:
    return t.apply(x) if isinstance(t, VariantSpec) else t(layer, x)


def seed_heads(layer: int, tok: np.ndarray, select, y: np.ndarray, variants: dict, p: dict,
               device: str) -> dict:
    """{variant: {head: (classes, scorer)}} of one seed. ``tok``: the raw support tokens
    (n_img, h, w, C), ``select(a)`` picks this seed's labelled patches (n, C') of an array of
    that shape, ``y`` their labels. A scorer maps the raw query tokens (n, h, w, C) to
    {variant: scores (n * h * w, Kp)} (numpy, or torch tensors on ``device`` off the CPU) for
    every variant it serves. A :class:`VariantSpec` transforms each token alone, so it is applied
    to the selected patches (the values and the memory order of transforming the whole array
    and then selecting, as the evaluator did before: the probe's fit and the scores do not
    change); an opaque ``transform(layer, x)`` gets the whole (n_img, h, w, C) array first."""
    present = np.unique(y)
    compact = np.searchsorted(present, y)
    heads: dict = {v: {} for v in variants}
    picked = select(tok)  # (n, C) raw: a VariantSpec acts on each token alone, so it is applied
    #                       after the selection (the same values in the same order, 1/7 the work)

    def features(t):
        if isinstance(t, VariantSpec):  # C order, as a selection (drop{m} indexes channels)
            return np.ascontiguousarray(t.apply(picked))
        return select(t(layer, tok))

    if "knn" in p["heads"]:
        for group in _bank_groups(variants):
            opaque = not isinstance(next(iter(group.values())), VariantSpec)
            name = next(iter(group))
            specs = {name: variant_spec("raw")} if opaque else group
            index = VariantIndex(features(group[name]) if opaque else picked, specs,
                                 device=device)
            scorer = _knn_scorer(index, compact, present.size, p, opaque, group[name], layer)
            for v in group:
                heads[v]["knn"] = (present, scorer, v)
    if "linear" in p["heads"]:
        for v, t in variants.items():
            probe = LinearProbe.fit(features(t), compact, present.size,
                                    float(p["linear_weight_decay"]), int(p["linear_iters"]))
            heads[v]["linear"] = (present, _linear_scorer(probe, t, layer, v), v)
    return heads


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, x.shape[-1])


def _knn_scorer(index, labels, n_classes, p, opaque, transform, layer):
    cache: dict = {}

    def score(q: np.ndarray) -> dict:  # one search per query chunk serves every variant
        if cache.get("q") is not q:
            qq = _flat(_features(transform, layer, q) if opaque else q)
            if index.backend == "torch":
                found = index.search(qq, p["k"], as_tensors=True)
                lab = _on(labels, index.device)
                cache["out"] = {v: weighted_vote_torch(s, i, lab, n_classes, p["temperature"])
                                for v, (s, i) in found.items()}
            else:
                found = index.search(qq, p["k"])
                cache["out"] = {v: weighted_vote(s, i, labels, n_classes, p["temperature"])
                                for v, (s, i) in found.items()}
            cache["q"] = q
        return cache["out"]
    return score


def _linear_scorer(probe, transform, layer, variant):
    return lambda q: {variant: probe.logits(_flat(_features(transform, layer, q)))}


def _on(a: np.ndarray, device: str):
    import torch

    return torch.as_tensor(a).to(device)


def confusion_matrix_torch(gt, pred, n_classes: int):
    """:func:`~patchlens.evaluation.metrics.confusion_matrix` of torch tensors on their device."""
    import torch

    keep = gt >= 0
    flat = gt[keep].long() * n_classes + pred[keep].long()
    return torch.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def predict_image(scores: np.ndarray, classes: np.ndarray, size: tuple[int, int],
                  sparse: bool) -> np.ndarray:
    """Class indices (H, W): bilinear upsampling of patch scores (h, w, Kp) to ``size`` and
    argmax, mapped through ``classes`` (Kp,). ``sparse`` (non-negative vote scores): classes whose
    score is 0 on every patch are left out first; they cannot win (the interpolated scores of a
    pixel sum to 1), so the result is the same at a fraction of the cost."""
    if sparse:
        cols = np.flatnonzero(scores.reshape(-1, scores.shape[-1]).max(0) > 0)
        scores, classes = scores[..., cols], classes[cols]
    if scores.shape[-1] == 1:
        return np.full(size, classes[0], np.int64)
    return classes[upsample_argmax(scores, size, "cpu")]


def image_confusions(sc, classes, sparse, gts, K, device):
    """Per-image (K, K) confusion matrices of a chunk's scores (n, h, w, Kp): on the CPU through
    :func:`predict_image`; off it, upsampling, arg-max and counting on the device."""
    if device == "cpu":
        sc = np.asarray(sc, np.float32)
        return [confusion_matrix(gt, predict_image(sc[i], classes, gt.shape, sparse), K)
                for i, gt in enumerate(gts)]
    import torch

    sc = torch.as_tensor(sc).to(device).float()
    cls = torch.as_tensor(classes).to(device)
    out = []
    for i, gt in enumerate(gts):
        s, c = sc[i], cls
        if sparse:
            cols = torch.nonzero(s.reshape(-1, s.shape[-1]).amax(0) > 0).ravel()
            s, c = s[..., cols], c[cols]
        pred = (c[0].expand(gt.shape) if s.shape[-1] == 1
                else c[upsample_argmax_torch(s, gt.shape)])
        out.append(confusion_matrix_torch(torch.as_tensor(gt).to(device), pred, K))
    return out
