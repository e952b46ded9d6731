"""Dense cosine similarities under every feature variant from shared products (issue 20, item 1),
for tasks that restrict or weigh the similarities themselves rather than take a top-k over a
bank: tracking's windowed affinities (DINO's label propagation, Caron et al. 2021;
``docs/protocols.md#tracking``). The products, their channel blocks and the normalisation
applied to the product are those of :class:`patchlens.evaluation.similarity.VariantIndex`
(see its module for why one product serves raw and every drop{m}, one more zscore).
"""
from __future__ import annotations

import numpy as np

from patchlens.evaluation.similarity import (add_product, add_product_torch, family_features,
                                             family_norms, mm32, plan_families)
from patchlens.features.variants import VariantSpec, variant_spec


def spec_groups(variants: dict) -> list:
    """``(variants sharing one product, token transform)`` pairs of ``variants`` ({name:
    :class:`VariantSpec` or ``transform(layer, x)``}): every :class:`VariantSpec` together, on
    the raw tokens (transform None); any other transform alone, as the ``raw`` variant of its
    own output (the evaluator's older contract)."""
    specs = {v: t for v, t in variants.items() if isinstance(t, VariantSpec)}
    return ([(specs, None)] if specs else []) + [
        ({v: variant_spec("raw")}, t) for v, t in variants.items() if not isinstance(t, VariantSpec)]


class VariantAffinity:
    """Dense cosine similarities of query rows against source rows under every variant of
    ``variants`` ({name: :class:`VariantSpec`}), for a task that restricts or weighs them
    itself (tracking's windowed affinities): the same shared products and normalisation as
    :class:`~patchlens.evaluation.similarity.VariantIndex` (raw and every drop{m} from one product, zscore from one more),
    without the top-k. Features are prepared once per set of rows (:meth:`prepare`: the
    family's channel blocks and per-step inverse norms), sliced (:meth:`rows`) and stacked
    (:meth:`cat`), then compared (:meth:`similarities`).

    ``device``: ``"cpu"`` with numpy (``torch_backend=False``, the default on the CPU) or any
    torch device; on CUDA the raw features stay float16 (``half``) and the products run on the
    tensor cores with float32 accumulation
    (:func:`~patchlens.evaluation.similarity.mm32`)."""

    def __init__(self, variants: dict[str, VariantSpec], channels: int, device: str = "cpu",
                 torch_backend: bool | None = None, half: bool | None = None):
        if not variants:
            raise ValueError("no variant asked for")
        self.names = list(variants)
        self.device = str(device)
        self.torch = (self.device != "cpu") if torch_backend is None else torch_backend
        self.half = (self.device.split(":")[0] == "cuda") if half is None else half
        self.families = plan_families(variants, channels)

    def prepare(self, x) -> list:
        """Per family: ([x's channel block of each step (n, |b|)], [inverse norms per step (n,)])
        of raw features x (n, C)."""
        out = []
        for fam in self.families:
            f = family_features(fam, x, self.torch, self.device, self.half)
            if self.torch:
                import torch

                blocks = [f[:, torch.as_tensor(b, device=f.device)].contiguous()
                          for b, _ in fam.steps]
            else:
                blocks = [np.ascontiguousarray(f[:, b]) for b, _ in fam.steps]
            out.append((blocks, family_norms(fam, f, self.torch)))
        return out

    @staticmethod
    def rows(prep: list, sl: slice) -> list:
        """The rows ``sl`` of a prepared set."""
        return [([b[sl] for b in blocks], [n[sl] for n in norms]) for blocks, norms in prep]

    def cat(self, preps: list) -> list:
        """Prepared sets stacked row-wise (in order)."""
        if self.torch:
            import torch

            join = torch.cat
        else:
            join = np.concatenate
        return [([join([p[f][0][j] for p in preps]) for j in range(len(preps[0][f][0]))],
                 [join([p[f][1][j] for p in preps]) for j in range(len(preps[0][f][1]))])
                for f in range(len(self.families))]

    def similarities(self, q: list, s: list):
        """Yield ``(names, sims)`` per product step: the cosine similarities (nq, ns) float32 of
        the prepared queries ``q`` against the prepared sources ``s`` under the variants
        ``names`` (a new array each time; the caller may change it)."""
        for fam, (qb, qn), (sb, sn) in zip(self.families, q, s):
            g = None
            for (_, names), a, b, iq, is_ in zip(fam.steps, qb, sb, qn, sn):
                if self.torch:
                    g = mm32(a, b.T, split=self.half) if g is None else \
                        add_product_torch(g, a, b.T, split=self.half)
                elif g is None:
                    g = np.matmul(a, b.T)
                else:
                    add_product(g, a, b.T)
                yield names, g * iq[:, None] * is_[None, :]
