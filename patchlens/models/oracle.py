"""``oracle``: patch features built from the ground truth (an upper reference for every task).

Patch features built from the ground truth (class, instance identity, position), so every
evaluator must score at or near its protocol maximum on it (docs/protocols.md). Numpy only (no
torch).

Construction, per patch of an ``(h, w)`` grid laid over the ``(H, W)`` image (pixel ``[r, c]``
belongs to the patch containing its centre, ``[floor((r + 0.5) h / H), floor((c + 0.5) w / W)]``,
i.e. the patches of a ViT that sees the image resized to ``(h p, w p)``; the same convention as
:func:`patchlens.evaluation.upsample.resize_nearest`)::

    x = [ A * share(class) | B * share(identity or instance slot) | D * phi(u, v) | E * psi(z) ]

* class block: the share of each class among the patch's non-void pixels (background 0
  included), so a patch inside one region is the one-hot of its class (the majority class, the
  label the few-shot protocol of Vanyan et al. 2024, arXiv 2401.00463, gives it, is the argmax)
  and a patch on an outline carries the mixture it covers, as a real feature does; a patch that is
  all void, or an image without a semantic map, gets a zero block.
* identity block: the share of the patch's non-void pixels covered by each instance; an instance
  maps to its data-set-wide ``identity`` from ``objects.csv`` when known (>= 0), otherwise to the
  instance slot ``n_identities + (instance - 1) % INSTANCE_SLOTS``, which keeps instances of one
  image / video sequence apart (DAVIS-style tracking). Background and images without an instance
  map give a zero block. (Mixtures matter for label propagation: with hard majority labels an
  outline patch looks like pure background and the oracle tracked worse than raw pixels.)
* ``phi(u, v) = (cos(pi u / 2), sin(pi u / 2), cos(pi v / 2), sin(pi v / 2))`` of the mean
  canonical coordinate of the pixels of the patch's majority instance (within its majority class) (zeros without ``uv``). For
  ``u, v in [0, 1]``, ``phi(a) . phi(b) = cos(pi/2 |du|) + cos(pi/2 |dv|)``, which lies in
  ``[0, 2]`` and decreases monotonically in ``|du|`` and in ``|dv|``.

* ``psi(z) = (cos(theta), sin(theta))``, ``theta = pi/2 * t``, ``t`` the patch's mean log depth
  (over its measured pixels) mapped linearly from ``[log DEPTH_RANGE[0], log DEPTH_RANGE[1]]``
  to ``[0, 1]`` (clipped); zeros without a depth map. A linear head reads the depth off the angle
  (docs/protocols.md#depth); the block's norm is constant, so the orderings below keep their
  margins (every bound moves by at most ``E^2 = 0.25``, far less than the gaps). The depth probe
  standardises its features, so ``E`` does not change the oracle's depth scores.

Weights ``A = B = 2, D = 1, E = 0.5``. Every patch wholly inside an object has squared norm
``A^2 + B^2 + 2 D^2 + E^2 = 10.25`` with a depth map, 10 without (so cosine order = dot order
between object patches); the depth term of a dot product lies in ``[0, E^2]`` (both angles are in
``[0, pi/2]``), and:
  same identity            ``>= A^2 + B^2 = 8``  (the uv term then orders points within an object)
  same class, other id.    ``in [A^2, A^2 + 2 D^2 + E^2] = [4, 6.25]``
  other class              ``<= 2 D^2 + E^2 = 2.25``;  object vs background ``<= E^2 = 0.25``;
  background vs background cosine ``>= A^2 / (A^2 + E^2) = 0.94`` (1 without depth). Hence cosine
  k-NN recovers the class, the same identity is nearer than any other identity of its class, and
  within one identity the nearest patch is the one closest in (u, v) (among patches at one
  depth; across depths the depth term adds at most ``E^2``).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from patchlens.data.dataset import VOID, Dataset
from patchlens.errors import DataError

CLASS_WEIGHT = 2.0
IDENTITY_WEIGHT = 2.0
UV_WEIGHT = 1.0
INSTANCE_SLOTS = 32
UV_DIMS = 4
DEPTH_WEIGHT = 0.5
DEPTH_DIMS = 2
DEPTH_RANGE = (0.25, 16.0)  # metres: the log-depth interval psi spans (NYU: 0.7-10 m)


@dataclass(frozen=True)
class OracleLayout:
    """Channel layout: ``[classes | identities | instance slots | uv embedding | depth]``."""
    n_classes: int
    n_identities: int
    n_slots: int = INSTANCE_SLOTS

    @property
    def channels(self) -> int:
        return self.n_classes + self.n_identities + self.n_slots + UV_DIMS + DEPTH_DIMS

    @property
    def class_slice(self) -> slice:
        return slice(0, self.n_classes)

    @property
    def identity_slice(self) -> slice:
        """Identities followed by instance slots."""
        return slice(self.n_classes, self.n_classes + self.n_identities + self.n_slots)

    @property
    def uv_slice(self) -> slice:
        end = self.channels - DEPTH_DIMS
        return slice(end - UV_DIMS, end)

    @property
    def depth_slice(self) -> slice:
        return slice(self.channels - DEPTH_DIMS, self.channels)


def oracle_layout(dataset: Dataset) -> OracleLayout:
    """Layout fixed by the data set (classes.csv, objects.csv), not by the images asked for."""
    cls = dataset.classes["class"].astype(int)
    cls = cls[cls < VOID]
    n_classes = int(cls.max()) + 1 if len(cls) else 1
    n_ident = 0
    if dataset.objects is not None and len(dataset.objects):
        n_ident = max(int(dataset.objects["identity"].astype(int).max()) + 1, 0)
    return OracleLayout(n_classes, n_ident)


def oracle_channels(dataset: Dataset) -> int:
    """Number of oracle feature channels for a data set."""
    return oracle_layout(dataset).channels


def uv_embedding(uv: np.ndarray) -> np.ndarray:
    """(..., 2) canonical coordinates in [0, 1] -> (..., 4)
    ``(cos, sin)(pi/2 u), (cos, sin)(pi/2 v)``;
    the dot product of two embeddings is ``cos(pi/2 du) + cos(pi/2 dv)``."""
    a = 0.5 * np.pi * np.asarray(uv, np.float64)
    return np.stack([np.cos(a[..., 0]), np.sin(a[..., 0]),
                     np.cos(a[..., 1]), np.sin(a[..., 1])], -1)


def depth_embedding(depth: np.ndarray) -> np.ndarray:
    """(...) depth in metres -> (..., 2) ``(cos, sin)(pi/2 t)`` with ``t`` the log depth mapped
    from :data:`DEPTH_RANGE` to [0, 1] (clipped)."""
    lo, hi = np.log(DEPTH_RANGE[0]), np.log(DEPTH_RANGE[1])
    t = np.clip((np.log(np.asarray(depth, np.float64)) - lo) / (hi - lo), 0.0, 1.0)
    return np.stack([np.cos(0.5 * np.pi * t), np.sin(0.5 * np.pi * t)], -1)


def patch_index(size: tuple[int, int], grid: tuple[int, int]) -> np.ndarray:
    """(H, W) -> flat patch index ``row * w + col`` of every pixel for an ``(h, w)`` grid."""
    (H, W), (h, w) = size, grid
    rows = np.minimum(((np.arange(H) + 0.5) * h / H).astype(int), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * w / W).astype(int), w - 1)
    return rows[:, None] * w + cols[None, :]


def _majority(labels: np.ndarray, pidx: np.ndarray, keep: np.ndarray, n_patches: int,
              n_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per patch: most frequent label among kept pixels (ties -> lowest id), and whether any."""
    counts = np.bincount(pidx[keep] * n_labels + labels[keep],
                         minlength=n_patches * n_labels).reshape(n_patches, n_labels)
    return counts.argmax(1), counts.sum(1) > 0


