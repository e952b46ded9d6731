"""SPair-71k converter on a tiny tree in the official format; spair71k recipe trust on first use."""
from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from patchlens.data import recipes
from patchlens.data.dataset import Dataset
from patchlens.data.spair import SPAIR_CATEGORIES, convert
from patchlens.errors import DataError

SIZES = {("cat", "2008_000001"): (20, 30), ("cat", "2008_000002"): (24, 18),
         ("dog", "2009_000001"): (16, 16), ("dog", "2009_000002"): (30, 20)}

PAIRS = {
    "test": [
        dict(pair_id=1, src_imname="2008_000001.jpg", trg_imname="2008_000002.jpg",
             category="cat", src_kps=[[1, 2], [10, 12], [20, 5]],
             trg_kps=[[3, 4], [11, 15], [16, 2]], src_bndbox=[0, 0, 25, 18],
             trg_bndbox=[1, 2, 17, 22], kps_ids=["0", "4", "7"]),
        dict(pair_id=2, src_imname="2009_000001.jpg", trg_imname="2009_000002.jpg",
             category="dog", src_kps=[[5, 5]], trg_kps=[[9, 9]], src_bndbox=[0, 0, 15, 15],
             trg_bndbox=[2, 3, 18, 27], kps_ids=["2"]),
        dict(pair_id=3, src_imname="2008_000002.jpg", trg_imname="2008_000001.jpg",
             category="cat", src_kps=[[3, 4]], trg_kps=[[1, 2]], src_bndbox=[1, 2, 17, 22],
             trg_bndbox=[0, 0, 25, 18], kps_ids=["0"]),
    ],
    "trn": [
        dict(pair_id=4, src_imname="2009_000002.jpg", trg_imname="2009_000001.jpg",
             category="dog", src_kps=[[9, 9]], trg_kps=[[5, 5]], src_bndbox=[2, 3, 18, 27],
             trg_bndbox=[0, 0, 15, 15], kps_ids=["2"]),
    ],
}


def write_spair_tree(base: Path) -> Path:
    root = base / "SPair-71k"
    rng = np.random.default_rng(0)
    for (cat, name), (h, w) in SIZES.items():
        path = root / "JPEGImages" / cat / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)
    for split, pairs in PAIRS.items():
        d = root / "PairAnnotation" / split
        d.mkdir(parents=True)
        for p in pairs:
            stem = (f"{p['pair_id']:06d}-{p['src_imname'][:-4]}-{p['trg_imname'][:-4]}"
                    f":{p['category']}")
            (d / f"{stem}.json").write_text(json.dumps(p))
    return root


def test_convert_through_dataset_reader(tmp_path):
    root = write_spair_tree(tmp_path / "src")
    convert(root, tmp_path / "out")
    ds = Dataset(tmp_path / "out")
    assert ds.classes["name"].tolist() == list(SPAIR_CATEGORIES) and len(SPAIR_CATEGORIES) == 18
    assert sorted(ds.split("pair")) == sorted(f"{c}-{n}" for c, n in SIZES)
    for (cat, name), (h, w) in SIZES.items():
        image = f"{cat}-{name}"
        assert ds.load_image(image).shape == (h, w, 3)
        assert ds.labels(image) == [SPAIR_CATEGORIES.index(cat)]
    kp = ds.keypoints
    assert len(kp) == 3 + 1 + 1
    first = kp[kp["pair"] == "000001"].sort_values("kp")
    assert first["kp"].tolist() == [0, 4, 7]
    assert (first["src_image"] == "cat-2008_000001").all()
    assert (first["trg_image"] == "cat-2008_000002").all()
    np.testing.assert_array_equal(first[["src_x", "src_y"]].values, PAIRS["test"][0]["src_kps"])
    np.testing.assert_array_equal(first[["trg_x", "trg_y"]].values, PAIRS["test"][0]["trg_kps"])
    # the target box is kept as published (PCK threshold = alpha * max(x1 - x0, y1 - y0))
    np.testing.assert_array_equal(first[["trg_x0", "trg_y0", "trg_x1", "trg_y1"]].values,
                                  [[1, 2, 17, 22]] * 3)
    assert ds.has("keypoints") and not ds.has("semantic")


def test_split_categories_and_max_pairs(tmp_path):
    root = write_spair_tree(tmp_path / "src")
    convert(root, tmp_path / "trn", {"split": "trn"})
    assert Dataset(tmp_path / "trn").keypoints["pair"].tolist() == ["000004"]
    convert(root, tmp_path / "cat", {"categories": ["cat"]})
    assert sorted(Dataset(tmp_path / "cat").keypoints["pair"].unique()) == ["000001", "000003"]
    runs = []
    for k in range(2):
        convert(root, tmp_path / f"m{k}", {"max_pairs": 2, "seed": 3})
        runs.append(sorted(Dataset(tmp_path / f"m{k}").keypoints["pair"].unique()))
    assert runs[0] == runs[1] and len(runs[0]) == 2


def test_pair_with_missing_image_names_the_file(tmp_path):
    root = write_spair_tree(tmp_path / "src")
    (root / "JPEGImages" / "dog" / "2009_000002.jpg").unlink()
    with pytest.raises(DataError, match=r"dog/2009_000002.jpg: missing, referenced by"):
        convert(root, tmp_path / "out")


def test_malformed_annotation_is_a_data_error(tmp_path):
    root = write_spair_tree(tmp_path / "src")
    path = next((root / "PairAnnotation" / "trn").glob("*.json"))
    ann = json.loads(path.read_text())
    del ann["trg_bndbox"]
    path.write_text(json.dumps(ann))
    with pytest.raises(DataError, match="missing field"):
        convert(root, tmp_path / "out", {"split": "trn"})


def test_prepare_records_the_checksum_on_first_use(tmp_path):
    write_spair_tree(tmp_path / "src")
    have = tmp_path / "have" / "SPair-71k.tar.gz"
    have.parent.mkdir()
    with tarfile.open(have, "w:gz") as tar:
        tar.add(tmp_path / "src" / "SPair-71k", arcname="SPair-71k")
    assert recipes.RECIPES["spair71k"].archive.sha256 is None  # none is published
    data_dir = tmp_path / "data"
    recipes.prepare("spair71k", data_dir, tmp_path / "out",
                    {"url": str(have), "progress": False, "max_pairs": 1})
    ledger = json.loads((data_dir / "checksums.json").read_text())
    assert ledger == {"SPair-71k.tar.gz": hashlib.sha256(have.read_bytes()).hexdigest()}
    assert len(Dataset(tmp_path / "out").keypoints["pair"].unique()) == 1
    # later runs check against the recorded value: a different archive is refused
    shutil.rmtree(data_dir / "SPair-71k")
    (data_dir / "SPair-71k.tar.gz").write_bytes(b"another file")
    with pytest.raises(DataError, match="fails its checksum.*recorded in .*checksums.json"):
        recipes.prepare("spair71k", data_dir, tmp_path / "out2", {"progress": False})
