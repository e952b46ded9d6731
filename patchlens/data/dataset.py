"""The one on-disk layout every data set is converted to, and its reader.

A data set lives in one directory (``results/data/{dataset}/`` by default)::

    manifest.csv    one row per image (required)
        image      unique string id
        path       image file, relative to the directory (RGB PNG/JPEG)
        split      free string; tasks name the splits they use
                   (scenes: train, val, crop, gallery, video, pair)
        semantic   relative path of a class-id PNG (uint8, 0 = background, 255 = void) or empty
        instance   relative path of an instance-id PNG (uint8, 0 = none, 1..N, 255 = void) or empty
        sequence   video id for video frames, else empty
        frame      frame index within the sequence, -1 for still images
        height, width   original image size in pixels
        labels     image-level class ids, space separated (low-shot classification), may be empty
        uv         relative path of a float32 .npy (H, W, 2) of canonical object coordinates
                   (scenes only; NaN off objects), may be empty
        depth      relative path of a 16-bit grey PNG (H, W) of metric depth in millimetres,
                   0 = no measurement (:func:`read_depth_png`), or empty; optional column (a
                   manifest without it has no depth)
    classes.csv     class (int), name (str)                                     (required)
    objects.csv     image, instance, class, identity, area_frac, x0, y0, x1, y1 (optional)
                    one row per object occurrence; ``instance`` is its id in the instance PNG,
                    ``identity`` a data-set-wide appearance id (-1 when unknown), bbox in pixels
                    (x1, y1 exclusive), ``area_frac`` = mask area / image area
    keypoints.csv   pair, src_image, trg_image, kp, src_x, src_y, trg_x, trg_y,
                    trg_x0, trg_y0, trg_x1, trg_y1                               (optional)
                    one row per keypoint of an image pair, pixel coordinates of the original
                    images, target bounding box for PCK normalisation

Masks are 8-bit index PNGs (mode ``L`` or ``P``) of exactly their image's size (the manifest's
``height`` x ``width``): a 16-bit or RGB mask, or one of another size, is refused with one line
naming the file -- when the data set is prepared (:func:`patchlens.data.layout.write_layout`)
and when a mask is read -- never clipped or broadcast.

Readers raise :class:`~patchlens.errors.DataError` naming the file and the fix.
"""
from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from patchlens.errors import DataError

MANIFEST_COLUMNS = ["image", "path", "split", "semantic", "instance", "sequence", "frame",
                    "height", "width", "labels", "uv", "depth"]
OPTIONAL_COLUMNS = ("depth",)  # filled with "" when a manifest lacks them
OBJECT_COLUMNS = ["image", "instance", "class", "identity", "area_frac", "x0", "y0", "x1", "y1"]
KEYPOINT_COLUMNS = ["pair", "src_image", "trg_image", "kp", "src_x", "src_y", "trg_x", "trg_y",
                    "trg_x0", "trg_y0", "trg_x1", "trg_y1"]
VOID = 255
MASK_MODES = ("L", "P")  # 8-bit grey or palette indices
DEPTH_MODES = ("I;16", "I;16B", "I;16L")  # 16-bit grey (PIL's names for it)
DEPTH_SCALE = 1000.0  # depth PNG value per metre (millimetres; 0 = no measurement)


MASK_CACHE_BYTES = 512 * 2**20  # decoded masks kept per Dataset (uint8: VOC's 2,913 masks ~ 0.5 GB)


def mask_problem(im: Image.Image, height: int | None, width: int | None) -> str | None:
    """Why an opened mask image is unusable (one phrase), None when it is an 8-bit index image
    of size (height, width) (None: size not known, not checked)."""
    if im.mode not in MASK_MODES:
        bits = " (16-bit)" if im.mode.startswith("I;16") else (
            " (32-bit)" if im.mode in ("I", "F") else "")
        return (f"mode {im.mode}{bits} mask; expected an 8-bit index PNG (ids 0..254, "
                f"{VOID} = void)")
    if height is not None and width is not None and (im.height, im.width) != (height, width):
        return (f"mask is {im.height}x{im.width} (HxW) but its image is {height}x{width}")
    return None


def depth_problem(im: Image.Image, height: int | None, width: int | None) -> str | None:
    """Why an opened depth image is unusable (one phrase), None when it is a 16-bit grey PNG of
    size (height, width) (None: size not known, not checked)."""
    if im.mode not in DEPTH_MODES:
        return f"mode {im.mode} depth map; expected a 16-bit grey PNG in millimetres (0 = none)"
    if height is not None and width is not None and (im.height, im.width) != (height, width):
        return f"depth map is {im.height}x{im.width} (HxW) but its image is {height}x{width}"
    return None


