"""Rule prepare_dataset: generate `scenes` or download + convert an official data set."""
from pathlib import Path

from patchlens.workflow import run


def main(snakemake):
    entry = snakemake.params.entry
    out_dir = Path(snakemake.output.manifest).parent
    if entry["source"] == "scenes":
        from patchlens.data.scenes import generate_scenes

        generate_scenes(out_dir, entry["params"])
    else:
        from patchlens.data.recipes import prepare

        prepare(entry["source"], Path(snakemake.config["data_dir"]), out_dir, entry["params"])


run(snakemake, main)  # noqa: F821