def _fractions(labels: np.ndarray, pidx: np.ndarray, keep: np.ndarray, n_patches: int,
               n_labels: int) -> np.ndarray:
    """Per patch: share of each label among its kept pixels (rows sum to 1, or 0 if none)."""
    counts = np.bincount(pidx[keep] * n_labels + labels[keep],
                         minlength=n_patches * n_labels).reshape(n_patches, n_labels)
    return counts / np.maximum(counts.sum(1, keepdims=True), 1)


def oracle_patch_features(layout: OracleLayout, grid: tuple[int, int],
                          semantic: np.ndarray | None, instance: np.ndarray | None = None,
                          uv: np.ndarray | None = None,
                          identity_of: dict[int, int] | None = None,
                          depth: np.ndarray | None = None) -> np.ndarray:
    """Oracle features (h*w, C) float32 of one image from its ground-truth maps (see module doc).

    ``semantic``/``instance`` uint8 (H, W) (255 void), ``uv`` float (H, W, 2) NaN off objects,
    ``depth`` float (H, W) metres, NaN where not measured,
    ``identity_of`` maps instance id -> data-set identity (missing or -1: instance slot).
    Any map may be None; its blocks are then zero.
    """
    ref = next((a for a in (semantic, instance, uv, depth) if a is not None), None)
    P = grid[0] * grid[1]
    out = np.zeros((P, layout.channels), np.float32)
    if ref is None:
        return out
    H, W = ref.shape[:2]
    pidx = patch_index((H, W), grid).ravel()

    maj_cls = np.zeros(P, int)
    if semantic is not None:
        sem = semantic.ravel().astype(np.int64)
        valid = sem != VOID
        if valid.any() and sem[valid].max() >= layout.n_classes:
            raise DataError(f"semantic map has class {int(sem[valid].max())} beyond "
                            f"classes.csv ({layout.n_classes} classes); fix classes.csv")
        maj_cls, has = _majority(np.where(valid, sem, 0), pidx, valid, P, layout.n_classes)
        out[:, :layout.n_classes] = CLASS_WEIGHT * _fractions(sem, pidx, valid, P,
                                                             layout.n_classes)

    maj_inst = np.zeros(P, int)
    if instance is not None:
        inst = instance.ravel().astype(np.int64)
        keep = (inst != 0) & (inst != VOID)
        if semantic is not None:  # instances of the patch's majority class only
            keep &= (sem == maj_cls[pidx]) & (maj_cls[pidx] != 0)
        maj_inst, has = _majority(inst, pidx, keep, P, 256)
        maj_inst = np.where(has, maj_inst, 0)
        identity_of = identity_of or {}
        # identity channel of every instance id; share of the patch's non-void pixels
        channel = np.full(256, -1)
        for k in np.unique(inst[(inst != 0) & (inst != VOID)]):
            ident = identity_of.get(int(k), -1)
            channel[k] = (layout.n_classes + ident if 0 <= ident < layout.n_identities else
                          layout.n_classes + layout.n_identities + (int(k) - 1) % layout.n_slots)
        objects = (inst != 0) & (inst != VOID)
        n_valid = np.bincount(pidx[inst != VOID], minlength=P).astype(np.float64)
        ch = channel[inst[objects]]
        share = np.zeros((P, layout.channels))
        np.add.at(share, (pidx[objects], ch), 1.0)
        out += (IDENTITY_WEIGHT * share / np.maximum(n_valid, 1)[:, None]).astype(np.float32)

    if uv is not None:
        uvf = uv.reshape(-1, 2).astype(np.float64)
        keep = np.isfinite(uvf).all(1)
        if instance is not None:  # the patch's majority instance only
            keep &= (inst == maj_inst[pidx]) & (maj_inst[pidx] > 0)
        n = np.bincount(pidx[keep], minlength=P)
        su = np.bincount(pidx[keep], uvf[keep, 0], minlength=P)
        sv = np.bincount(pidx[keep], uvf[keep, 1], minlength=P)
        has = n > 0
        mean = np.stack([su[has], sv[has]], 1) / n[has, None]
        out[has, layout.uv_slice] = UV_WEIGHT * uv_embedding(np.clip(mean, 0, 1))

    if depth is not None:
        d = depth.reshape(-1).astype(np.float64)
        keep = np.isfinite(d) & (d > 0)
        n = np.bincount(pidx[keep], minlength=P)
        s = np.bincount(pidx[keep], np.log(d[keep]), minlength=P)
        has = n > 0
        out[has, layout.depth_slice] = DEPTH_WEIGHT * depth_embedding(np.exp(s[has] / n[has]))
    return out


