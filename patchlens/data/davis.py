"""DAVIS-2017 (semi-supervised, 480p) -> patchlens layout.

Official tree (``DAVIS`` of DAVIS-2017-trainval-480p.zip)::

    JPEGImages/480p/<seq>/00000.jpg ...
    Annotations/480p/<seq>/00000.png ...   palette PNG, index = object id 0..N (0 = background)
    ImageSets/2017/{train,val}.txt         one sequence name per line

Converted: every frame of each listed sequence is an image of split ``video`` with its
``sequence`` and ``frame`` (the official frame number); ``instance`` = the official annotation
(palette index = object id); ``semantic`` = 1 where any object, else 0 (classes: background,
object; 255 kept as void should an annotation carry it). ``objects.csv`` lists the objects of
frame 0, the reference masks of the semi-supervised protocol (Pont-Tuset et al. 2017; DINO's
label propagation starts from them), with ``identity`` a data-set-wide id per (sequence,
object). DAVIS annotates every frame of train and val, so a missing annotation is an error.

Parameters: ``split`` (``val``), ``resolution`` (``480p``), ``max_sequences`` (seeded draw),
``max_frames`` (first n frames of each sequence), ``seed`` (0).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from patchlens.data.dataset import VOID
from patchlens.data.download import place_file
from patchlens.data.layout import (check_count, image_size, read_index_png, read_list, subsample,
                                   write_index_png, write_layout)
from patchlens.data.voc import objects_from_masks
from patchlens.errors import DataError
from patchlens.params import merge_params

DAVIS_CLASSES = ("background", "object")
DEFAULT_PARAMS = {"split": "val", "resolution": "480p", "max_sequences": None, "max_frames": None,
            "seed": 0}


def foreground(instance: np.ndarray) -> np.ndarray:
    """Class-id mask of an object-id mask: 1 on any object (ids 1..254), 0 on background,
    255 (void) kept."""
    return np.where(instance == VOID, VOID, instance > 0).astype(np.uint8)


def convert(root: str | Path, out_dir: str | Path, params: dict | None = None) -> None:
    """Convert the DAVIS-2017 tree at ``root`` into the patchlens layout in ``out_dir``.

    Raises DataError naming the file when a listed sequence has no frames, a frame has no
    annotation, or an annotation does not match its frame size.
    """
    p = merge_params(params, DEFAULT_PARAMS, "davis2017 params")
    max_seq = check_count(p["max_sequences"], "max_sequences", "davis2017 params")
    max_frames = check_count(p["max_frames"], "max_frames", "davis2017 params")
    root, out_dir, res = Path(root), Path(out_dir), str(p["resolution"])
    listing = root / "ImageSets" / "2017" / f"{p['split']}.txt"
    sequences = subsample(read_list(listing), max_seq, p["seed"], salt=str(p["split"]))
    manifest, objects = [], []
    for seq in sequences:
        frame_dir = root / "JPEGImages" / res / seq
        frames = sorted(frame_dir.glob("*.jpg"))
        if not frames:
            raise DataError(f"{frame_dir}: no frames for sequence {seq!r} listed in {listing}; "
                            "the DAVIS tree is incomplete: re-extract the archive")
        for k, jpg in enumerate(frames[:max_frames]):
            if not jpg.stem.isdigit():
                raise DataError(f"{jpg}: frame file name is not a frame number; expected "
                                "00000.jpg, 00001.jpg, ...")
            ann = root / "Annotations" / res / seq / f"{jpg.stem}.png"
            if not ann.is_file():
                raise DataError(f"{ann}: missing annotation for frame {jpg.name} of sequence "
                                f"{seq!r}; the DAVIS tree is incomplete: re-extract the archive")
            height, width = image_size(jpg)
            instance = read_index_png(ann)
            if instance.shape != (height, width):
                raise DataError(f"{ann}: mask is {instance.shape[1]}x{instance.shape[0]} but the "
                                f"frame is {width}x{height}; re-extract the archive")
            semantic = foreground(instance)
            image = f"{seq}_{jpg.stem}"
            rel = {"path": f"images/{seq}/{jpg.name}", "semantic": f"semantic/{seq}/{ann.name}",
                   "instance": f"instance/{seq}/{ann.name}"}
            place_file(jpg, out_dir / rel["path"])
            place_file(ann, out_dir / rel["instance"])
            write_index_png(semantic, out_dir / rel["semantic"])
            manifest.append({"image": image, "split": "video", **rel, "sequence": seq,
                             "frame": int(jpg.stem), "height": height, "width": width})
            if k == 0:
                objects += [{"image": image, **rec} for rec in
                            objects_from_masks(instance, semantic)]
    for identity, rec in enumerate(objects):
        rec["identity"] = identity
    write_layout(out_dir, manifest, DAVIS_CLASSES, objects=objects)
