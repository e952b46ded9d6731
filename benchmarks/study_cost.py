"""Estimate what a study costs before running it: feature-extraction compute and feature disk.

Compute = sum over (model, data set) of images x forward FLOPs, divided by a throughput measured on
this machine (``benchmarks/extraction_overhead.py`` prints img/s for ViT-S/16; times its 9.2
GFLOP (4.6 GMAC) per 224px image gives GFLOP/s). FLOPs per image are counted analytically
for a ViT (patch
embedding, then per block 24*N*D^2 for qkv/proj/MLP and 4*N^2*D for attention; multiply-adds count
as 2 FLOPs). Disk = images x layers x patches x channels x 2 bytes (float16 tokens), the size of
``results/features``. Image counts come from each data set's ``params`` (max_images...) or the
official split sizes below.

    python benchmarks/study_cost.py --config config.yaml --gflops 136
"""
import argparse

from patchlens.config import load_config
from patchlens.models.registry import input_size, resolve_model

# images a data set feeds to extraction when no max_* parameter limits it (official splits)
OFFICIAL_IMAGES = {
    "voc2012": 1464 + 1449,       # VOC 2012 segmentation train + val
    "davis2017": 1999,            # DAVIS-2017 val 480p: 30 sequences
    "spair71k": 1800,             # SPair-71k: 1,800 images shared by its 70,958 pairs
    "imagenette": 9469 + 3925,    # Imagenette 320 train + val
}


def n_images(entry: dict) -> int:
    p = entry.get("params", {})
    if entry["source"] == "scenes":
        from patchlens.data.scenes import resolve_params

        r = resolve_params(p)
        return (r["n_train"] + r["n_val"] + r["n_gallery"] + r["n_identities"]
                + r["n_videos"] * r["n_frames"] + 2 * r["n_pairs"])
    n = OFFICIAL_IMAGES[entry["source"]]
    if p.get("max_per_class"):
        n = min(n, p["max_per_class"] * 10 * len(p.get("splits", ["train", "val"])))
    if p.get("max_images"):
        n = min(n, p["max_images"] * len(p.get("splits", ["train", "val"])))
    if p.get("max_pairs"):
        n = min(n, 2 * p["max_pairs"])
    return n


def vit_gflops(depth: int, dim: int, tokens: int, patch: int) -> float:
    embed = 2 * tokens * (3 * patch * patch) * dim
    blocks = depth * (2 * 12 * tokens * dim ** 2 + 2 * 2 * tokens ** 2 * dim)
    return (embed + blocks) / 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="config.yaml")
    ap.add_argument("--gflops", type=float, required=True,
                    help="measured forward throughput of this machine in GFLOP/s")
    args = ap.parse_args()
    import timm
    import torch

    config = load_config(args.config)
    total_s, total_gb = 0.0, 0.0
    print(f"{'model':22s} {'dataset':11s} {'images':>7s} {'GFLOP/img':>9s} {'hours':>7s} {'GB':>7s}")
    for key, entry in config["models"].items():
        spec = resolve_model(key, entry)
        for ds in entry.get("datasets") or config["datasets"]:
            d = config["datasets"][ds]
            h, w = input_size(d["img_size"], spec["patch_size"])
            tokens = (h // spec["patch_size"]) * (w // spec["patch_size"])
            if spec["kind"] == "timm":
                with torch.device("meta"):
                    m = timm.create_model(spec["timm"], pretrained=False, **spec["kwargs"])
                dim, depth = m.embed_dim, len(m.blocks)
                layers = depth if entry.get("layers", "all") == "all" else len(entry["layers"])
                g = vit_gflops(depth, dim, tokens + spec["num_prefix_tokens"], spec["patch_size"])
            else:
                dim, layers, g = 3 * spec["patch_size"] ** 2, 1, 0.0
            n = n_images(d)
            secs = n * g / args.gflops
            gb = n * layers * tokens * dim * 2 / 1e9
            total_s, total_gb = total_s + secs, total_gb + gb
            print(f"{key:22s} {ds:11s} {n:7d} {g:9.1f} {secs / 3600:7.2f} {gb:7.1f}")
    print(f"total: {total_s / 3600:.1f} h of extraction at {args.gflops:g} GFLOP/s, "
          f"{total_gb / 1000:.2f} TB of float16 features")


if __name__ == "__main__":
    main()
