"""ImageFolder-style image classification tree (Imagenette) -> patchlens layout.

Tree: ``<root>/<split>/<class folder>/<image>`` (Imagenette v2: ``train/<wnid>/*.JPEG`` and
``val/<wnid>/*.JPEG``, 10 ImageNet classes). Converted: one manifest row per image with its
split, ``labels`` = the class id, no masks; image id = ``<split>-<class folder>-<file stem>``.
Class ids number the class folders in sorted order (over all converted splits, as torchvision's
ImageFolder does); classes.csv gives readable names (the Imagenette WordNet ids are mapped to
the names torchvision uses; other folder names are kept, or mapped through ``names``).

Parameters: ``splits`` (``[train, val]``), ``max_per_class`` and ``max_images`` (per split; a
seeded draw, per class first, then over the split), ``names`` (folder -> class name),
``seed`` (0).
"""
from __future__ import annotations

from pathlib import Path

from patchlens.data.download import place_file
from patchlens.data.layout import check_count, image_size, subsample, write_layout
from patchlens.errors import ConfigError, DataError
from patchlens.params import merge_params

IMAGENETTE_NAMES = {
    "n01440764": "tench", "n02102040": "English springer", "n02979186": "cassette player",
    "n03000684": "chain saw", "n03028079": "church", "n03394916": "French horn",
    "n03417042": "garbage truck", "n03425413": "gas pump", "n03445777": "golf ball",
    "n03888257": "parachute",
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DEFAULT_PARAMS = {"splits": ["train", "val"], "max_images": None, "max_per_class": None,
            "names": None, "seed": 0}


def convert(root: str | Path, out_dir: str | Path, params: dict | None = None) -> None:
    """Convert the ImageFolder tree at ``root`` into the patchlens layout in ``out_dir``.

    Raises DataError naming the directory when a split folder is missing or holds no images.
    """
    p = merge_params(params, DEFAULT_PARAMS, "imageset params")
    max_images = check_count(p["max_images"], "max_images", "imageset params")
    max_per_class = check_count(p["max_per_class"], "max_per_class", "imageset params")
    if not isinstance(p["names"] or {}, dict):
        raise ConfigError("imageset params: names must be a mapping folder -> class name")
    names = IMAGENETTE_NAMES | dict(p["names"] or {})
    splits = [p["splits"]] if isinstance(p["splits"], str) else list(p["splits"])
    root, out_dir = Path(root), Path(out_dir)
    folders: dict[str, dict[str, list[Path]]] = {}
    for split in splits:
        split_dir = root / split
        if not split_dir.is_dir():
            raise DataError(f"{split_dir}: split folder missing; the image tree is incomplete: "
                            "re-extract the archive (or fix params.root / params.splits)")
        folders[split] = {
            d.name: sorted(f for f in d.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
            for d in sorted(split_dir.iterdir()) if d.is_dir() and not d.name.startswith(".")}
        if not any(folders[split].values()):
            raise DataError(f"{split_dir}: no images in any class folder; the image tree is "
                            "incomplete: re-extract the archive")
    classes = sorted({c for per_split in folders.values() for c in per_split})
    class_id = {c: i for i, c in enumerate(classes)}
    manifest = []
    for split, per_class in folders.items():
        chosen = []
        for cls, files in per_class.items():
            chosen += subsample(files, max_per_class, p["seed"], salt=f"{split}/{cls}")
        for path in subsample(chosen, max_images, p["seed"], salt=split):
            cls = path.parent.name
            height, width = image_size(path)
            rel = f"images/{split}/{cls}/{path.name}"
            place_file(path, out_dir / rel)
            manifest.append({"image": f"{split}-{cls}-{path.stem}", "path": rel, "split": split,
                             "height": height, "width": width, "labels": str(class_id[cls])})
    write_layout(out_dir, manifest, [names.get(c, c) for c in classes])


# Photographs scikit-image ships inside its wheel (no download): name -> (class folder, loader).
# ``camera``, ``coins``, ``moon``, ``grass``, ``gravel`` and ``brick`` are greyscale (stacked to RGB).
SKIMAGE_PHOTOS = {
    "astronaut": ("person", "astronaut"), "camera": ("person", "camera"),
    "chelsea": ("animal", "chelsea"), "coffee": ("object", "coffee"),
    "rocket": ("object", "rocket"), "clock": ("object", "clock"), "coins": ("object", "coins"),
    "motorcycle": ("object", "stereo_motorcycle"), "grass": ("texture", "grass"),
    "gravel": ("texture", "gravel"), "brick": ("texture", "brick"), "moon": ("science", "moon"),
    "hubble": ("science", "hubble_deep_field"), "ihc": ("science", "immunohistochemistry"),
    "retina": ("science", "retina"),
}
PHOTO_DEFAULTS = {"photos": list(SKIMAGE_PHOTOS), "crops": 1, "crop_fraction": 0.6, "seed": 0}


def photo_array(name: str):
    """One bundled scikit-image photograph as uint8 RGB (h, w, 3)."""
    import numpy as np
    from skimage import data

    im = getattr(data, SKIMAGE_PHOTOS[name][1])()
    im = im[0] if isinstance(im, tuple) else im  # stereo_motorcycle: (left, right, disparity)
    im = np.asarray(im)
    if im.dtype != np.uint8:
        im = (255 * (im.astype(np.float64) / max(float(im.max()), 1e-12))).astype(np.uint8)
    if im.ndim == 2:
        im = np.repeat(im[..., None], 3, axis=2)
    return np.ascontiguousarray(im[..., :3])


def skimage_photos(root, out_dir: str | Path, params: dict | None = None) -> None:
    """Natural photographs from scikit-image's wheel as a one-split (``train``) image set.

    Each photo of ``photos`` (default: the 15 of :data:`SKIMAGE_PHOTOS`) gives the whole
    image plus ``crops`` seeded square crops of side ``crop_fraction`` x its shorter side, so
    attention statistics and CKA see real photos offline. Written as an ImageFolder tree
    (class = what the photo shows) and converted by :func:`convert`; ``root`` is unused.
    """
    import shutil

    import numpy as np
    from PIL import Image

    p = merge_params(params, PHOTO_DEFAULTS, "skimage_photos params")
    unknown = [n for n in p["photos"] if n not in SKIMAGE_PHOTOS]
    if unknown:
        raise ConfigError(f"skimage_photos params: photos: {unknown[0]!r} is not bundled; "
                          f"known: {', '.join(SKIMAGE_PHOTOS)}")
    crops = 0 if p["crops"] in (0, None) else check_count(p["crops"], "crops",
                                                          "skimage_photos params")
    if not 0.1 <= float(p["crop_fraction"]) <= 1.0:
        raise ConfigError("skimage_photos params: crop_fraction must lie in [0.1, 1]")
    out_dir = Path(out_dir)
    tree = out_dir / "_photos"
    rng = np.random.default_rng(int(p["seed"]))
    for name in p["photos"]:
        im = photo_array(name)
        d = tree / "train" / SKIMAGE_PHOTOS[name][0]
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(d / f"{name}.png")
        side = int(float(p["crop_fraction"]) * min(im.shape[:2]))
        for c in range(crops):
            y = int(rng.integers(0, im.shape[0] - side + 1))
            x = int(rng.integers(0, im.shape[1] - side + 1))
            Image.fromarray(im[y:y + side, x:x + side]).save(d / f"{name}_crop{c}.png")
    convert(tree, out_dir, {"splits": ["train"], "seed": p["seed"]})
    shutil.rmtree(tree)  # the layout holds its own copies (hard links or bytes)
