"""The report's provenance reads exactly the feature files and manifests it is given (the
report rule declares them), never what else lies in the results directory."""
import hashlib

import numpy as np
import pytest

from patchlens.data.dataset import Dataset
from patchlens.errors import DataError
from patchlens.features.store import FeatureWriter
from patchlens.report.provenance import collect_provenance


def _features(path, model, sha):
    attrs = {"model": model, "source": f"timm:{model}", "weights": "w.pth",
             "weights_sha256": sha, "input_size": [32, 48]}
    with FeatureWriter(path, ["a", "b"], [0], (1, 1), 2, False, attrs) as w:
        w.write(np.zeros((2, 1, 1, 2), np.float32))
    return path


def test_reads_declared_files_only(tmp_path):
    (tmp_path / "features" / "m2").mkdir(parents=True)
    (tmp_path / "features" / "m1").mkdir(parents=True)
    f2 = _features(tmp_path / "features" / "m2" / "scenes.h5", "m2", "b" * 64)
    f1 = _features(tmp_path / "features" / "m1" / "scenes.h5", "m1", "a" * 64)
    _features(tmp_path / "features" / "m1" / "stale.h5", "m1", "c" * 64)  # not declared
    man = tmp_path / "data" / "scenes" / "manifest.csv"
    man.parent.mkdir(parents=True)
    man.write_text("image,split\nx,train\n")
    (tmp_path / "data" / "photos").mkdir()
    (tmp_path / "data" / "photos" / "manifest.csv").write_text("undeclared\n")
    config = {"models": {"m1": {}, "m2": {}},
              "datasets": {"photos": {"source": "skimage_photos"}, "scenes": {"source": "scenes"}}}
    prov = collect_provenance(config, features=[str(f2), str(f1)], manifests=[str(man)])
    # config model order, whatever order the rule lists them in; the stale file is not read
    assert list(prov["feature files"]) == ["m1 / scenes", "m2 / scenes"]
    assert prov["feature files"]["m1 / scenes"] == {
        "source": "timm:m1", "weights": "w.pth", "sha256": "a" * 16 + "…", "input": "32x48"}
    digest = hashlib.sha256(man.read_bytes()).hexdigest()
    assert prov["data sets"] == {"scenes": {"source": "scenes",
                                            "manifest_sha256": digest[:16] + "…"}}


def test_dataset_from_manifest(tmp_path):
    with pytest.raises(DataError, match="manifest.csv"):
        Dataset.from_manifest(tmp_path / "classes.csv")
    with pytest.raises(DataError, match="not found"):
        Dataset.from_manifest(tmp_path / "nowhere" / "manifest.csv")
