"""Parameters of the ``scenes`` generator: defaults, validation, impossible combinations
(rejected with a ConfigError naming the key). See :mod:`patchlens.data.scenes`."""
from __future__ import annotations

import math

import numpy as np

from patchlens.errors import ConfigError
from patchlens.params import merge_params

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
    p = merge_params(params, DEFAULT_PARAMS, "scenes parameters (datasets.<name>.params)")
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
