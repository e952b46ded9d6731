"""What produced a report: package versions, model sources and weight digests, data set digests.

Read from the attributes the extraction wrote into each feature file (``weights_sha256`` is the
published checksum of a checkpoint, or the SHA-256 of the parameters actually loaded for hub and
random-init weights) and from the data sets' manifests. The report rule declares every feature
file and manifest it passes here (``rules/report.smk``), so nothing is found by globbing.
"""
from __future__ import annotations

import platform
from pathlib import Path

import numpy
import pandas

from patchlens import __version__
from patchlens.analysis.registry import all_analyses
from patchlens.config import analysis_pairs, evaluation_jobs
from patchlens.features.store import FeatureStore
from patchlens.io import sha256sum


def provenance_pairs(config: dict) -> list[tuple[str, str]]:
    """Every (model, data set) whose features the config extracts (tasks, and the analyses that
    read feature files), in config model order: the feature files the report rule declares and
    the provenance reads."""
    pairs = {(m, d) for _, m, d, _ in evaluation_jobs(config)}
    for spec in all_analyses():
        if spec.reads == "features":
            pairs |= set(analysis_pairs(config, spec.name))
    order = list(config["models"])
    return sorted(pairs, key=lambda p: (order.index(p[0]), p[1]))


def provenance_datasets(config: dict) -> list[str]:
    """The data sets (config order) whose manifest a feature file or an analysis of the images
    reads: the manifests the report rule declares."""
    names = {d for _, d in provenance_pairs(config)}
    for spec in all_analyses():
        if spec.reads == "images" and spec.name in (config.get("analyses") or {}):
            names |= set(config["analyses"][spec.name]["datasets"])
    return [d for d in config["datasets"] if d in names]


def collect_provenance(config: dict, features=(), manifests=()) -> dict:
    """Provenance of the feature files ``features`` and the data set manifests ``manifests``
    (``<data set>/manifest.csv`` paths), in config model / data set order."""
    order = {key: i for i, key in enumerate(config.get("models", {}))}
    stores = []
    for path in map(Path, features):
        with FeatureStore(path) as store:
            a = dict(store.attrs)
        stores.append((order.get(str(a.get("model", "")), len(order)), path.name, path, a))
    models = {}
    for _, _, path, a in sorted(stores, key=lambda s: s[:2]):
        models[f"{a.get('model', '')} / {path.stem}"] = {
            "source": a.get("source", ""), "weights": a.get("weights", ""),
            "sha256": str(a.get("weights_sha256", ""))[:16] + "…",
            "input": "x".join(str(int(x)) for x in a.get("input_size", []) or [])}
    by_name = {Path(m).parent.name: Path(m) for m in manifests}
    datasets = {}
    for name, entry in config.get("datasets", {}).items():
        if name in by_name:
            datasets[name] = {"source": entry.get("source", ""),
                              "manifest_sha256": sha256sum(by_name[name])[:16] + "…"}
    return {"patchlens_version": __version__, "python": platform.python_version(),
            "numpy": numpy.__version__, "pandas": pandas.__version__,
            "feature files": models, "data sets": datasets}
