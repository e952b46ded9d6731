"""Issue 18, case 14: best-layer ties are decided with a tolerance, so two layers whose seed means
are equal up to summation order tie, and the shallower one wins (the documented rule)."""
import numpy as np
import pandas as pd

from patchlens.analysis.best_layer import best_layer_table


def _scores(per_layer: dict[int, list[float]]) -> pd.DataFrame:
    rows = [dict(model="m", dataset="d", task="instance_id", variant="raw", metric="top1",
                 layer=layer, seed=seed, value=v, n_layers=len(per_layer))
            for layer, values in per_layer.items() for seed, v in enumerate(values)]
    return pd.DataFrame(rows)


def test_means_one_ulp_apart_tie_and_the_shallower_layer_wins():
    shallow, deep = [0.3, 0.1, 0.7], [0.1, 0.3, 0.7]  # both 11/30, summed in another order
    scores = _scores({0: shallow, 1: deep, 2: [0.0, 0.0, 0.0]})
    means = scores.groupby("layer")["value"].mean()  # the seed means as pandas computes them
    assert means[1] == np.nextafter(means[0], 1.0)  # the deeper mean is one ulp larger
    table = best_layer_table(scores)
    assert table["best_layer"].tolist() == [0]
    assert table["best_value"].iloc[0] == means[0]


def test_a_real_difference_still_picks_the_better_layer():
    table = best_layer_table(_scores({0: [0.2, 0.2], 1: [0.2, 0.2 + 1e-6], 2: [0.1, 0.1]}))
    assert table["best_layer"].tolist() == [1]
