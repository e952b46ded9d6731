"""Per-layer patch features of a data set, one forward pass for all layers, into one HDF5 file.

Every image is resized (not cropped) to the model input size, so the patch grid covers the whole
image and evaluators can upsample grid maps back onto the original pixels. For timm models the
tokens of every selected block come from timm's ``forward_intermediates`` (one pass, block outputs
before the final norm, prefix tokens split off: class token kept, register tokens dropped). The
baselines need no forward pass: ``pixels`` = the normalised pixels of each patch flattened,
``oracle`` = features built from the ground truth (:mod:`patchlens.models.oracle`).

Final norm (``docs/protocols.md#final_norm``): the published evaluations of DINO
(``get_intermediate_layers`` in facebookresearch/dino) read the *normalised* output of the last
block. Whenever the selected layers include the last block (``n_blocks - 1``) and the model has a
final norm (``model.norm`` is not ``Identity``), the file holds one more entry on the layer axis,
``layer = n_blocks``: the model's final norm applied to the last block's output, i.e. what timm's
``forward_features`` returns, prefix tokens split off as for the other layers. The file attribute
``norm_layer`` names it (``n_blocks``, or -1 when there is none) and ``final_norm`` is 1 when the
entry exists. Models without a final norm (``Identity``, e.g. timm configs with ``fc_norm``) and
the baselines have no such entry.

LayerNorm parameters (``docs/protocols.md#cka``): for every block layer ``l`` the file also holds
the affine parameters of the LayerNorm that reads that block's output -- ``blocks[l + 1].norm1``
for ``l < n_blocks - 1`` and the final norm for the last block -- as variables
``ln_weight``/``ln_bias`` (layer, channel) with attribute ``ln_eps``, so that the
LayerNorm-normalised tokens of Teaching Matters' CKA setting can be computed from the stored
block outputs without a second forward pass (:func:`layer_norm_params`; zeros, and -1 in the
attribute ``ln_layers``, where a layer has no such LayerNorm, e.g. the norm entry itself).
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image

from patchlens.data.dataset import Dataset
from patchlens.features.store import FeatureWriter
from patchlens.models.layers import select_layers
from patchlens.models.resolve import input_geometry
from patchlens.progress import progress as progress_meter


def load_batch(dataset: Dataset, images: list[str], size: tuple[int, int], mean, std) -> np.ndarray:
    """Images resized to ``size`` (H, W) bicubically and normalised: float32 (b, 3, H, W)."""
    def one(image):
        im = Image.fromarray(dataset.load_image(image)).resize(size[::-1], Image.BICUBIC)
        return np.asarray(im, np.float32) / 255.0

    with ThreadPoolExecutor(max_workers=4) as pool:
        x = np.stack(list(pool.map(one, images)))
    x = (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2))


def pixel_tokens(x: np.ndarray, patch: int) -> np.ndarray:
    """(b, 3, H, W) -> (b, 1, h*w, patch*patch*3): each patch's normalised pixels, flattened."""
    b, c, H, W = x.shape
    h, w = H // patch, W // patch
    t = x.reshape(b, c, h, patch, w, patch).transpose(0, 2, 4, 3, 5, 1)
    return t.reshape(b, 1, h * w, patch * patch * c)


def has_final_norm(model) -> bool:
    """True when the timm model applies a final norm to its tokens (``model.norm`` not Identity)."""
    import torch

    norm = getattr(model, "norm", None)
    return norm is not None and not isinstance(norm, torch.nn.Identity)


def norm_entry(layers: list[int], n_blocks: int, final_norm: bool) -> list[int]:
    """The layer axis of a timm feature file: the selected blocks, plus ``n_blocks`` (the final
    norm output) when the last block is selected and the model has a final norm."""
    return list(layers) + ([n_blocks] if final_norm and n_blocks - 1 in layers else [])


