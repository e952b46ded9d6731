"""One layer of a feature file held in memory: what :meth:`FeatureStore.layer_view
<patchlens.features.store.FeatureStore.layer_view>` returns, so that a job reads each layer once
and scores every variant from it (issue 11, :mod:`patchlens.evaluate`)."""
from __future__ import annotations

import numpy as np

from patchlens.errors import DataError


def row_index(index: dict[str, int], images, path) -> np.ndarray:
    """The rows (int64) of ``images`` in a feature file whose image -> row map is ``index``;
    DataError naming ``path`` for an image the file lacks."""
    try:
        return np.array([index[i] for i in images], dtype=np.int64)
    except KeyError as exc:
        raise DataError(f"{path}: image {exc.args[0]!r} not in the feature file; "
                        "the data set changed since extraction, rerun it") from None


class LayerView:
    """One layer of a feature file held in memory (float16, as stored), with the read interface
    of :class:`~patchlens.features.store.FeatureStore`: ``tokens(layer, images)`` float32
    (n, h, w, C), ``cls``, ``grid``, ``layers``, ``images``, ``attrs``, ``channels``,
    ``has_cls``, ``path``.

    ``store`` gives the file's description (its public fields), ``tokens`` (n, P, C) and ``cls``
    (n, C) or None the layer's arrays as read. Asking for another layer is a programming error
    (RuntimeError): the view exists so that a layer is read once. ``bytes_read`` is what was read
    from the file for it."""

    def __init__(self, store, layer: int, tokens: np.ndarray, cls: np.ndarray | None):
        self.path, self.images, self.attrs = store.path, store.images, store.attrs
        self.grid, self.channels, self.has_cls = store.grid, store.channels, store.has_cls
        self.layers = list(store.layers)
        self.layer = int(layer)
        self._tokens, self._cls = tokens, cls
        self.bytes_read = tokens.nbytes + (cls.nbytes if cls is not None else 0)
        self._index = {im: i for i, im in enumerate(self.images)}

    def _rows(self, layer, images):
        if int(layer) != self.layer:
            raise RuntimeError(f"{self.path}: view of layer {self.layer} asked for layer {layer}")
        return slice(None) if images is None else row_index(self._index, images, self.path)

    def tokens(self, layer: int, images: list[str] | None = None) -> np.ndarray:
        x = self._tokens[self._rows(layer, images)].astype(np.float32)
        return x.reshape(x.shape[0], *self.grid, self.channels)

    def cls(self, layer: int, images: list[str] | None = None) -> np.ndarray:
        if not self.has_cls:
            raise DataError(f"{self.path}: model {self.attrs.get('model')!r} has no class token")
        return self._cls[self._rows(layer, images)].astype(np.float32)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        self._tokens = self._cls = None
