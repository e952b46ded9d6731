"""Report pieces of the statistics: the paired table shows a verdict only where the interval
excludes 0; score figures receive the evaluator's intervals."""
import numpy as np
import pandas as pd

from patchlens.report import tables as T
from patchlens.report.html import paired_html
from patchlens.stats.paired import COLUMNS
from patchlens.report.statistics import with_intervals


def test_paired_html_claims_only_where_interval_excludes_zero():
    rows = []
    for (a, b, lo, hi) in [("m1", "m2", 0.01, 0.05), ("m1", "m3", -0.02, 0.04),
                           ("m2", "m3", -0.09, -0.01)]:
        rows.append(dict(task="instance_id", dataset="scenes", variant="raw", metric="top1",
                         layer_choice="best", model_a=a, model_b=b, layer_a=1, layer_b=2,
                         diff=(lo + hi) / 2, ci_low=lo, ci_high=hi, p_value=0.5, n_units=10,
                         n_seeds=1))
    d = pd.DataFrame(rows).reindex(columns=COLUMNS)
    page = paired_html(d)
    assert "m1 &gt; m2" in page and "m3 &gt; m2" in page
    assert "m1 &gt; m3" not in page and "m3 &gt; m1" not in page
    assert page.count("<tr>") == 4  # header + 3 rows


def test_overall_rows_get_the_seed_mean_interval():
    s = pd.DataFrame([dict(task="tracking", model="m", dataset="d", variant="raw", layer=0,
                           seed=0, metric="jf", value=v, sequence=q, ci_low=lo, ci_high=hi,
                           family="x", n_layers=1, depth_frac=1.0)
                      for q, v, lo, hi in [("all", 0.5, 0.4, 0.6), ("a", 0.7, 0.6, 0.8)]])
    ov = with_intervals(T.overall(s), s)
    assert len(ov) == 1 and ov.value.iloc[0] == 0.5
    assert (ov.ci_low.iloc[0], ov.ci_high.iloc[0]) == (0.4, 0.6)
    assert np.isnan(with_intervals(T.overall(s), s.drop(columns=["ci_low", "ci_high"]))
                    .ci_low.iloc[0])
