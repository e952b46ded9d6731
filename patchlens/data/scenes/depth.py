"""The depth map of a ``scenes`` image: a slanted ground plane and objects standing on it.

Geometry (docs/protocols.md#depth): a pinhole camera looks down at a ground plane, so the
plane's inverse depth is linear in the image row,
``1 / z(y) = 1 / Z_FAR + (1 / Z_NEAR - 1 / Z_FAR) * y / H`` (continuous row ``y``, pixel row
``r`` at ``y = r + 0.5``): ``Z_FAR`` metres at the top edge, ``Z_NEAR`` at the bottom. Every
object is a flat, fronto-parallel plate standing on the plane: its depth is the ground's at its
lowest point (the bottom of its box, clipped to the image). Objects are drawn back to front (the
order :func:`patchlens.data.scenes.render.render` paints them in); an object that covers pixels
of an object drawn before it is moved to ``IN_FRONT`` times the nearest depth it covers, so every
visible pixel is nearer than everything it hides: occlusion agrees with the depths. An object is
always nearer than the ground it hides (the plane recedes upwards from its contact row).

Pure function of the placements the generator already drew: no random numbers, so the images,
masks and every other output of the generator are the same with or without depth.
"""
from __future__ import annotations

import numpy as np

from patchlens.data.scenes.render import object_pixels

Z_NEAR = 2.0     # ground-plane depth (m) at the bottom edge of the image
Z_FAR = 8.0      # ... at the top edge
IN_FRONT = 0.95  # an occluding object's depth / the nearest depth it covers


def ground_depth(y: np.ndarray, height: int) -> np.ndarray:
    """Depth (m) of the ground plane at continuous image rows ``y`` (0 = top edge)."""
    t = np.clip(np.asarray(y, np.float64) / height, 0.0, 1.0)
    return 1.0 / (1.0 / Z_FAR + (1.0 / Z_NEAR - 1.0 / Z_FAR) * t)


def depth_map(size: tuple[int, int], objects: list) -> np.ndarray:
    """Depth float32 (H, W) in metres of an image of ``size`` with ``objects`` (instance id,
    identity, placement) in drawing order (see the module doc); every pixel has a depth."""
    H, W = size
    out = np.repeat(ground_depth(np.arange(H) + 0.5, H)[:, None], W, 1)
    drawn = np.zeros((H, W), bool)
    for _, ident, pl in objects:
        found = object_pixels(ident, pl, (H, W))
        if found is None:
            continue
        win, m, _, _ = found
        z = float(ground_depth(min(pl.box()[3], H), H))
        hidden = drawn[win][m]
        if hidden.any():
            z = min(z, IN_FRONT * float(out[win][m][hidden].min()))
        out[win][m] = z
        drawn[win][m] = True
    return out.astype(np.float32)
