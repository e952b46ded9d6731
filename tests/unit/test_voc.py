"""VOC 2012 converter on a tiny tree in the official format, and the voc2012 recipe end to end."""
from __future__ import annotations

import dataclasses
import hashlib
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchlens.data import recipes
from patchlens.data.dataset import Dataset
from patchlens.data.voc import VOC_CLASSES, classes_by_area, convert, objects_from_masks
from patchlens.errors import DataError

H, W = 20, 30
PALETTE = np.random.default_rng(3).integers(0, 256, 768).tolist()


def _palette_png(arr: np.ndarray, path: Path) -> None:
    im = Image.fromarray(arr.astype(np.uint8), mode="P")
    im.putpalette(PALETTE)
    path.parent.mkdir(parents=True, exist_ok=True)
    im.save(path)


def _masks(variant: int) -> tuple[np.ndarray, np.ndarray, list[dict]]:
    """(semantic, instance, expected objects) with rectangles at known places."""
    sem = np.zeros((H, W), np.uint8)
    ins = np.zeros((H, W), np.uint8)
    sem[2:10, 3:12], ins[2:10, 3:12] = 15, 1          # person, 8 x 9 = 72 px
    sem[10, 3:12] = ins[10, 3:12] = 255               # void border below it
    sem[12:18, 5:25], ins[12:18, 5:25] = 12, 2        # dog, 6 x 20 = 120 px
    objects = [dict(instance=1, **{"class": 15}, x0=3, y0=2, x1=12, y1=10, area=72),
               dict(instance=2, **{"class": 12}, x0=5, y0=12, x1=25, y1=18, area=120)]
    if variant:
        # instance 3: mostly cat (8), a few chair (9) and void pixels -> class 8
        sem[2:8, 20:28], ins[2:8, 20:28] = 8, 3       # 48 px
        sem[2, 20:23] = 9
        sem[7, 27] = 255
        objects.append(dict(instance=3, **{"class": 8}, x0=20, y0=2, x1=28, y1=8, area=48))
    return sem, ins, objects


def write_voc_tree(base: Path) -> tuple[Path, dict]:
    """A VOCdevkit/VOC2012 tree: train = 2 images, val = 1; returns (root, expected)."""
    root = base / "VOCdevkit" / "VOC2012"
    rng = np.random.default_rng(0)
    splits = {"train": ["2007_000001", "2007_000002"], "val": ["2007_000003"]}
    expected = {}
    for k, image in enumerate(sum(splits.values(), [])):
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (H, W, 3), dtype=np.uint8)).save(
            root / "JPEGImages" / f"{image}.jpg")
        sem, ins, objs = _masks(k % 2)
        _palette_png(sem, root / "SegmentationClass" / f"{image}.png")
        _palette_png(ins, root / "SegmentationObject" / f"{image}.png")
        expected[image] = (sem, ins, objs)
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    for split, ids in splits.items():
        (lists / f"{split}.txt").write_text("\n".join(ids) + "\n")
    return root, expected


def test_classes_by_area_orders_by_pixel_count():
    sem = np.zeros((4, 5), np.uint8)
    sem[0, :2] = 3            # 2 px
    sem[1:, :] = 7            # 15 px
    sem[0, 2:4] = 5           # 2 px, tie with 3 -> lower id first
    sem[0, 4] = 255
    assert classes_by_area(sem) == [7, 3, 5]
    assert classes_by_area(np.zeros((3, 3), np.uint8)) == []


def test_objects_from_masks_majority_class_area_and_box():
    sem, ins, expected = _masks(1)
    got = objects_from_masks(ins, sem)
    assert [r["instance"] for r in got] == [1, 2, 3]
    for rec, exp in zip(got, expected):
        assert rec["class"] == exp["class"]
        assert (rec["x0"], rec["y0"], rec["x1"], rec["y1"]) == (exp["x0"], exp["y0"],
                                                              exp["x1"], exp["y1"])
        assert rec["area_frac"] == pytest.approx(exp["area"] / (H * W))


