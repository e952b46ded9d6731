"""DAVIS-2017 converter on a tiny tree in the official format."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchlens.data.dataset import Dataset
from patchlens.data.davis import DAVIS_CLASSES, convert, foreground
from patchlens.errors import DataError

H, W = 16, 24
PALETTE = [0, 0, 0, 128, 0, 0, 0, 128, 0, 128, 128, 0] + [0] * (768 - 12)


def _instance(seq_index: int, frame: int) -> np.ndarray:
    """Object 1 moves right one pixel per frame; sequence 1 also has object 2 (and some void)."""
    m = np.zeros((H, W), np.uint8)
    m[2:8, 2 + frame:8 + frame] = 1
    if seq_index == 1:
        m[10:14, 12:20] = 2
        m[15, :3] = 255
    return m


def write_davis_tree(base: Path, frames: int = 3) -> tuple[Path, dict]:
    root = base / "DAVIS"
    rng = np.random.default_rng(0)
    expected = {}
    for s, seq in enumerate(["bear", "bike-packing", "train-only"]):
        for f in range(frames):
            jpg = root / "JPEGImages" / "480p" / seq / f"{f:05d}.jpg"
            png = root / "Annotations" / "480p" / seq / f"{f:05d}.png"
            jpg.parent.mkdir(parents=True, exist_ok=True)
            png.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(jpg)
            im = Image.fromarray(_instance(s % 2, f), mode="P")
            im.putpalette(PALETTE)
            im.save(png)
            expected[f"{seq}_{f:05d}"] = _instance(s % 2, f)
    sets = root / "ImageSets" / "2017"
    sets.mkdir(parents=True)
    (sets / "val.txt").write_text("bear\nbike-packing\n")
    (sets / "train.txt").write_text("train-only\n")
    return root, expected


def test_foreground_keeps_void():
    inst = np.array([[0, 1, 2], [255, 3, 0]], np.uint8)
    np.testing.assert_array_equal(foreground(inst), [[0, 1, 1], [255, 1, 0]])


def test_convert_through_dataset_reader(tmp_path):
    root, expected = write_davis_tree(tmp_path / "src")
    out = tmp_path / "out"
    convert(root, out)
    ds = Dataset(out)
    assert set(ds.split("video")) == set(ds.images) and len(ds.images) == 6
    assert ds.sequences == {"bear": ["bear_00000", "bear_00001", "bear_00002"],
                            "bike-packing": ["bike-packing_00000", "bike-packing_00001",
                                             "bike-packing_00002"]}
    assert ds.manifest.loc["bear_00002", "frame"] == 2
    assert ds.classes["name"].tolist() == list(DAVIS_CLASSES)
    for image in ds.images:
        inst = expected[image]
        np.testing.assert_array_equal(ds.load_instance(image), inst)
        np.testing.assert_array_equal(ds.load_semantic(image),
                                      np.where(inst == 255, 255, inst > 0))
    obj = ds.objects.sort_values(["image", "instance"])
    assert obj["image"].tolist() == ["bear_00000", "bike-packing_00000", "bike-packing_00000"]
    assert obj["instance"].tolist() == [1, 1, 2] and (obj["class"] == 1).all()
    assert obj["identity"].nunique() == 3
    assert obj[["x0", "y0", "x1", "y1"]].values.tolist() == [[2, 2, 8, 8], [2, 2, 8, 8],
                                                            [12, 10, 20, 14]]
    np.testing.assert_allclose(obj["area_frac"], np.array([36, 36, 32]) / (H * W))


def test_split_and_limits(tmp_path):
    root, _ = write_davis_tree(tmp_path / "src")
    convert(root, tmp_path / "train", {"split": "train"})
    assert list(Dataset(tmp_path / "train").sequences) == ["train-only"]
    convert(root, tmp_path / "small", {"max_sequences": 1, "max_frames": 2, "seed": 1})
    seqs = Dataset(tmp_path / "small").sequences
    assert len(seqs) == 1 and [len(v) for v in seqs.values()] == [2]
    convert(root, tmp_path / "small2", {"max_sequences": 1, "max_frames": 2, "seed": 1})
    assert Dataset(tmp_path / "small2").sequences == seqs


def test_frame_without_annotation_names_the_file(tmp_path):
    root, _ = write_davis_tree(tmp_path / "src")
    (root / "Annotations" / "480p" / "bike-packing" / "00001.png").unlink()
    with pytest.raises(DataError, match=r"bike-packing/00001.png: missing annotation"):
        convert(root, tmp_path / "out")
