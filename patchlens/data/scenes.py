"""``scenes``: the built-in procedural data set (demo data and test fixture).

Textured objects are composed on backgrounds cropped from the photographs that scikit-image ships
with its wheel (no download). Every kind of ground truth the tasks need is exact because the
generator knows every object's canonical frame:

* classes = shape x texture family (class 0 = background), ``n_shapes * n_textures`` of them;
* identities = one appearance within a class (colours, texture frequency, orientation, phase);
  identity ``i`` has class ``1 + i % n_classes``, so identities are spread evenly over classes;
* every object is the canonical unit square ``(u, v) in [0, 1]^2`` mapped into the image by a
  similarity transform (side ``s`` px, rotation, optional horizontal flip, centre); texture and
  shape are functions of ``(u, v)``, so a point of an identity looks the same in every image and
  the ``uv`` map (float32 (H, W, 2), NaN off objects) gives exact correspondences.

Splits (``manifest.csv`` column ``split``; ids ``{split}_{i:04d}`` unless stated):

``train``    support pool; the first object of image ``i`` has class ``order[i % n_classes]``, so
             every class is in at least ``n_shots_max`` images; objects do not overlap.
``val``      segmentation / instance identification; every identity used in val occurs in >= 2
             val images (never twice in one image); identities are taken in same-class pairs so
             each used class has distractors; objects do not overlap.
``crop``     retrieval queries, one per identity (``crop_{identity:04d}``): the object alone,
             centred, side ``crop_scale`` of the image, on a strongly blurred, dimmed background.
``gallery``  retrieval gallery: one target identity per image at side/image-side taken from
             ``retrieval_scales`` (round robin: identity ``i`` in round ``r`` gets scale
             ``(i + r) % n_scales``) plus ``gallery_distractors`` other identities at listed scales,
             not overlapping it; ``objects.csv`` ``area_frac`` records the real scale.
``video``    ``n_videos`` sequences ``video{v:02d}`` of ``n_frames`` frames
             (``video{v:02d}_f{t:03d}``): 1-3 objects moving linearly (and zooming) over a fixed
             background, drawn in a fixed depth order so they occlude each other; instance ``k``
             is the same object in every frame; frame 0 has no overlap (every object visible).
``pair``     ``n_pairs`` pairs ``pair{p:04d}_src`` / ``_trg``: one identity under two random
             similarity transforms (scale, rotation within ``pair_rotation`` degrees, translation,
             horizontal flip of the target when ``pair_flip``); ``keypoints.csv`` lists
             ``n_keypoints`` src pixels spread over the object by farthest-point sampling and their
             exact transformed positions in the target; keypoints lie at least
             ``keypoint_margin`` x object side inside both masks (halved until enough exist).

The splits mirror the benchmarks the tasks come from: few-shot segmentation, instance
identification and object retrieval at controlled scale (Vanyan et al. 2024, arXiv 2401.00463),
label propagation on short videos with per-frame instance masks (DAVIS-2017, Pont-Tuset et al.
2017; DINO, Caron et al. 2021) and keypoint transfer scored by PCK of the target box (SPair-71k,
Min et al. 2019; Walmer et al. CVPR 2023).

Coordinates: keypoints are in pixel-index units (pixel ``[r, c]`` is the point ``x=c, y=r``);
bounding boxes are pixel indices with exclusive ``x1, y1`` (see :mod:`patchlens.data.dataset`).

``patch_align`` (> 0) snaps the side and the top-left corner of unrotated objects to multiples of
that many pixels in the splits listed in ``align_splits``; every shape touches all four sides of
its box, so those objects' bounding boxes are exact multiples (and with ``n_shapes = 1``, squares,
the masks are exactly representable at patch resolution).

Writing: image, mask and uv files first, ``manifest.csv`` last (atomically), and any old
``manifest.csv`` is removed first, so a killed run never leaves a manifest that looks complete.
Output is a pure function of the parameters (same params -> identical bytes).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from patchlens.errors import ConfigError, DataError
from patchlens.io import write_csv, write_json

SHAPES = ("square", "disc", "triangle", "ring", "cross", "ell")
TEXTURES = ("stripes", "checker", "dots", "noise", "rings", "waves")
# RGB photographs bundled in the scikit-image wheel (skimage.data name -> file in its package
# directory); read from there directly, so no pooch download can ever be triggered
_BUNDLED = {"astronaut": "astronaut.png", "chelsea": "chelsea.png", "coffee": "coffee.png",
            "rocket": "rocket.jpg", "immunohistochemistry": "ihc.png",
            "hubble_deep_field": "hubble_deep_field.jpg"}
BACKGROUNDS = tuple(_BUNDLED)
SPLITS = ("train", "val", "crop", "gallery", "video", "pair")

DEFAULT_PARAMS: dict = {
    "seed": 0,
    "image_size": 224,
    "n_shapes": 3,
    "n_textures": 2,
    "n_identities": 24,
    "n_train": 60,
    "n_val": 40,
    "n_gallery": 48,
    "n_videos": 4,
    "n_frames": 12,
    "n_pairs": 30,
    "n_keypoints": 10,
    "n_shots_max": 5,
    "objects_per_image": [1, 3],
    "object_scale": [0.25, 0.5],       # object side / image side, train and val
    "rotation": 20.0,                  # max |degrees| for unaligned still objects
    "patch_align": 16,                 # 0 = free placement
    "align_splits": ["train", "val"],
    "crop_scale": 0.7,
    "retrieval_scales": [0.15, 0.3, 0.5],
    "gallery_distractors": 1,
    "video_objects": [1, 3],
    "video_scale": [0.25, 0.45],
    "video_motion": 0.3,               # max displacement over a sequence / image side
    "video_zoom": 0.2,                 # end side = start side * U(1 - zoom, 1 + zoom)
    "pair_scale": [0.35, 0.65],
    "pair_rotation": 15.0,
    "pair_flip": False,
    "keypoint_margin": 0.1,            # min keypoint depth inside both masks / object side
    "background_blur": 1.0,            # Gaussian sigma in px at 224 (scaled with image_size)
    "background_contrast": 0.5,        # background pixels pulled to mid-grey by this factor
    "backgrounds": list(BACKGROUNDS),
}


# ------------------------------------------------------------------------------------------------
# parameters
# ------------------------------------------------------------------------------------------------
def _err(key: str, msg: str) -> ConfigError:
    return ConfigError(f"scenes parameter {key!r}: {msg}")


def _int(p, key, lo, hi=None):
    v = p[key]
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
        raise _err(key, f"expected an integer, got {v!r}")
    if v < lo or (hi is not None and v > hi):
        raise _err(key, f"{v} out of range [{lo}, {'inf' if hi is None else hi}]")
    return int(v)


def _num(p, key, lo, hi, lo_open=False):
    v = p[key]
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise _err(key, f"expected a number, got {v!r}")
    if v < lo or v > hi or (lo_open and v == lo):
        raise _err(key, f"{v} out of range {'(' if lo_open else '['}{lo}, {hi}]")
    return float(v)


def _range(p, key, lo, hi, integer=False, lo_open=False):
    v = p[key]
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise _err(key, f"expected [min, max], got {v!r}")
    q = {key: v[0]}
    a = _int(q, key, lo, hi) if integer else _num(q, key, lo, hi, lo_open)
    q = {key: v[1]}
    b = _int(q, key, lo, hi) if integer else _num(q, key, lo, hi, lo_open)
    if a > b:
        raise _err(key, f"min {a} > max {b}")
    return [a, b]


def resolve_params(params: dict | None) -> dict:
    """Defaults overlaid with ``params``, validated; raises ConfigError naming the key."""
    params = dict(params or {})
    unknown = sorted(set(params) - set(DEFAULT_PARAMS))
    if unknown:
        raise _err(unknown[0], f"unknown; known keys: {', '.join(sorted(DEFAULT_PARAMS))}")
    p = {**DEFAULT_PARAMS, **params}
    r = {"seed": _int(p, "seed", 0)}
    r["image_size"] = size = _int(p, "image_size", 32, 4096)
    r["n_shapes"] = _int(p, "n_shapes", 1, len(SHAPES))
    r["n_textures"] = _int(p, "n_textures", 1, len(TEXTURES))
    n_classes = r["n_shapes"] * r["n_textures"]
    for key in ("n_train", "n_val", "n_gallery", "n_videos", "n_pairs"):
        r[key] = _int(p, key, 0)
    r["n_identities"] = _int(p, "n_identities", 1, 254)
    r["n_frames"] = _int(p, "n_frames", 1)
    r["n_keypoints"] = _int(p, "n_keypoints", 1)
    r["n_shots_max"] = _int(p, "n_shots_max", 0)
    r["objects_per_image"] = _range(p, "objects_per_image", 1, 254, integer=True)
    r["object_scale"] = _range(p, "object_scale", 0, 1, lo_open=True)
    r["rotation"] = _num(p, "rotation", 0, 45)
    r["patch_align"] = _int(p, "patch_align", 0, size)
    r["crop_scale"] = _num(p, "crop_scale", 0, 1, lo_open=True)
    scales = p["retrieval_scales"]
    if not isinstance(scales, (list, tuple)) or not scales:
        raise _err("retrieval_scales", f"expected a non-empty list, got {scales!r}")
    r["retrieval_scales"] = [_num({"retrieval_scales": s}, "retrieval_scales", 0, 1, True)
                             for s in scales]
    r["gallery_distractors"] = _int(p, "gallery_distractors", 0, 253)
    r["video_objects"] = _range(p, "video_objects", 1, 254, integer=True)
    r["video_scale"] = _range(p, "video_scale", 0, 1, lo_open=True)
    r["video_motion"] = _num(p, "video_motion", 0, 1)
    r["video_zoom"] = _num(p, "video_zoom", 0, 0.9)
    r["pair_scale"] = _range(p, "pair_scale", 0, 1, lo_open=True)
    r["pair_rotation"] = _num(p, "pair_rotation", 0, 45)
    r["keypoint_margin"] = _num(p, "keypoint_margin", 0, 0.25)
    if not isinstance(p["pair_flip"], bool):
        raise _err("pair_flip", f"expected true or false, got {p['pair_flip']!r}")
    r["pair_flip"] = p["pair_flip"]
    r["background_blur"] = _num(p, "background_blur", 0, 100)
    r["background_contrast"] = _num(p, "background_contrast", 0, 1)
    for key, allowed in (("align_splits", SPLITS), ("backgrounds", BACKGROUNDS)):
        v = p[key]
        if not isinstance(v, (list, tuple)) or any(x not in allowed for x in v):
            raise _err(key, f"{v!r}: expected a list drawn from {', '.join(allowed)}")
        r[key] = list(v)
    if not r["backgrounds"]:
        raise _err("backgrounds", "empty; name at least one of " + ", ".join(BACKGROUNDS))

    # impossible combinations
    if r["n_identities"] < n_classes:
        raise _err("n_identities", f"{r['n_identities']} < {n_classes} classes "
                   "(n_shapes x n_textures); every class needs an identity")
    if r["n_train"] < r["n_shots_max"] * n_classes:
        raise _err("n_train", f"{r['n_train']} images cannot hold n_shots_max={r['n_shots_max']} "
                   f"images for each of {n_classes} classes; "
                   f"need >= {r['n_shots_max'] * n_classes}")
    if r["n_val"] == 1:
        raise _err("n_val", "1 image cannot show each identity twice; use 0 or >= 2")
    if r["n_videos"] and r["n_frames"] < 2:
        raise _err("n_frames", "videos need at least 2 frames")
    if r["patch_align"] and 2 * r["patch_align"] > size:
        raise _err("patch_align", f"{r['patch_align']} px leaves no room for aligned objects in "
                   f"{size} px images; use <= {size // 2} or 0")
    if r["objects_per_image"][0] > 1 and r["object_scale"][0] > 0.5:
        raise _err("object_scale", "min side > 0.5 leaves no room for several non-overlapping "
                   "objects; lower it or set objects_per_image to [1, ...]")
    rot = math.radians(r["pair_rotation"])
    if r["pair_scale"][1] * (abs(math.cos(rot)) + abs(math.sin(rot))) > 1:
        raise _err("pair_scale", "max scale rotated by pair_rotation does not fit the image")
    if r["n_pairs"] and r["pair_scale"][0] * size < 6:
        raise _err("pair_scale", f"min object side {r['pair_scale'][0] * size:.1f} px is too small "
                   "for keypoints; raise it or image_size")
    return r


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


def class_table(p: dict) -> pd.DataFrame:
    """classes.csv: 0 background, then shape-major ``{shape}_{texture}``."""
    names = ["background"] + [f"{s}_{t}" for s in SHAPES[:p["n_shapes"]]
                              for t in TEXTURES[:p["n_textures"]]]
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
        x0, y0, x1, y1 = pl.box()
        c0, r0 = max(int(math.floor(x0)), 0), max(int(math.floor(y0)), 0)
        c1, r1 = min(int(math.ceil(x1)), W), min(int(math.ceil(y1)), H)
        if c0 >= c1 or r0 >= r1:
            continue
        xs = np.arange(c0, c1, dtype=np.float64) + 0.5
        ys = np.arange(r0, r1, dtype=np.float64) + 0.5
        u, v = pl.to_uv(xs[None, :], ys[:, None])
        m = shape_mask(ident.shape, u, v)
        if not m.any():
            continue
        win = (slice(r0, r1), slice(c0, c1))
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


# ------------------------------------------------------------------------------------------------
# samplers
# ------------------------------------------------------------------------------------------------
def _overlaps(box, boxes) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 < b[2] and b[0] < x1 and y0 < b[3] and b[1] < y1 for b in boxes)


def _sample_placement(rng, p: dict, side_frac: float, aligned: bool, max_rot: float) -> Placement:
    size = p["image_size"]
    a = p["patch_align"]
    if aligned and a:
        s = int(min(max(a, round(side_frac * size / a) * a), (size // a) * a))
        x0 = a * int(rng.integers((size - s) // a + 1))
        y0 = a * int(rng.integers((size - s) // a + 1))
        return Placement(x0 + s / 2, y0 + s / 2, float(s))
    s = side_frac * size
    ang = math.radians(max_rot) * (2 * rng.random() - 1)
    e = Placement(0, 0, s, ang).half_extent
    e = min(e, size / 2)
    cx, cy = e + (size - 2 * e) * rng.random(), e + (size - 2 * e) * rng.random()
    return Placement(cx, cy, s, ang)


def _place_still(rng, p, sides: list[float], aligned: bool, max_rot: float,
                 tries: int = 30) -> list[Placement | None]:
    """Non-overlapping placements (axis-aligned extents); the first always fits, later ones are
    ``None`` when ``tries`` random positions all overlap."""
    out, boxes = [], []
    for i, side in enumerate(sides):
        pl = None
        for _ in range(1 if i == 0 else tries):
            cand = _sample_placement(rng, p, side, aligned, max_rot)
            if not _overlaps(cand.box(), boxes):
                pl = cand
                break
        out.append(pl)
        if pl is not None:
            boxes.append(pl.box())
    return out


def _by_class(idents: list[Identity]) -> dict[int, list[int]]:
    d: dict[int, list[int]] = {}
    for x in idents:
        d.setdefault(x.cls, []).append(x.id)
    return d


def _balanced_identities(rng, counts: list[int], pool: list[int]) -> list[list[int]]:
    """Identities for images with ``counts`` objects: each image takes distinct identities of
    lowest use so far (random tie-break), so uses differ by at most one across ``pool``."""
    used = {i: 0 for i in pool}
    out = []
    for k in counts:
        keys = rng.permutation(len(pool))
        order = sorted(keys, key=lambda j: used[pool[j]])
        pick = [pool[j] for j in order[:k]]
        for i in pick:
            used[i] += 1
        out.append(pick)
    return out


# ------------------------------------------------------------------------------------------------
# splits: each yields (image id, split, sequence, frame, rgb, sem, inst, uv, identities by inst)
# ------------------------------------------------------------------------------------------------
def _still(img_id, split, bg, objs):
    rgb, sem, inst, uv = render(bg, [(k, d, pl) for k, d, pl in objs])
    return dict(image=img_id, split=split, sequence="", frame=-1, rgb=rgb, sem=sem, inst=inst,
                uv=uv, ident={k: d for k, d, _ in objs})


def _split_train(rng, p, idents):
    n_cls = p["n_shapes"] * p["n_textures"]
    byc = _by_class(idents)
    order = rng.permutation(n_cls) + 1
    lo, hi = p["objects_per_image"]
    aligned = "train" in p["align_splits"]
    for i in range(p["n_train"]):
        n = int(rng.integers(lo, hi + 1))
        classes = [int(order[i % n_cls])] + [int(c) for c in rng.integers(1, n_cls + 1, n - 1)]
        sides = list(rng.uniform(*p["object_scale"], n))
        pls = _place_still(rng, p, sides, aligned, p["rotation"])
        objs, taken = [], set()
        for c, pl in zip(classes, pls):
            if pl is not None:  # a random identity of the class, distinct within the image
                free = [j for j in byc[c] if j not in taken] or byc[c]
                d = idents[free[int(rng.integers(len(free)))]]
                taken.add(d.id)
                objs.append((len(objs) + 1, d, pl))
        yield _still(f"train_{i:04d}", "train", background(rng, p), objs)


def _split_val(rng, p, idents):
    n = p["n_val"]
    if n == 0:
        return
    lo, hi = p["objects_per_image"]
    counts = [int(c) for c in rng.integers(lo, hi + 1, n)]
    n_used = max(1, min(len(idents), sum(counts) // 2))
    # identities in pairs of one class (class 1: j=0, 1; class 2: j=0, 1; ...; then j=2, 3 ...)
    # so that even a small val split has same-class distractors for instance identification
    n_cls = p["n_shapes"] * p["n_textures"]
    pool = sorted(range(len(idents)), key=lambda i: ((i // n_cls) // 2, i % n_cls, i))[:n_used]
    counts = [min(c, n_used) for c in counts]
    aligned = "val" in p["align_splits"]
    for i, ids in enumerate(_balanced_identities(rng, counts, pool)):
        sides = list(rng.uniform(*p["object_scale"], len(ids)))
        pls = _place_still(rng, p, sides, aligned, p["rotation"])
        # an identity that did not fit would break ">= 2 occurrences": retry until all fit
        t = 0
        while any(pl is None for pl in pls):
            t += 1
            if t > 100:
                raise _err("objects_per_image", f"cannot place {len(ids)} non-overlapping "
                           "objects in a val image; lower it or object_scale")
            sides = [s * 0.9 for s in sides] if t % 5 == 0 else sides
            pls = _place_still(rng, p, sides, aligned, p["rotation"])
        objs = [(k + 1, idents[d], pl) for k, (d, pl) in enumerate(zip(ids, pls))]
        yield _still(f"val_{i:04d}", "val", background(rng, p), objs)


def _split_crop(rng, p, idents):
    size = p["image_size"]
    aligned = "crop" in p["align_splits"] and p["patch_align"]
    for d in idents:
        s = p["crop_scale"] * size
        c = size / 2
        if aligned:  # side and corner on the grid, as close to the centre as the grid allows
            a = p["patch_align"]
            s = min(max(a, round(s / a) * a), (size // a) * a)
            c = a * math.floor((size - s) / (2 * a) + 0.5) + s / 2
        pl = Placement(c, c, float(s))
        bg = background(rng, p, blur=size / 12)
        yield _still(f"crop_{d.id:04d}", "crop", bg, [(1, d, pl)])


def _split_gallery(rng, p, idents):
    scales, n_id = p["retrieval_scales"], len(idents)
    aligned = "gallery" in p["align_splits"]
    order = rng.permutation(n_id)
    for g in range(p["n_gallery"]):
        i, rnd = g % n_id, g // n_id
        target = idents[int(order[i])]
        others = [j for j in rng.permutation(n_id)[:p["gallery_distractors"] + 1]
                  if j != target.id][:p["gallery_distractors"]]
        sides = [scales[(i + rnd) % len(scales)]] + \
                [scales[int(rng.integers(len(scales)))] for _ in others]
        pls = _place_still(rng, p, sides, aligned, p["rotation"])
        objs = [(1, target, pls[0])]
        for j, pl in zip(others, pls[1:]):
            if pl is not None:
                objs.append((len(objs) + 1, idents[int(j)], pl))
        yield _still(f"gallery_{g:04d}", "gallery", background(rng, p), objs)


def _split_video(rng, p, idents):
    size, T = p["image_size"], p["n_frames"]
    lo, hi = p["video_objects"]
    for vid in range(p["n_videos"]):
        seq = f"video{vid:02d}"
        bg = background(rng, p)
        n = int(rng.integers(lo, hi + 1))
        ids = [int(j) for j in rng.permutation(len(idents))[:n]]
        sides = list(rng.uniform(*p["video_scale"], len(ids)))
        starts = _place_still(rng, p, sides, False, p["rotation"])
        tracks = []
        for d, pl in zip(ids, starts):
            if pl is None:
                continue
            s1 = pl.size * (1 + p["video_zoom"] * (2 * rng.random() - 1))
            # the end box is clipped into the image; boxes in between, linear in both centre
            # and extent, then stay inside too
            e = min(Placement(0, 0, s1, pl.angle).half_extent, size / 2)
            ang = 2 * math.pi * rng.random()
            dist = p["video_motion"] * size * rng.random()
            cx1 = float(np.clip(pl.cx + dist * math.cos(ang), e, size - e))
            cy1 = float(np.clip(pl.cy + dist * math.sin(ang), e, size - e))
            tracks.append((len(tracks) + 1, idents[d], (pl.cx, pl.cy, pl.size), (cx1, cy1, s1),
                           pl.angle))
        depth = rng.permutation(len(tracks))
        for t in range(T):
            a = t / (T - 1)
            objs = []
            for j in depth:
                k, d, (x0, y0, s0), (x1, y1, s1), ang = tracks[int(j)]
                objs.append((k, d, Placement(x0 + a * (x1 - x0), y0 + a * (y1 - y0),
                                             s0 + a * (s1 - s0), ang)))
            rgb, sem, inst, uv = render(bg, objs)
            yield dict(image=f"{seq}_f{t:03d}", split="video", sequence=seq, frame=t, rgb=rgb,
                       sem=sem, inst=inst, uv=uv, ident={k: d for k, d, _ in objs})


def _farthest_points(rng, pts: np.ndarray, k: int) -> np.ndarray:
    """Indices of ``k`` points spread by greedy farthest-point sampling from a random start."""
    k = min(k, len(pts))
    if k == 0:
        return np.zeros(0, int)
    idx = [int(rng.integers(len(pts)))]
    d = np.sum((pts - pts[idx[0]]) ** 2, 1)
    for _ in range(k - 1):
        j = int(np.argmax(d))
        idx.append(j)
        d = np.minimum(d, np.sum((pts - pts[j]) ** 2, 1))
    return np.array(idx)


def _pair_placement(rng, p, flip: bool) -> Placement:
    s = rng.uniform(*p["pair_scale"]) * p["image_size"]
    pl = _sample_placement(rng, p, s / p["image_size"], False, p["pair_rotation"])
    return Placement(pl.cx, pl.cy, pl.size, pl.angle, flip)


def _split_pair(rng, p, idents, kp_rows):
    from scipy.ndimage import distance_transform_edt
    size = p["image_size"]
    order = rng.permutation(len(idents))
    for q in range(p["n_pairs"]):
        d = idents[int(order[q % len(idents)])]
        src_pl = _pair_placement(rng, p, False)
        trg_pl = _pair_placement(rng, p, bool(p["pair_flip"] and rng.random() < 0.5))
        src = _still(f"pair{q:04d}_src", "pair", background(rng, p), [(1, d, src_pl)])
        trg = _still(f"pair{q:04d}_trg", "pair", background(rng, p), [(1, d, trg_pl)])
        # candidate keypoints: src object pixels whose exact target position rounds to a target
        # object pixel, both at least `margin` px inside their masks (silhouette points are
        # ambiguous at patch resolution); the margin halves until there are enough candidates
        ys, xs = np.nonzero(src["inst"] == 1)
        u, v = src_pl.to_uv(xs + 0.5, ys + 0.5)
        tx, ty = trg_pl.from_uv(u, v)
        tx, ty = tx - 0.5, ty - 0.5
        rx, ry = np.round(tx).astype(int), np.round(ty).astype(int)
        ok = (rx >= 0) & (rx < size) & (ry >= 0) & (ry < size)
        ok[ok] = trg["inst"][ry[ok], rx[ok]] == 1
        depth = np.minimum(distance_transform_edt(src["inst"] == 1)[ys, xs],
                           distance_transform_edt(trg["inst"] == 1)[np.clip(ry, 0, size - 1),
                                                                   np.clip(rx, 0, size - 1)])
        margin = p["keypoint_margin"] * min(src_pl.size, trg_pl.size)
        while margin >= 1 and (ok & (depth > margin)).sum() < p["n_keypoints"]:
            margin /= 2
        cand = np.nonzero(ok & (depth > margin))[0] if margin >= 1 else np.nonzero(ok)[0]
        sel = cand[_farthest_points(rng, np.stack([xs[cand], ys[cand]], 1).astype(float),
                                    p["n_keypoints"])]
        ty_, tx_ = np.nonzero(trg["inst"] == 1)
        box = (int(tx_.min()), int(ty_.min()), int(tx_.max()) + 1, int(ty_.max()) + 1)
        for j, i in enumerate(sel):
            kp_rows.append(dict(pair=f"pair{q:04d}", src_image=src["image"],
                                trg_image=trg["image"], kp=j, src_x=int(xs[i]), src_y=int(ys[i]),
                                trg_x=round(float(tx[i]), 4), trg_y=round(float(ty[i]), 4),
                                trg_x0=box[0], trg_y0=box[1], trg_x1=box[2], trg_y1=box[3]))
        yield src
        yield trg


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------
def _object_rows(rec: dict) -> list[dict]:
    inst = rec["inst"]
    H, W = inst.shape
    counts = np.bincount(inst.ravel(), minlength=256)
    rows = []
    for k, d in sorted(rec["ident"].items()):
        if counts[k] == 0:  # fully occluded in this frame
            continue
        ys, xs = np.nonzero(inst == k)
        rows.append(dict(image=rec["image"], instance=k, **{"class": d.cls}, identity=d.id,
                         area_frac=round(float(counts[k]) / (H * W), 8),
                         x0=int(xs.min()), y0=int(ys.min()), x1=int(xs.max()) + 1,
                         y1=int(ys.max()) + 1))
    return rows


def _labels(sem: np.ndarray) -> str:
    counts = np.bincount(sem.ravel(), minlength=256)[1:255]
    present = np.nonzero(counts)[0]
    order = present[np.lexsort((present, -counts[present]))]
    return " ".join(str(int(c) + 1) for c in order)


def _write_record(out: Path, rec: dict) -> dict:
    i = rec["image"]
    paths = {"path": f"images/{i}.png", "semantic": f"semantic/{i}.png",
             "instance": f"instance/{i}.png", "uv": f"uv/{i}.npy"}
    Image.fromarray(rec["rgb"], "RGB").save(out / paths["path"], format="PNG")
    Image.fromarray(rec["sem"], "L").save(out / paths["semantic"], format="PNG")
    Image.fromarray(rec["inst"], "L").save(out / paths["instance"], format="PNG")
    np.save(out / paths["uv"], rec["uv"], allow_pickle=False)
    H, W = rec["sem"].shape
    return dict(image=i, path=paths["path"], split=rec["split"], semantic=paths["semantic"],
                instance=paths["instance"], sequence=rec["sequence"], frame=rec["frame"],
                height=H, width=W, labels=_labels(rec["sem"]), uv=paths["uv"])


def generate_scenes(out_dir, params: dict | None = None) -> None:
    """Generate the ``scenes`` data set into ``out_dir`` (layout of :mod:`patchlens.data.dataset`
    plus ``identities.csv`` and the resolved ``params.json``).

    Deterministic: every split draws from its own ``numpy`` Generator seeded with
    ``(seed, split index)``, so changing one split's size leaves the other splits unchanged.
    """
    p = resolve_params(params)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "manifest.csv").unlink(missing_ok=True)
    for sub in ("images", "semantic", "instance", "uv"):
        (out / sub).mkdir(exist_ok=True)

    def rng(k):
        return np.random.default_rng([p["seed"], k])

    idents = make_identities(p, rng(0))
    kp_rows: list[dict] = []
    splits = [_split_train(rng(1), p, idents), _split_val(rng(2), p, idents),
              _split_crop(rng(3), p, idents), _split_gallery(rng(4), p, idents),
              _split_video(rng(5), p, idents), _split_pair(rng(6), p, idents, kp_rows)]
    manifest, objects = [], []
    for gen in splits:
        for rec in gen:
            manifest.append(_write_record(out, rec))
            objects.extend(_object_rows(rec))

    from patchlens.data.dataset import KEYPOINT_COLUMNS, MANIFEST_COLUMNS, OBJECT_COLUMNS
    write_csv(class_table(p), out / "classes.csv")
    write_csv(identity_table(idents), out / "identities.csv")
    write_csv(pd.DataFrame(objects, columns=OBJECT_COLUMNS), out / "objects.csv")
    write_csv(pd.DataFrame(kp_rows, columns=KEYPOINT_COLUMNS), out / "keypoints.csv")
    write_json(p, out / "params.json")
    write_csv(pd.DataFrame(manifest, columns=MANIFEST_COLUMNS), out / "manifest.csv")
