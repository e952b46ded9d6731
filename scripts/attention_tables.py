"""Rule attention_tables: attention files -> tidy statistics (with the average attention offset),
offset local heads, centred maps."""
import pandas as pd

from patchlens.analysis.attention_stats import attention_table, centred_table, read_attention
from patchlens.analysis.offset_heads import find_offset_heads, offset_table
from patchlens.io import write_csv, write_parquet
from patchlens.workflow import run


def main(snakemake):
    offset_params = snakemake.params.settings["offset_heads"]
    stats, heads, maps = [], [], []
    for path in snakemake.input:  # results/attention/{model}/{dataset}.h5
        ds = read_attention(path)
        model, dataset = ds.attrs["model"], ds.attrs["dataset"]
        stats.append(attention_table(ds, model, dataset))
        stats.append(offset_table(ds, model, dataset))   # Walmer et al.'s average offset
        found = find_offset_heads(ds["centred"], offset_params)
        heads.append(found.assign(model=model, dataset=dataset))
        maps.append(centred_table(ds, model, dataset))
    write_parquet(pd.concat(stats, ignore_index=True), snakemake.output.attention)
    write_csv(pd.concat(heads, ignore_index=True), snakemake.output.offset_heads)
    write_parquet(pd.concat(maps, ignore_index=True), snakemake.output.offset_maps)


run(snakemake, main)  # noqa: F821
