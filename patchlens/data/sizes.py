"""How big a configured data set is before it is prepared: images per split, classes, videos,
objects, keypoint pairs and mask sizes of the built-in generator and the official recipes.

The resource plan (:mod:`patchlens.plan`) and the tasks' cost models (``TaskSpec.flop``) read
these; a prepared ``manifest.csv`` overrides the image counts. The recipes' sizes are those of
the published splits (:mod:`patchlens.data.recipes`), cut by the entry's ``max_images`` /
``max_per_class`` / ``max_sequences`` / ``max_frames`` / ``max_pairs``.
"""
from __future__ import annotations

from pathlib import Path

# Official split sizes (images) of the recipes; per split name as the converters write it to the
# manifest.
OFFICIAL_SPLITS = {
    "voc2012": {"train": 1464, "val": 1449},          # VOC 2012 segmentation lists
    "davis2017": {"video": 1999},                       # DAVIS-2017 val 480p, 30 sequences
    "spair71k": {"pair": 1800},                         # SPair-71k images (shared by the pairs)
    "imagenette": {"train": 9469, "val": 3925},         # Imagenette v2 (320 px), 10 classes
    "ade20k": {"train": 20210, "val": 2000},            # ADE20K SceneParsing, 150 classes
}
DAVIS_SEQUENCES = 30
DAVIS_OBJECTS = 61 / 30            # DAVIS-2017 val: 61 objects in 30 sequences
MASK_SIZE = {"davis2017": (480, 854), "voc2012": (375, 500)}  # typical ground-truth mask (H, W)
SPAIR_PAIRS = {"test": 12234, "val": 5384, "trn": 53340, "train": 53340}
SPAIR_KEYPOINTS_PER_PAIR = 10      # SPair-71k test: about 10 annotated keypoint pairs per pair
CLASSES = {"voc2012": 20, "imagenette": 10, "ade20k": 150}  # foreground classes drawn for support
OBJECTS_PER_IMAGE = 2              # scenes: objects per still image (about; generator default)


def scenes_params(entry: dict) -> dict:
    """The generator parameters of a ``scenes`` data set entry, defaults filled."""
    from patchlens.data.scenes import resolve_params

    return resolve_params(entry.get("params") or {})


def split_counts(entry: dict, manifest: Path | None = None) -> dict[str, int]:
    """Images per manifest split of one ``datasets.<name>`` entry."""
    if manifest is not None and Path(manifest).exists():
        import pandas as pd

        return {str(k): int(v) for k, v in
                pd.read_csv(manifest, usecols=["split"])["split"].value_counts().items()}
    src, p = entry["source"], entry.get("params") or {}
    if src == "scenes":
        r = scenes_params(entry)
        return {"train": r["n_train"], "val": r["n_val"], "crop": r["n_identities"],
                "gallery": r["n_gallery"], "video": r["n_videos"] * r["n_frames"],
                "pair": 2 * r["n_pairs"]}
    if src not in OFFICIAL_SPLITS:  # imagefolder: only a prepared manifest knows
        return {s: int(p.get("max_images") or 1000) for s in p.get("splits", ["train", "val"])}
    counts = dict(OFFICIAL_SPLITS[src])
    if src == "davis2017":
        seqs = min(DAVIS_SEQUENCES, p.get("max_sequences") or DAVIS_SEQUENCES)
        per_seq = counts["video"] / DAVIS_SEQUENCES
        if p.get("max_frames"):
            per_seq = min(per_seq, p["max_frames"])
        return {"video": int(round(seqs * per_seq))}
    if src == "spair71k":
        return {"pair": min(counts["pair"], 2 * n_pairs(entry, counts))}
    splits = p.get("splits", list(counts))
    splits = [splits] if isinstance(splits, str) else splits
    out = {}
    for s in splits:
        n = counts.get(s, 0)
        if p.get("max_per_class"):
            n = min(n, p["max_per_class"] * CLASSES.get(src, 10))
        if p.get("max_images"):
            n = min(n, p["max_images"])
        out[s] = n
    return out


def n_pairs(entry: dict, counts: dict) -> int:
    """Keypoint pairs of a data set."""
    if entry["source"] == "spair71k":
        p = entry.get("params") or {}
        pairs = SPAIR_PAIRS.get(p.get("split", "test"), SPAIR_PAIRS["test"])
        return min(pairs, p["max_pairs"]) if p.get("max_pairs") else pairs
    return counts.get("pair", 0) // 2


def n_videos(entry: dict) -> int:
    """Video sequences of a data set."""
    p = entry.get("params") or {}
    if entry["source"] == "scenes":
        return scenes_params(entry)["n_videos"]
    return min(DAVIS_SEQUENCES, p.get("max_sequences") or DAVIS_SEQUENCES)


def image_size(entry: dict) -> tuple[int, int]:
    """The (H, W) a data set's images are resized to (its ``img_size``, default 224)."""
    size = entry.get("img_size", 224)
    return (size, size) if isinstance(size, int) else tuple(size)


def mask_size(entry: dict) -> tuple[int, int]:
    """(H, W) of a data set's ground-truth masks (the evaluators score at the image's own size):
    ``scenes`` its generator's image size, the recipes their typical size, else the input."""
    if entry["source"] == "scenes":
        side = scenes_params(entry)["image_size"]
        return side, side
    if entry["source"] in MASK_SIZE:
        return MASK_SIZE[entry["source"]]
    return image_size(entry)


def video_objects(entry: dict) -> float:
    """Objects per video sequence (tracked and scored one by one)."""
    if entry["source"] == "scenes":
        lo, hi = scenes_params(entry)["video_objects"]
        return (lo + hi) / 2
    return DAVIS_OBJECTS


def n_classes(entry: dict) -> int:
    """Foreground classes of a data set (the few-shot support draws n_shots of each)."""
    if entry["source"] == "scenes":
        r = scenes_params(entry)
        return r["n_shapes"] * r["n_textures"]
    return CLASSES.get(entry["source"], 10)
