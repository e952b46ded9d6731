"""The attention statistics' image sample: seeded, stratified over the primary label."""
from collections import Counter

import pytest

from patchlens.analysis.attention_sample import stratified_sample
from patchlens.errors import ConfigError

IMAGES = [f"im{i:03d}" for i in range(40)]
# manifest order groups the classes (as Imagenette's does): the first 30 are class 1
LABELS = ["1"] * 30 + ["2"] * 10


def test_proportional_to_the_labels_not_the_manifest_order():
    got = stratified_sample(IMAGES, LABELS, 8, seed=0)
    by_label = Counter(LABELS[IMAGES.index(i)] for i in got)
    assert by_label == {"1": 6, "2": 2}           # 8 * 30/40 and 8 * 10/40
    assert got != IMAGES[:8]                      # not the first rows
    assert len(set(got)) == 8 and got == sorted(got, key=IMAGES.index)  # manifest order


def test_largest_remainder_and_ties_to_the_larger_stratum():
    labels = ["a"] * 5 + ["b"] * 3 + ["c"] * 2
    images = [f"x{i}" for i in range(10)]
    got = stratified_sample(images, labels, 5, seed=3)
    # exact shares 2.5, 1.5, 1.0: floors 2, 1, 1; the spare image goes to the larger "a"
    assert Counter(labels[images.index(i)] for i in got) == {"a": 3, "b": 1, "c": 1}


def test_seeded_and_unlabelled():
    a = stratified_sample(IMAGES, LABELS, 8, seed=1)
    assert a == stratified_sample(IMAGES, LABELS, 8, seed=1)
    assert a != stratified_sample(IMAGES, LABELS, 8, seed=2)
    flat = stratified_sample(IMAGES, [""] * 40, 5, seed=0)
    assert len(flat) == 5 and set(flat) <= set(IMAGES)
    assert stratified_sample(IMAGES, LABELS, None, seed=0) == IMAGES
    assert stratified_sample(IMAGES, LABELS, 64, seed=0) == IMAGES


def test_bad_count():
    with pytest.raises(ConfigError, match="max_images"):
        stratified_sample(IMAGES, LABELS, 0, seed=0)
    with pytest.raises(ValueError, match="labels"):
        stratified_sample(IMAGES, LABELS[:3], 4, seed=0)