def layer_norm_params(model, layers: list[int], n_blocks: int):
    """Per layer entry: weight (L, C), bias (L, C), eps and which entries have one (bool (L,)):
    the LayerNorm that reads block ``l``'s output (``blocks[l+1].norm1``; the final norm for the
    last block). Entries without a plain LayerNorm there get zeros and ``False``."""
    import torch

    C = model.embed_dim
    w, b = np.zeros((len(layers), C), np.float32), np.zeros((len(layers), C), np.float32)
    ok, eps = np.zeros(len(layers), bool), 1e-6
    for i, l in enumerate(layers):
        ln = (model.blocks[l + 1].norm1 if l < n_blocks - 1 else
              getattr(model, "norm", None) if l == n_blocks - 1 else None)
        if isinstance(ln, torch.nn.LayerNorm) and ln.elementwise_affine:
            w[i] = ln.weight.detach().float().cpu().numpy()
            b[i] = (ln.bias.detach().float().cpu().numpy() if ln.bias is not None else 0.0)
            ok[i], eps = True, float(ln.eps)
    return w, b, eps, ok


def _batches(items: list, size: int):
    for i in range(0, len(items), size):
        yield items[i:i + size]


def image_batches(dataset: Dataset, images: list[str], size: tuple[int, int], mean, std,
                  batch_size: int):
    """The normalised NCHW float32 batches of ``images`` in order, ``batch_size`` at a time."""
    for chunk in _batches(images, batch_size):
        yield load_batch(dataset, chunk, size, mean, std)


def build_model(spec: dict, weights_dir, size: tuple[int, int], dev):
    """The timm/ONNX backbone of a resolved model entry on ``dev``, as extraction runs it."""
    from patchlens.models.resolve import build_timm

    return build_timm(spec, weights_dir, size).to(dev)


def extract(spec: dict, dataset: Dataset, out_path, img_size, batch_size: int = 16,
            layers="all", device: str = "cpu", weights_dir="weights", progress: bool = True,
            attrs: dict | None = None) -> None:
    """Write ``out_path`` with the tokens of every selected layer for every manifest image."""
    images = dataset.images
    size, grid = input_geometry(img_size, spec["patch_size"])
    meta = {"model": spec["key"], "kind": spec["kind"], "source": spec.get("timm", spec["kind"]),
            "weights": str(spec.get("weights") or ("timm-hub" if spec.get("pretrained") else
                                                   "random-init")),
            "weights_sha256": str(spec.get("sha256") or ""), "patch_size": spec["patch_size"],
            "input_size": list(size), "n_blocks": spec["n_blocks"], "mean": list(spec["mean"]),
            "std": list(spec["std"]), "dataset": str(dataset.root.name), "final_norm": 0,
            "norm_layer": -1, **(attrs or {})}
    splits = dataset.manifest.loc[images, "split"].astype(str).tolist()  # rows of stats_*
    # a log line at least every minute (done/total, rate, ETA), a bar on a terminal
    bar = progress_meter(len(images), f"features {spec['key']}/{dataset.root.name}",
                         bar=None if progress else False, unit="img")

    if spec["kind"] == "oracle":
        from patchlens.models.oracle import oracle_channels, oracle_tokens

        with FeatureWriter(out_path, images, [0], grid, oracle_channels(dataset), False,
                           meta, groups=splits) as w:
            for chunk in _batches(images, batch_size):
                w.write(oracle_tokens(dataset, chunk, grid))
                bar.update(len(chunk))
        bar.close()
        return

    if spec["kind"] == "pixels":
        with FeatureWriter(out_path, images, [0], grid, spec["channels"], False, meta,
                           groups=splits) as w:
            for chunk in _batches(images, batch_size):
                x = load_batch(dataset, chunk, size, spec["mean"], spec["std"])
                w.write(pixel_tokens(x, spec["patch_size"]))
                bar.update(len(chunk))
        bar.close()
        return

    import torch

    dev = torch.device(device)  # the caller's choice (patchlens.device.device(gpu))
    model = build_model(spec, weights_dir, size, dev)
    idx = select_layers(layers, spec["n_blocks"], f"models.{spec['key']}.layers")
    final = has_final_norm(model)
    entries = norm_entry(idx, spec["n_blocks"], final)
    norm_layer = spec["n_blocks"] if len(entries) > len(idx) else -1
    channels = model.embed_dim
    meta.update(getattr(model, "provenance", {}))  # e.g. ONNX source, file and param SHA-256
    meta["weights_sha256"] = meta["weights_sha256"] or _param_digest(model)
    meta["final_norm"], meta["norm_layer"] = int(norm_layer >= 0), norm_layer
    ln_w, ln_b, ln_eps, ln_ok = layer_norm_params(model, entries, spec["n_blocks"])
    meta["ln_eps"], meta["ln_layers"] = ln_eps, [l if o else -1 for l, o in zip(entries, ln_ok)]
    extra = {"ln_weight": ln_w, "ln_bias": ln_b}
    load = lambda chunk: load_batch(dataset, chunk, size, spec["mean"], spec["std"])  # noqa: E731
    with FeatureWriter(out_path, images, entries, grid, channels, spec["has_cls"], meta,
                       extra, groups=splits) as w, \
            torch.inference_mode(), ThreadPoolExecutor(max_workers=1) as reader, \
            ThreadPoolExecutor(max_workers=1) as writer:
        chunks = list(_batches(images, batch_size))
        pending, written = (reader.submit(load, chunks[0]) if chunks else None), None
        for i, chunk in enumerate(chunks):
            x = torch.from_numpy(pending.result())
            if i + 1 < len(chunks):  # decode the next batch while this one runs
                pending = reader.submit(load, chunks[i + 1])
            tok, cls, sums = forward_batch(model, x.to(dev), idx, spec["has_cls"],
                                           norm=norm_layer >= 0)
            if written is not None:  # one write in flight at a time, in batch order
                written.result()
            written = writer.submit(w.write, tok, cls, sums)
            bar.update(len(chunk))
        if written is not None:
            written.result()
    bar.close()


