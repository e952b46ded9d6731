"""Rendering of ``scenes`` objects: shapes and textures in the canonical frame, identities,
placement (unit square -> image) and backgrounds. See :mod:`patchlens.data.scenes`."""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from patchlens.data.scenes.params import _BUNDLED, SHAPES, TEXTURES
from patchlens.errors import DataError

# ------------------------------------------------------------------------------------------------
# shapes and textures in the canonical frame (u, v) in [0, 1]^2
# ------------------------------------------------------------------------------------------------
def shape_mask(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Inside test of a shape in its unit box; every shape touches all four sides of the box
    (so a snapped box is the bounding box of the rasterised mask)."""
    x, y = u - 0.5, v - 0.5
    inside = (np.abs(x) <= 0.5) & (np.abs(y) <= 0.5)
    r2 = x * x + y * y
    if shape == "square":
        m = inside
    elif shape == "disc":
        m = r2 <= 0.25
    elif shape == "triangle":  # apex flattened to 0.12 so its top row is never empty
        m = np.abs(x) <= 0.06 + 0.44 * (y + 0.5)
    elif shape == "ring":
        m = (r2 <= 0.25) & (r2 >= 0.09)
    elif shape == "cross":
        m = (np.abs(x) <= 0.18) | (np.abs(y) <= 0.18)
    elif shape == "ell":
        m = (x <= -0.1) | (y >= 0.1)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return m & inside


@dataclass(frozen=True)
class Identity:
    """One appearance: a class (shape x texture family) and its texture parameters."""
    id: int
    cls: int
    shape: str
    texture: str
    hue: float
    colour1: tuple
    colour2: tuple
    frequency: float
    orientation: float
    phase: float
    noise: np.ndarray  # (8, 8) lattice values for the "noise" family


def _hsv(h, s, v) -> tuple:
    i = int(h * 6) % 6
    f = h * 6 - math.floor(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def _soft(s: np.ndarray) -> np.ndarray:
    return np.clip(0.5 + 3.0 * s, 0.0, 1.0)


def _lattice(g: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear value noise on an (n, n) lattice over the unit square."""
    n = g.shape[0] - 1
    x, y = np.clip(u, 0, 1) * n, np.clip(v, 0, 1) * n
    x0, y0 = np.minimum(x.astype(int), n - 1), np.minimum(y.astype(int), n - 1)
    fx, fy = x - x0, y - y0
    return ((1 - fy) * ((1 - fx) * g[y0, x0] + fx * g[y0, x0 + 1])
            + fy * ((1 - fx) * g[y0 + 1, x0] + fx * g[y0 + 1, x0 + 1]))


def texture(ident: Identity, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] (..., 3) of an identity at canonical coordinates: a two-colour pattern of
    the class's texture family with the identity's frequency, orientation and phase."""
    c, s = math.cos(ident.orientation), math.sin(ident.orientation)
    x, y = u - 0.5, v - 0.5
    xr, yr = c * x + s * y, -s * x + c * y
    f, ph, fam = ident.frequency, ident.phase, ident.texture
    if fam == "stripes":
        t = _soft(np.sin(2 * np.pi * f * xr + ph))
    elif fam == "checker":
        t = _soft(np.sin(2 * np.pi * f * xr + ph) * np.sin(2 * np.pi * f * yr + ph))
    elif fam == "dots":
        fx = np.mod(f * xr + ph / (2 * np.pi), 1.0) - 0.5
        fy = np.mod(f * yr + ph / (2 * np.pi), 1.0) - 0.5
        t = _soft(0.3 - np.sqrt(fx * fx + fy * fy))
    elif fam == "noise":
        t = _soft(_lattice(ident.noise, u, v) - 0.5)
    elif fam == "rings":
        t = _soft(np.sin(2 * np.pi * f * np.sqrt(xr * xr + yr * yr) * 1.5 + ph))
    elif fam == "waves":
        t = _soft(np.sin(2 * np.pi * f * (xr + 0.08 * np.sin(2 * np.pi * 2 * yr)) + ph))
    else:
        raise ValueError(f"unknown texture family {fam!r}")
    t = t[..., None]
    return t * np.asarray(ident.colour1) + (1 - t) * np.asarray(ident.colour2)


def class_names(p: dict) -> list[str]:
    """Name of class ``i`` at index ``i``: 0 background, then shape-major ``{shape}_{texture}``."""
    return ["background"] + [f"{s}_{t}" for s in SHAPES[:p["n_shapes"]]
                             for t in TEXTURES[:p["n_textures"]]]


def class_table(p: dict) -> pd.DataFrame:
    """classes.csv: columns class, name (:func:`class_names`)."""
    names = class_names(p)
    return pd.DataFrame({"class": np.arange(len(names)), "name": names})


def make_identities(p: dict, rng: np.random.Generator) -> list[Identity]:
    """Identity ``i`` -> class ``1 + i % n_classes``; the ``j``-th identity of a class gets a hue
    ``j / m`` apart from its siblings (``m`` identities per class), so siblings differ visibly in
    colour while sharing shape and texture family."""
    n_tex, n_cls = p["n_textures"], p["n_shapes"] * p["n_textures"]
    per_class = math.ceil(p["n_identities"] / n_cls)
    out = []
    for i in range(p["n_identities"]):
        k = i % n_cls
        j = i // n_cls
        base, jit, f, th, ph, s2 = rng.random(6)
        noise = rng.random((9, 9))
        hue = (k / n_cls * 0.37 + j / per_class + 0.25 * jit / per_class) % 1.0
        out.append(Identity(
            id=i, cls=k + 1, shape=SHAPES[k // n_tex], texture=TEXTURES[k % n_tex], hue=hue,
            colour1=_hsv(hue, 0.85, 0.95), colour2=_hsv((hue + 0.45 + 0.1 * base) % 1.0,
                                                        0.5 + 0.3 * s2, 0.3),
            frequency=2.0 + 2.5 * f, orientation=math.pi * th, phase=2 * math.pi * ph,
            noise=noise))
    return out


def identity_table(idents: list[Identity]) -> pd.DataFrame:
    """identities.csv (documentation of the appearance parameters)."""
    return pd.DataFrame([{"identity": d.id, "class": d.cls, "shape": d.shape,
                          "texture": d.texture, "hue": round(d.hue, 6),
                          "frequency": round(d.frequency, 6),
                          "orientation": round(d.orientation, 6), "phase": round(d.phase, 6)}
                         for d in idents])


# ------------------------------------------------------------------------------------------------
# placement (canonical unit square -> image) and rendering
# ------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Placement:
    """Similarity transform of the canonical square: continuous image point
    ``c + R(angle) @ (flip * (u - 0.5) * size, (v - 0.5) * size)``; continuous coordinates put
    pixel ``[r, c]``'s centre at ``(c + 0.5, r + 0.5)``."""
    cx: float
    cy: float
    size: float
    angle: float = 0.0
    flip: bool = False

    @property
    def half_extent(self) -> float:
        return 0.5 * self.size * (abs(math.cos(self.angle)) + abs(math.sin(self.angle)))

    def box(self) -> tuple[float, float, float, float]:
        e = self.half_extent
        return self.cx - e, self.cy - e, self.cx + e, self.cy + e

    def to_uv(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Continuous image coordinates -> canonical (u, v)."""
        dx, dy = x - self.cx, y - self.cy
        c, s = math.cos(self.angle), math.sin(self.angle)
        a, b = c * dx + s * dy, -s * dx + c * dy
        if self.flip:
            a = -a
        return a / self.size + 0.5, b / self.size + 0.5

    def from_uv(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Canonical (u, v) -> continuous image coordinates."""
        a, b = (u - 0.5) * self.size, (v - 0.5) * self.size
        if self.flip:
            a = -a
        c, s = math.cos(self.angle), math.sin(self.angle)
        return self.cx + c * a - s * b, self.cy + s * a + c * b


def object_pixels(ident: Identity, pl: Placement, size: tuple[int, int]):
    """The pixels an object covers in an image of ``size`` (H, W): ``(window, mask, u, v)`` --
    the (row, column) slices of its clipped box, the boolean mask of the pixels in that window
    whose centre maps inside its shape, and their canonical coordinates -- or None when it
    covers no pixel."""
    H, W = size
    x0, y0, x1, y1 = pl.box()
    c0, r0 = max(int(math.floor(x0)), 0), max(int(math.floor(y0)), 0)
    c1, r1 = min(int(math.ceil(x1)), W), min(int(math.ceil(y1)), H)
    if c0 >= c1 or r0 >= r1:
        return None
    xs = np.arange(c0, c1, dtype=np.float64) + 0.5
    ys = np.arange(r0, r1, dtype=np.float64) + 0.5
    u, v = pl.to_uv(xs[None, :], ys[:, None])
    m = shape_mask(ident.shape, u, v)
    if not m.any():
        return None
    return (slice(r0, r1), slice(c0, c1)), m, u, v


def render(background: np.ndarray, objects: list[tuple[int, Identity, Placement]]):
    """Paint objects (instance id, identity, placement) back to front over an RGB uint8 background.

    Returns rgb uint8 (H, W, 3), semantic uint8, instance uint8 and uv float32 (H, W, 2) (NaN off
    objects); a pixel belongs to an object when its centre maps inside the object's shape.
    """
    H, W = background.shape[:2]
    rgb = background.astype(np.float32) / 255.0
    sem = np.zeros((H, W), np.uint8)
    inst = np.zeros((H, W), np.uint8)
    uv = np.full((H, W, 2), np.nan, np.float32)
    for k, ident, pl in objects:
        found = object_pixels(ident, pl, (H, W))
        if found is None:
            continue
        win, m, u, v = found
        rgb[win][m] = texture(ident, u[m], v[m]).astype(np.float32)
        sem[win][m] = ident.cls
        inst[win][m] = k
        uv[win][m] = np.stack([u[m], v[m]], -1).astype(np.float32)
    return np.round(np.clip(rgb, 0, 1) * 255).astype(np.uint8), sem, inst, uv


# ------------------------------------------------------------------------------------------------
# backgrounds
# ------------------------------------------------------------------------------------------------
@lru_cache(maxsize=None)
def _source(name: str) -> np.ndarray:
    """A bundled scikit-image photograph as RGB uint8."""
    import skimage.data
    path = Path(skimage.data.__file__).parent / _BUNDLED[name]
    if not path.exists():
        raise DataError(f"{path}: background {name!r} is not bundled with this scikit-image; "
                        "remove it from the scenes 'backgrounds' parameter")
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def background(rng: np.random.Generator, p: dict, blur: float | None = None) -> np.ndarray:
    """A random square crop (40-100 % of the shorter side) of a bundled photograph, resized to
    ``image_size``, Gaussian-blurred and pulled towards grey so objects stay the foreground."""
    from scipy.ndimage import gaussian_filter
    size = p["image_size"]
    src = _source(p["backgrounds"][int(rng.integers(len(p["backgrounds"])))])
    h, w = src.shape[:2]
    side = int(min(h, w) * (0.4 + 0.6 * rng.random()))
    y0, x0 = int(rng.integers(h - side + 1)), int(rng.integers(w - side + 1))
    crop = Image.fromarray(src[y0:y0 + side, x0:x0 + side]).resize((size, size), Image.BILINEAR)
    a = np.asarray(crop, np.float32)
    sigma = p["background_blur"] * size / 224 if blur is None else blur
    if sigma > 0:
        a = gaussian_filter(a, sigma=(sigma, sigma, 0), mode="nearest")
    a = 127.5 + (1 - p["background_contrast"]) * (a - 127.5)
    return np.round(np.clip(a, 0, 255)).astype(np.uint8)