def _identities_by_image(dataset: Dataset) -> dict[str, dict[int, int]]:
    obj = dataset.objects
    if obj is None or not len(obj):
        return {}
    out: dict[str, dict[int, int]] = {}
    for im, k, d in zip(obj["image"].astype(str), obj["instance"].astype(int),
                        obj["identity"].astype(int)):
        out.setdefault(im, {})[int(k)] = int(d)
    return out


def oracle_tokens(dataset: Dataset, images: list[str], grid: tuple[int, int]) -> np.ndarray:
    """Oracle patch tokens (n, 1, h*w, C) float32 for ``images`` (one "layer"); C is
    :func:`oracle_channels` of the data set. Images without a semantic, instance, uv or depth
    file get zeros in the corresponding block."""
    layout = oracle_layout(dataset)
    by_image = _identities_by_image(dataset)
    m = dataset.manifest
    out = np.zeros((len(images), 1, grid[0] * grid[1], layout.channels), np.float32)
    for i, im in enumerate(images):
        if im not in m.index:
            raise DataError(f"{dataset.root / 'manifest.csv'}: no image {im!r}")
        row = m.loc[im]
        sem = dataset.load_semantic(im) if row["semantic"] != "" else None
        inst = dataset.load_instance(im) if row["instance"] != "" else None
        uv = dataset.load_uv(im) if row["uv"] != "" else None
        depth = dataset.load_depth(im) if row["depth"] != "" else None
        try:
            out[i, 0] = oracle_patch_features(layout, grid, sem, inst, uv,
                                              by_image.get(str(im)), depth)
        except DataError as exc:
            raise DataError(f"{dataset.root / row['semantic']} (image {im!r}): {exc}") from None
    return out

