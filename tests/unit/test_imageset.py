"""ImageFolder (Imagenette) converter on a tiny tree; the imagefolder recipe; parameter checks."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchlens.data import recipes
from patchlens.data.dataset import Dataset
from patchlens.data.imageset import convert
from patchlens.errors import ConfigError, DataError

FILES = {"train": {"n01440764": ["n01440764_1", "n01440764_2"],
                   "n02102040": ["n02102040_1", "n02102040_2", "n02102040_3"]},
         "val": {"n01440764": ["ILSVRC2012_val_1"], "n02102040": ["ILSVRC2012_val_2"]}}


def write_imagenette_tree(base: Path) -> Path:
    root = base / "imagenette2-320"
    rng = np.random.default_rng(0)
    for split, classes in FILES.items():
        for wnid, stems in classes.items():
            d = root / split / wnid
            d.mkdir(parents=True)
            for k, stem in enumerate(stems):
                size = (12 + k, 10 + 2 * k, 3)
                Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8)).save(
                    d / f"{stem}.JPEG", format="JPEG")
            (d / "notes.txt").write_text("not an image")
    (root / "noisy_imagenette.csv").write_text("path,label\n")
    return root


def test_convert_through_dataset_reader(tmp_path):
    root = write_imagenette_tree(tmp_path / "src")
    convert(root, tmp_path / "out")
    ds = Dataset(tmp_path / "out")
    assert ds.classes["name"].tolist() == ["tench", "English springer"]
    assert len(ds.split("train")) == 5 and len(ds.split("val")) == 2
    for split, classes in FILES.items():
        for label, (wnid, stems) in enumerate(classes.items()):
            for k, stem in enumerate(stems):
                image = f"{split}-{wnid}-{stem}"
                assert ds.manifest.at[image, "split"] == split
                assert ds.labels(image) == [label]
                assert ds.load_image(image).shape == (12 + k, 10 + 2 * k, 3)
    assert ds.has("labels") and not ds.has("semantic") and ds.objects is None


def test_max_per_class_and_max_images(tmp_path):
    root = write_imagenette_tree(tmp_path / "src")
    convert(root, tmp_path / "a", {"max_per_class": 1, "splits": ["train"]})
    ds = Dataset(tmp_path / "a")
    assert sorted(ds.labels(i)[0] for i in ds.images) == [0, 1]
    convert(root, tmp_path / "b", {"max_images": 3, "seed": 7})
    convert(root, tmp_path / "c", {"max_images": 3, "seed": 7})
    assert Dataset(tmp_path / "b").images == Dataset(tmp_path / "c").images
    assert len(Dataset(tmp_path / "b").split("train")) == 3


def test_missing_split_folder_names_it(tmp_path):
    root = write_imagenette_tree(tmp_path / "src")
    shutil.rmtree(root / "val")
    with pytest.raises(DataError, match=r"imagenette2-320/val: split folder missing"):
        convert(root, tmp_path / "out")


def test_imagefolder_recipe_and_parameter_errors(tmp_path):
    root = write_imagenette_tree(tmp_path / "src")
    with pytest.raises(ConfigError, match="give params.root"):
        recipes.prepare("imagefolder", tmp_path / "data", tmp_path / "out", {})
    recipes.prepare("imagefolder", tmp_path / "data", tmp_path / "out",
                    {"root": str(root), "splits": ["val"], "names": {"n02102040": "dog"}})
    assert Dataset(tmp_path / "out").classes["name"].tolist() == ["tench", "dog"]
    with pytest.raises(ConfigError, match="unknown parameter.*max_imgs"):
        convert(root, tmp_path / "x", {"max_imgs": 3})
    with pytest.raises(ConfigError, match="max_images must be a positive integer"):
        convert(root, tmp_path / "x", {"max_images": 0})
    with pytest.raises(ConfigError, match="recipe 'coco' is unknown"):
        recipes.prepare("coco", tmp_path / "data", tmp_path / "x", {})


def test_skimage_photos_recipe(tmp_path):
    """The bundled-photo set: each photo whole (pixel-equal to scikit-image's array, grey
    stacked to RGB) plus seeded crops of the requested side; bad parameters fail in one line."""
    from skimage import data

    from patchlens.data.imageset import photo_array

    recipes.prepare("skimage_photos", tmp_path / "unused", tmp_path / "out",
                    {"photos": ["chelsea", "camera"], "crops": 2, "crop_fraction": 0.5})
    ds = Dataset(tmp_path / "out")
    assert len(ds.images) == 6 and set(ds.manifest["split"]) == {"train"}
    whole = np.asarray(Image.open(tmp_path / "out" / ds.manifest.set_index("image").loc[
        "train-animal-chelsea", "path"]))
    np.testing.assert_array_equal(whole, data.chelsea())
    cam = photo_array("camera")
    assert cam.shape == (*data.camera().shape, 3) and (cam[..., 1] == data.camera()).all()
    crop = ds.load_image("train-person-camera_crop1")
    side = int(0.5 * min(data.camera().shape))
    assert crop.shape == (side, side, 3)
    found = [(y, x) for y in range(cam.shape[0] - side + 1) for x in range(0, cam.shape[1] - side + 1)
             if (cam[y, x:x + 4, 0] == crop[0, :4, 0]).all()
             and (cam[y:y + side, x:x + side] == crop).all()]
    assert found, "a crop must be a window of its photo"
    assert not (tmp_path / "out" / "_photos").exists()
    with pytest.raises(ConfigError, match="photos: 'lena' is not bundled"):
        recipes.prepare("skimage_photos", tmp_path, tmp_path / "o2", {"photos": ["lena"]})
    with pytest.raises(ConfigError, match="unknown parameter"):
        recipes.prepare("skimage_photos", tmp_path, tmp_path / "o3", {"size": 3})
