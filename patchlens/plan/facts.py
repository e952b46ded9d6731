"""Model facts the cost model needs, read from :func:`patchlens.models.resolve.resolve_model`
(one home: the same facts the extractor uses), and the feature bytes (the ViT's forward FLOPs:
:mod:`patchlens.models.flops`)."""
from __future__ import annotations

from patchlens.models.flops import vit_flop, vit_mparams  # noqa: F401 - the plan's names
from patchlens.models.resolve import input_geometry, resolve_model

ORACLE_CHANNELS = 64  # the oracle's width depends on the data set (oracle_channels): a few dozen


def model_facts(entry: dict) -> dict:
    """Width (``dim``), depth, patch size, MLP width, prefix tokens, final norm and the number of
    extracted layers (``n_layers``) of a ``models.<key>`` entry."""
    spec = resolve_model("plan", entry)
    if spec["kind"] != "timm":
        dim = spec.get("channels") or ORACLE_CHANNELS
        return {"patch_size": spec["patch_size"], "dim": dim, "depth": 0, "mlp_hidden": 0,
                "prefix": 0, "has_cls": False, "final_norm": False, "n_layers": 1}
    f = {"patch_size": spec["patch_size"], "dim": spec["channels"], "depth": spec["n_blocks"],
         "mlp_hidden": spec["mlp_hidden"], "prefix": spec["num_prefix_tokens"],
         "has_cls": spec["has_cls"], "final_norm": spec["final_norm"]}
    layers = entry.get("layers", "all")
    f["n_layers"] = (f["depth"] + int(f["final_norm"])) if layers == "all" else len(layers)
    return f


def grid_of(img_size, patch: int) -> tuple[int, int]:
    """The patch grid (h, w) of a data set's ``img_size`` at ``patch``."""
    return input_geometry(img_size, patch)[1]


def feature_bytes(f: dict, n_images: int, grid) -> float:
    """Bytes of a feature file: images x layers x (patches + class token) x channels, float16."""
    P = grid[0] * grid[1]
    return n_images * f["n_layers"] * (P + int(f["has_cls"])) * f["dim"] * 2.0
