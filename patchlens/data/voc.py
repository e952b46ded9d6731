"""PASCAL VOC 2012 segmentation subset -> patchlens layout.

Official tree (``VOCdevkit/VOC2012`` of VOCtrainval_11-May-2012.tar)::

    JPEGImages/<id>.jpg
    SegmentationClass/<id>.png    palette PNG, index = class 0..20, 255 = void (object borders)
    SegmentationObject/<id>.png   palette PNG, index = instance 1..N, 0 = none, 255 = void
    ImageSets/Segmentation/{train,val}.txt

Converted: split = the list name; ``semantic`` / ``instance`` are the official PNGs (their
palette indices are the ids, which :class:`~patchlens.data.dataset.Dataset` reads as is);
``objects.csv`` has one row per instance (class = majority semantic class of its pixels,
identity = -1: VOC has no cross-image identities); ``labels`` = object classes present, largest
area first (multi-label low-shot classification); classes.csv = background + the 20 classes.

Parameters: ``splits`` (default ``[train, val]``), ``max_images`` (per split, seeded draw),
``seed`` (0).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import ndimage

from patchlens.data.dataset import VOID
from patchlens.data.download import place_file
from patchlens.data.layout import (check_count, image_size, read_index_png, read_list, subsample,
                                   write_layout)
from patchlens.errors import DataError
from patchlens.params import merge_params

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car",
               "cat", "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person",
               "pottedplant", "sheep", "sofa", "train", "tvmonitor")

DEFAULT_PARAMS = {"splits": ["train", "val"], "max_images": None, "seed": 0}


def classes_by_area(semantic: np.ndarray) -> list[int]:
    """Object classes present in a class-id mask, largest pixel area first (ties: lower id).

    Background (0) and void (255) are not classes of the image. This is the image-level
    multi-label target used for low-shot classification on VOC (as in the MIM + clustering
    low-shot studies: an image is labelled with every class whose pixels it contains).
    """
    counts = np.bincount(semantic.ravel(), minlength=256)
    counts[0] = counts[VOID] = 0
    present = np.flatnonzero(counts)
    order = np.lexsort((present, -counts[present]))
    return present[order].tolist()


def objects_from_masks(instance: np.ndarray, semantic: np.ndarray) -> list[dict]:
    """One record per instance id in ``instance`` (ids 1..254; 0 = none, 255 = void).

    class: the majority class of the instance's pixels in ``semantic``, counting object classes
    only (void and background pixels do not vote; 0 when nothing else is there). area_frac:
    pixel count / image area. Bounding box in pixels with exclusive ends (x1, y1), from
    ``scipy.ndimage.find_objects``. Keys: instance, class, area_frac, x0, y0, x1, y1.
    """
    if instance.shape != semantic.shape:
        raise ValueError(f"instance {instance.shape} and semantic {semantic.shape} differ")
    inst = instance.ravel().astype(np.int64)
    votes = np.bincount(inst * 256 + semantic.ravel(), minlength=256 * 256).reshape(256, 256)
    area = votes.sum(axis=1)
    votes[:, 0] = votes[:, VOID] = 0
    cls = np.where(votes.max(axis=1) > 0, votes.argmax(axis=1), 0)
    boxes = ndimage.find_objects(instance)
    n_pixels = instance.size
    records = []
    for k in np.flatnonzero(area):
        if k == 0 or k == VOID:
            continue
        ys, xs = boxes[k - 1]
        records.append({"instance": int(k), "class": int(cls[k]),
                        "area_frac": float(area[k] / n_pixels),
                        "x0": xs.start, "y0": ys.start, "x1": xs.stop, "y1": ys.stop})
    return records


def convert(root: str | Path, out_dir: str | Path, params: dict | None = None) -> None:
    """Convert the VOC2012 tree at ``root`` into the patchlens layout in ``out_dir``.

    Raises DataError naming the file when a listed image has no JPEG or mask, or a mask does
    not match its image size.
    """
    p = merge_params(params, DEFAULT_PARAMS, "voc2012 params")
    max_images = check_count(p["max_images"], "max_images", "voc2012 params")
    splits = [p["splits"]] if isinstance(p["splits"], str) else list(p["splits"])
    root, out_dir = Path(root), Path(out_dir)
    manifest, objects = [], []
    for split in splits:
        listing = root / "ImageSets" / "Segmentation" / f"{split}.txt"
        ids = subsample(read_list(listing), max_images, p["seed"], salt=split)
        for image in ids:
            src = {"path": root / "JPEGImages" / f"{image}.jpg",
                   "semantic": root / "SegmentationClass" / f"{image}.png",
                   "instance": root / "SegmentationObject" / f"{image}.png"}
            for path in src.values():
                if not path.is_file():
                    raise DataError(f"{path}: missing for image {image!r} listed in {listing}; "
                                    "the VOC tree is incomplete: re-extract the archive")
            height, width = image_size(src["path"])
            semantic = read_index_png(src["semantic"])
            instance = read_index_png(src["instance"])
            for key in ("semantic", "instance"):
                mask = semantic if key == "semantic" else instance
                if mask.shape != (height, width):
                    raise DataError(f"{src[key]}: mask is {mask.shape[1]}x{mask.shape[0]} but "
                                    f"the image is {width}x{height}; re-extract the archive")
            dst = {"path": f"images/{image}.jpg", "semantic": f"semantic/{image}.png",
                   "instance": f"instance/{image}.png"}
            for key, rel in dst.items():
                place_file(src[key], out_dir / rel)
            manifest.append({"image": image, "split": split, **dst, "height": height,
                             "width": width,
                             "labels": " ".join(map(str, classes_by_area(semantic)))})
            objects += [{"image": image, "identity": -1, **rec}
                        for rec in objects_from_masks(instance, semantic)]
    write_layout(out_dir, manifest, VOC_CLASSES, objects=objects)
