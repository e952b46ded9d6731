"""Issue 18: the drop_sweep panel titles stay apart when a model's label is long."""
import itertools

import pytest
from test_figures import stats_tables, synthetic_tables

from patchlens.report import figures as F
from patchlens.report import tables as T

LONG = "ViT-S/14 trained on the scenes saliency task (the demo's own model, seed 0)"


@pytest.fixture(scope="module")
def tables(tmp_path_factory):
    tables_dir = synthetic_tables(tmp_path_factory.mktemp("report") / "tables")
    tables = {**T.load_tables(tables_dir), **stats_tables(tables_dir)}
    models = tables["models"].copy()
    models["label"] = models["label"].astype(object)
    models.loc[models["model"] != "pixels", "label"] = LONG  # every panel's model
    return {**tables, "models": models}


def test_long_model_labels_do_not_overlap(tables):
    fig = F.fig_drop_sweep.draw(tables)
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)  # the layout engine places the titles
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.get_visible()]
    assert len(boxes) >= 2
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b)
    assert all(LONG.split()[0] in ax.get_title() for ax in fig.axes if ax.get_visible())
