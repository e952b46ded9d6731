"""The image sample of the attention statistics: seeded, stratified over the primary label
(``analyses.attention.params``: ``max_images``, ``seed``; ``docs/protocols.md``, "Attention")."""
from __future__ import annotations

import numpy as np

from patchlens.errors import ConfigError


def stratified_sample(images, strata, n: int | None, seed: int) -> list[str]:
    """A seeded random sample of ``n`` of ``images``, stratified over ``strata`` (one label per
    image, e.g. its primary class; ``""`` or None where the data set has no labels).

    Each stratum gets ``n * size / total`` images, rounded down, and the remaining images go to
    the strata with the largest fractional parts (ties: the larger stratum, then the label), so
    the sample keeps the label distribution of the split (Teaching Matters, Walmer et al. 2023,
    average attention maps over a class-balanced sample; ``docs/protocols.md``, "Attention").
    Within a stratum images are drawn without replacement by ``numpy.random.default_rng(seed)``.
    Returned in their input (manifest) order; all images when ``n`` is None or >= the total.
    """
    images = [str(i) for i in images]
    strata = ["" if s is None or (isinstance(s, float) and np.isnan(s)) else str(s)
              for s in strata]
    if len(strata) != len(images):
        raise ValueError(f"stratified_sample: {len(images)} images but {len(strata)} labels")
    if n is None or n >= len(images):
        return images
    if n < 1:
        raise ConfigError(f"analyses.attention.params.max_images = {n!r}: expected a positive "
                          "integer")
    labels, inverse, sizes = np.unique(np.asarray(strata, dtype=object).astype(str),
                                       return_inverse=True, return_counts=True)
    exact = n * sizes / sizes.sum()
    quota = np.floor(exact).astype(int)
    rest = n - int(quota.sum())
    order = sorted(range(len(labels)), key=lambda i: (-(exact[i] - quota[i]), -sizes[i],
                                                      labels[i]))
    for i in order[:rest]:
        quota[i] += 1
    rng = np.random.default_rng(int(seed))
    keep = []
    for i in range(len(labels)):
        members = np.flatnonzero(inverse == i)
        keep.append(rng.choice(members, size=quota[i], replace=False))
    keep = np.sort(np.concatenate(keep))
    return [images[i] for i in keep]
