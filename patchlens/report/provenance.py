"""What produced a report: package versions, model sources and weight digests, data set digests.

Read from the attributes the extraction wrote into each feature file (``weights_sha256`` is the
published checksum of a checkpoint, or the SHA-256 of the parameters actually loaded for hub and
random-init weights) and from the data sets' manifests.
"""
from __future__ import annotations

import platform
from pathlib import Path

import numpy
import pandas

from patchlens import __version__
from patchlens.features.store import FeatureStore
from patchlens.io import sha256sum


def collect_provenance(config: dict, results_dir="results") -> dict:
    results_dir = Path(results_dir)
    models = {}
    for key in config.get("models", {}):
        for path in sorted((results_dir / "features" / key).glob("*.h5")):
            with FeatureStore(path) as store:
                a = store.attrs
            models[f"{key} / {path.stem}"] = {
                "source": a.get("source", ""), "weights": a.get("weights", ""),
                "sha256": str(a.get("weights_sha256", ""))[:16] + "…",
                "input": "x".join(str(int(x)) for x in a.get("input_size", []) or [])}
    datasets = {}
    for name, entry in config.get("datasets", {}).items():
        manifest = results_dir / "data" / name / "manifest.csv"
        if manifest.exists():
            datasets[name] = {"source": entry.get("source", ""),
                              "manifest_sha256": sha256sum(manifest)[:16] + "…"}
    return {"patchlens_version": __version__, "python": platform.python_version(),
            "numpy": numpy.__version__, "pandas": pandas.__version__,
            "feature files": models, "data sets": datasets}