def depth_to_png(depth: np.ndarray) -> np.ndarray:
    """Metric depth (H, W) in metres (NaN, inf or <= 0: no measurement) -> uint16 millimetres
    (0 = none), rounded; depths beyond 65.535 m are refused (ValueError)."""
    d = np.asarray(depth, np.float64)
    ok = np.isfinite(d) & (d > 0)
    mm = np.zeros(d.shape, np.uint16)
    v = np.round(d[ok] * DEPTH_SCALE)
    if v.size and v.max() > np.iinfo(np.uint16).max:
        raise ValueError(f"depth {d[ok].max():.3f} m does not fit a 16-bit PNG in millimetres")
    mm[ok] = np.maximum(v, 1).astype(np.uint16)
    return mm


def _size(value) -> int | None:
    try:
        v = int(value)
    except (TypeError, ValueError):
        return None
    return v if v > 0 else None


def _read_table(path: Path, columns: list[str], required: bool) -> pd.DataFrame | None:
    if not path.exists():
        if required:
            raise DataError(f"{path}: missing; rerun the data preparation rule for this data set")
        return None
    try:
        df = pd.read_csv(path, keep_default_na=False, dtype={"image": str, "sequence": str,
                                                            "src_image": str, "trg_image": str,
                                                            "pair": str, "labels": str})
    except Exception as exc:  # pandas parser errors are long; keep one line
        raise DataError(f"{path}: not a readable CSV ({exc}); regenerate it") from exc
    for c in OPTIONAL_COLUMNS:
        if c in columns and c not in df.columns:
            df[c] = ""
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; "
                        f"expected {', '.join(columns)}")
    return df