def forward_layers(model, x, layers: list[int], has_cls: bool, norm: bool = False):
    """One forward pass -> tokens (b, L, P, C) float16 numpy and cls (b, L, C) or None.

    ``norm``: append one more entry, the model's final norm applied to the output of the last
    entry of ``layers`` (the last block; prefix and patch tokens normalised together, as timm's
    ``forward_features`` does, then split)."""
    tok, cls, _ = forward_batch(model, x, layers, has_cls, norm)
    return tok, cls


def forward_batch(model, x, layers: list[int], has_cls: bool, norm: bool = False,
                  sums: bool | None = None):
    """:func:`forward_layers` plus, when ``sums`` (default: ``x`` is on a GPU), the per-image
    float64 sums of the stored float16 tokens' channels and of their squares, each (b, L, C)
    (what :func:`patchlens.features.moments.row_sums` computes with numpy), computed on the
    device so that the host only copies the tokens; else None (on the CPU numpy is 5x faster
    than torch's float16 -> float64 conversion, and the writer thread computes them)."""
    import torch

    sums = x.device.type != "cpu" if sums is None else sums

    out = model.forward_intermediates(x, indices=layers, return_prefix_tokens=True, norm=False,
                                      output_fmt="NLC", intermediates_only=True)
    if isinstance(out[0], torch.Tensor):  # no prefix tokens at all: bare tensors, not pairs
        out = [(t, None) for t in out]
    out = list(out)
    if norm:
        t, p = out[-1]
        full = model.norm(t if p is None else torch.cat([p, t], dim=1))
        k = 0 if p is None else p.shape[1]
        out.append((full[:, k:], None if p is None else full[:, :k]))
    b, P, C = out[0][0].shape
    tok = np.empty((b, len(out), P, C), np.float16)  # one float16 copy, no float32 stack
    cls = np.empty((b, len(out), C), np.float16) if has_cls else None
    s, q = (np.empty((b, len(out), C)), np.empty((b, len(out), C))) if sums else (None, None)
    for li, (t, p) in enumerate(out):
        h = t.half()
        tok[:, li] = h.cpu().numpy()
        if sums:
            d = h.double()
            s[:, li] = d.sum(1).cpu().numpy()
            q[:, li] = d.square().sum(1).cpu().numpy()
        if has_cls:
            cls[:, li] = p[:, 0].half().cpu().numpy()
    return tok, cls, ((s, q) if sums else None)


def _param_digest(model) -> str:
    """SHA-256 of the parameters actually loaded (provenance for hub and random-init weights)."""
    import hashlib

    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()
