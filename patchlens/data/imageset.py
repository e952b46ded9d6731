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
DEFAULTS = {"splits": ["train", "val"], "max_images": None, "max_per_class": None,
            "names": None, "seed": 0}


def convert(root: str | Path, out_dir: str | Path, params: dict | None = None) -> None:
    """Convert the ImageFolder tree at ``root`` into the patchlens layout in ``out_dir``.

    Raises DataError naming the directory when a split folder is missing or holds no images.
    """
    p = merge_params(params, DEFAULTS, "imageset params")
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