class Dataset:
    """Read access to a data set directory in the layout above (lazy, cached tables)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        if not self.root.is_dir():
            raise DataError(f"{self.root}: data set directory not found; run the data rule first")
        self.manifest = _read_table(self.root / "manifest.csv", MANIFEST_COLUMNS, True)
        if self.manifest["image"].duplicated().any():
            dup = self.manifest["image"][self.manifest["image"].duplicated()].iloc[0]
            raise DataError(f"{self.root / 'manifest.csv'}: image id {dup!r} appears twice")
        self.manifest = self.manifest.set_index("image", drop=False)
        self.classes = _read_table(self.root / "classes.csv", ["class", "name"], True)
        self.objects = _read_table(self.root / "objects.csv", OBJECT_COLUMNS, False)
        self.keypoints = _read_table(self.root / "keypoints.csv", KEYPOINT_COLUMNS, False)
        # decoded masks, read-only: an evaluator scores every layer and variant with one Dataset
        # (patchlens.evaluate), so each mask is decoded once per job, not once per layer x variant
        self._masks: dict[tuple[str, str], np.ndarray] = {}
        self._mask_bytes = 0

    @classmethod
    def from_manifest(cls, manifest: str | Path) -> "Dataset":
        """The data set whose ``manifest.csv`` is ``manifest`` (what a rule declares as input)."""
        manifest = Path(manifest)
        if manifest.name != "manifest.csv":
            raise DataError(f"{manifest}: expected a data set's manifest.csv")
        return cls(manifest.parent)

    # -- selection -------------------------------------------------------------------------
    @property
    def images(self) -> list[str]:
        return self.manifest["image"].tolist()

    def split(self, *names: str) -> list[str]:
        """Image ids whose split is one of ``names``, in manifest order."""
        return self.manifest.index[self.manifest["split"].isin(names)].tolist()

    @cached_property
    def sequences(self) -> dict[str, list[str]]:
        """Video id -> frame image ids ordered by frame index."""
        frames = self.manifest[self.manifest["sequence"] != ""]
        return {seq: g.sort_values("frame")["image"].tolist()
                for seq, g in frames.groupby("sequence", sort=True)}

    def has(self, what: str) -> bool:
        """Whether the data set carries a kind of ground truth:
        semantic, instance, objects, keypoints, video, labels, uv, depth."""
        m = self.manifest
        return {
            "semantic": bool((m["semantic"] != "").any()),
            "instance": bool((m["instance"] != "").any()),
            "objects": self.objects is not None and len(self.objects) > 0,
            "keypoints": self.keypoints is not None and len(self.keypoints) > 0,
            "video": bool((m["sequence"] != "").any()),
            "labels": bool((m["labels"] != "").any()),
            "uv": bool((m["uv"] != "").any()),
            "depth": bool((m["depth"] != "").any()),
        }[what]

    # -- files -----------------------------------------------------------------------------
    def _file(self, image: str, column: str) -> Path:
        try:
            rel = self.manifest.at[image, column]
        except KeyError:
            raise DataError(f"{self.root / 'manifest.csv'}: no image {image!r}") from None
        if rel == "":
            raise DataError(f"{self.root / 'manifest.csv'}: image {image!r} has no {column} file")
        path = self.root / rel
        if not path.exists():
            raise DataError(f"{path}: listed in manifest.csv for {image!r} but missing; "
                            "rerun the data preparation rule")
        return path

    def _png(self, image: str, column: str, mode: str) -> np.ndarray:
        path = self._file(image, column)
        try:
            with Image.open(path) as im:
                # palette PNGs keep their indices when read in mode "P"
                arr = np.asarray(im if im.mode in ("P", "L") and mode == "L" else im.convert(mode))
        except OSError as exc:
            raise DataError(f"{path}: unreadable image ({exc}); re-download or regenerate") from exc
        return arr

    def load_image(self, image: str) -> np.ndarray:
        """RGB uint8 (H, W, 3)."""
        return self._png(image, "path", "RGB")

    def _cached(self, image: str, column: str, read) -> np.ndarray:
        """``read(image, column)`` made read-only, cached up to :data:`MASK_CACHE_BYTES` per data
        set (masks and depth maps share the budget)."""
        if (image, column) in self._masks:
            return self._masks[image, column]
        arr = read(image, column)
        arr.setflags(write=False)
        if self._mask_bytes + arr.nbytes <= MASK_CACHE_BYTES:
            self._masks[image, column] = arr
            self._mask_bytes += arr.nbytes
        return arr

    def _checked_png(self, image: str, column: str, problem, decode) -> np.ndarray:
        """``decode(im)`` of the PNG in ``column`` once ``problem(im, height, width)`` (the
        manifest's size) finds nothing wrong; DataError naming the file otherwise."""
        path = self._file(image, column)
        row = self.manifest.loc[image]
        try:
            with Image.open(path) as im:
                bad = problem(im, _size(row["height"]), _size(row["width"]))
                if bad is None:
                    arr = decode(im)
        except OSError as exc:
            raise DataError(f"{path}: unreadable image ({exc}); re-download or regenerate") from exc
        if bad is not None:
            raise DataError(f"{path}: {bad}; the data set at {self.root} is inconsistent: fix "
                            "the converter or source and rerun the data preparation rule")
        return arr

    def _mask(self, image: str, column: str) -> np.ndarray:
        """The decoded mask (read-only uint8), cached."""
        return self._cached(image, column, self._read_mask)

    def _read_mask(self, image: str, column: str) -> np.ndarray:
        # palette PNGs keep their indices in mode "P"
        return self._checked_png(image, column, mask_problem,
                                 lambda im: np.asarray(im, dtype=np.uint8))

    def load_semantic(self, image: str) -> np.ndarray:
        """Class ids uint8 (H, W); 0 background, 255 void."""
        return self._mask(image, "semantic")

    def load_instance(self, image: str) -> np.ndarray:
        """Instance ids uint8 (H, W); 0 none, 255 void."""
        return self._mask(image, "instance")

    def load_uv(self, image: str) -> np.ndarray:
        """Canonical object coordinates float32 (H, W, 2), NaN off objects."""
        path = self._file(image, "uv")
        return np.load(path, allow_pickle=False)

    def load_depth(self, image: str) -> np.ndarray:
        """Metric depth float32 (H, W) in metres, NaN where there is no measurement (the 16-bit
        millimetre PNG of the manifest's ``depth`` column)."""
        mm = self._cached(image, "depth", self._read_depth)
        out = mm.astype(np.float32) / np.float32(DEPTH_SCALE)
        out[mm == 0] = np.nan
        return out

    def _read_depth(self, image: str, column: str = "depth") -> np.ndarray:
        """The depth PNG's millimetres, uint16 (H, W)."""
        return self._checked_png(image, column, depth_problem,
                                 lambda im: np.asarray(im).astype(np.uint16))

    def labels(self, image: str) -> list[int]:
        """Image-level class ids."""
        s = self.manifest.at[image, "labels"]
        return [int(t) for t in str(s).split()] if s != "" else []
