"""ADE20K recipe: a small ADEChallengeData2016.zip in the official layout, served over HTTP,
downloaded with its checksum, extracted and converted (ids - 1, 0 = other -> void)."""
import dataclasses
import hashlib
import io
import zipfile

import numpy as np
import pytest
from PIL import Image

from helpers.archives import no_proxy
from helpers.http_server import FileServer
from patchlens.data import ade20k, recipes
from patchlens.data.dataset import VOID, Dataset
from patchlens.errors import DataError

TOP = "ADEChallengeData2016"


def _png_bytes(arr, fmt="PNG"):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt)
    return buf.getvalue()


def make_zip(rng, n_train=3, n_val=2, drop_ann=None):
    """(zip bytes, {image id: official annotation})."""
    anns, buf = {}, io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = "Idx\tRatio\tTrain\tVal\tName\n" + "".join(
            f"{i}\t0.01\t10\t1\tname{i};synonym{i}\n" for i in range(1, 151))
        zf.writestr(f"{TOP}/objectInfo150.txt", info)
        for split, folder, n in (("train", "training", n_train), ("val", "validation", n_val)):
            for i in range(n):
                image = f"ADE_{split}_{i + 1:08d}"
                h, w = rng.integers(20, 40, 2)
                ann = rng.choice([0, 1, 7, 150], size=(h, w)).astype(np.uint8)
                anns[image] = ann
                rgb = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
                zf.writestr(f"{TOP}/images/{folder}/{image}.jpg", _png_bytes(rgb, "JPEG"))
                if image != drop_ann:
                    zf.writestr(f"{TOP}/annotations/{folder}/{image}.png", _png_bytes(ann))
    return buf.getvalue(), anns


@pytest.fixture
def served_ade(tmp_path, monkeypatch):
    no_proxy(monkeypatch)
    payload, anns = make_zip(np.random.default_rng(0))
    www = tmp_path / "www"
    www.mkdir()
    (www / "ADEChallengeData2016.zip").write_bytes(payload)
    with FileServer(www) as server:
        real = recipes.RECIPES["ade20k"]
        archive = dataclasses.replace(real.archive, urls=(server.url(real.archive.filename),),
                                      md5=hashlib.md5(payload).hexdigest())
        monkeypatch.setitem(recipes.RECIPES, "ade20k", dataclasses.replace(real, archive=archive))
        yield server, anns


def test_recipe_downloads_verifies_and_converts(tmp_path, served_ade):
    server, anns = served_ade
    recipes.prepare("ade20k", tmp_path / "data", tmp_path / "out", {"progress": False})
    ds = Dataset(tmp_path / "out")
    assert len(ds.split("train")) == 3 and len(ds.split("val")) == 2
    assert ds.classes["name"].tolist()[:2] == ["name1", "name2"] and len(ds.classes) == 150
    for image, ann in anns.items():
        sem = ds.load_semantic(image)
        expect = np.where(ann == 0, VOID, ann.astype(int) - 1)
        assert np.array_equal(sem, expect)
        counts = {c: (sem == c).sum() for c in set(sem.ravel().tolist()) - {VOID}}
        labels = [int(x) for x in ds.manifest.loc[image, "labels"].split()]
        assert sorted(labels) == sorted(counts) and counts[labels[0]] == max(counts.values())
    # a second prepare reuses the verified archive and extracted tree: no new request
    n = len(server.requests)
    recipes.prepare("ade20k", tmp_path / "data", tmp_path / "out2", {"progress": False})
    assert len(server.requests) == n


def test_official_checksum_is_the_published_one():
    archive = recipes.get_recipe("ade20k").archive
    assert archive.md5 == "7328b3957e407ddae1d3cbf487f149ef"
    assert archive.filename == "ADEChallengeData2016.zip"


def test_missing_annotation_names_the_file(tmp_path):
    payload, _ = make_zip(np.random.default_rng(1), drop_ann="ADE_val_00000002")
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
        zf.extractall(tmp_path)
    with pytest.raises(DataError, match=r"ADE_val_00000002\.png: missing"):
        ade20k.convert(tmp_path / TOP, tmp_path / "out")


def test_max_images_and_ids_beyond_150(tmp_path):
    payload, _ = make_zip(np.random.default_rng(2), n_train=5)
    with zipfile.ZipFile(io.BytesIO(payload)) as zf:
        zf.extractall(tmp_path)
    ade20k.convert(tmp_path / TOP, tmp_path / "out", {"max_images": 2, "splits": ["train"]})
    assert len(Dataset(tmp_path / "out").manifest) == 2
    with pytest.raises(ValueError, match="151"):
        ade20k.to_semantic(np.array([[151]], np.uint8))