def test_convert_through_dataset_reader(tmp_path):
    root, expected = write_voc_tree(tmp_path / "src")
    out = tmp_path / "out"
    convert(root, out)
    ds = Dataset(out)
    assert ds.split("train") == ["2007_000001", "2007_000002"]
    assert ds.split("val") == ["2007_000003"]
    assert ds.classes["name"].tolist() == list(VOC_CLASSES) and len(VOC_CLASSES) == 21
    for image, (sem, ins, objs) in expected.items():
        np.testing.assert_array_equal(ds.load_semantic(image), sem)
        np.testing.assert_array_equal(ds.load_instance(image), ins)
        assert ds.load_image(image).shape == (H, W, 3)
        assert (ds.manifest.at[image, "height"], ds.manifest.at[image, "width"]) == (H, W)
        rows = ds.objects[ds.objects["image"] == image].sort_values("instance")
        assert rows["instance"].tolist() == [o["instance"] for o in objs]
        assert rows["class"].tolist() == [o["class"] for o in objs]
        assert (rows["identity"] == -1).all()
        assert rows[["x0", "y0", "x1", "y1"]].values.tolist() == [
            [o["x0"], o["y0"], o["x1"], o["y1"]] for o in objs]
        np.testing.assert_allclose(rows["area_frac"], [o["area"] / (H * W) for o in objs])
    # image 2007_000001: dog 120 px > person 72 px; image 2007_000002 adds cat (44) and chair (3)
    assert ds.labels("2007_000001") == [12, 15]
    assert ds.labels("2007_000002") == [12, 15, 8, 9]
    assert ds.has("semantic") and ds.has("instance") and ds.has("objects")


def test_max_images_is_a_seeded_subsample(tmp_path):
    root, _ = write_voc_tree(tmp_path / "src")
    picks = []
    for run in range(2):
        convert(root, tmp_path / f"out{run}", {"max_images": 1, "seed": 5})
        picks.append(Dataset(tmp_path / f"out{run}").images)
    assert picks[0] == picks[1]
    assert len(picks[0]) == 2 and picks[0][1] == "2007_000003"
    convert(root, tmp_path / "val", {"splits": ["val"]})
    assert Dataset(tmp_path / "val").images == ["2007_000003"]


def test_listed_image_without_mask_names_the_file(tmp_path):
    root, _ = write_voc_tree(tmp_path / "src")
    missing = root / "SegmentationObject" / "2007_000003.png"
    missing.unlink()
    with pytest.raises(DataError, match="2007_000003.png: missing for image '2007_000003'"):
        convert(root, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.csv").exists()


def _tar(src_base: Path, path: Path) -> bytes:
    with tarfile.open(path, "w") as tar:
        tar.add(src_base / "VOCdevkit", arcname="VOCdevkit")
    return path.read_bytes()


def test_prepare_voc2012_from_a_local_archive(tmp_path, monkeypatch):
    write_voc_tree(tmp_path / "src")
    have = tmp_path / "have" / "VOCtrainval_11-May-2012.tar"
    have.parent.mkdir()
    data = _tar(tmp_path / "src", have)
    recipe = recipes.RECIPES["voc2012"]
    # the real recipe's published checksums also guard a user-given source
    with pytest.raises(DataError, match="different file"):
        recipes.prepare("voc2012", tmp_path / "d0", tmp_path / "o0",
                        {"url": str(have), "progress": False})
    archive = dataclasses.replace(recipe.archive, md5=hashlib.md5(data).hexdigest(),
                                  sha256=hashlib.sha256(data).hexdigest())
    monkeypatch.setitem(recipes.RECIPES, "voc2012", dataclasses.replace(recipe, archive=archive))
    data_dir, out = tmp_path / "data", tmp_path / "out"
    recipes.prepare("voc2012", data_dir, out, {"url": str(have), "progress": False})
    assert (data_dir / "VOCtrainval_11-May-2012.tar").exists()
    assert (data_dir / "VOCdevkit/VOC2012/ImageSets/Segmentation/val.txt").exists()
    assert len(Dataset(out).images) == 3
    have.unlink()  # the extracted tree is reused: no source needed any more
    recipes.prepare("voc2012", data_dir, tmp_path / "out2",
                    {"progress": False, "max_images": 1})
    assert len(Dataset(tmp_path / "out2").images) == 2
