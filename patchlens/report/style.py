"""Figure style: one colour per model family (the same in every figure), paper column widths and
the matplotlib settings every figure is drawn under.

Colours are the Okabe-Ito palette (Okabe & Ito 2008, "Color Universal Design"), distinguishable
under the common colour-vision deficiencies. Models of one family share the family hue in
different shades and differ by marker, so a model keeps its colour and marker across figures as
long as the same model list is passed to :func:`model_styles` (the report passes the full list
from ``tables/models.csv``, never a figure's subset).

Sizes follow a two-column paper: single column 3.3 in, double column 6.9 in. Figures are saved at
these exact widths (no tight bounding box), so fonts of 7 pt stay readable when placed at 100 %.
Importing this module selects the non-interactive Agg backend; nothing here opens a display.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")

from matplotlib import colors as mcolors  # noqa: E402

from patchlens.models.resolve import DEFAULT_FAMILY  # noqa: E402
from patchlens.report.tables import FAMILIES, family_order  # noqa: E402,F401
from patchlens.tasks.registry import all_tasks  # noqa: E402

SINGLE = 3.3   # in, one paper column
DOUBLE = 6.9   # in, full page width
DPI = 200      # PNG resolution

FAMILY_COLORS = {
    "contrastive": "#0072b2",  # blue
    "mim": "#d55e00",          # vermillion
    "language": "#009e73",     # bluish green
    "supervised": "#cc79a7",   # reddish purple
    "baseline": "#666666",     # grey
    "test": "#e69f00",         # orange
    DEFAULT_FAMILY: "#56b4e9",  # sky blue: "other" and families no one configured
}
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h"]

# each task's colour and title, as its module registers them (patchlens.tasks.registry)
TASK_COLORS = {s.name: s.color for s in all_tasks()}
TASK_TITLES = {s.name: s.title for s in all_tasks()}
RAW_LINE, DROP_LINE, ALT_LINE = "-", "--", ":"

RC = {
    "font.size": 7,
    "axes.titlesize": 7,
    "axes.labelsize": 7,
    "xtick.labelsize": 6,
    "ytick.labelsize": 6,
    "legend.fontsize": 6,
    "figure.titlesize": 8,
    "lines.linewidth": 1.0,
    "lines.markersize": 3,
    "axes.linewidth": 0.6,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.4,
    "axes.grid": True,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "legend.frameon": False,
    "figure.dpi": 100,
    "savefig.dpi": DPI,
    "pdf.fonttype": 42,   # TrueType in PDF: text stays text in the paper's editor
    "ps.fonttype": 42,
    "figure.constrained_layout.use": True,
    "image.cmap": "viridis",
    "svg.hashsalt": "patchlens",
}


@contextlib.contextmanager
def context():
    """Draw and save inside this context so every figure gets the same rc settings."""
    with matplotlib.rc_context(RC):
        yield


def family_color(family: str) -> str:
    """Hex colour of a model family; unknown families get the ``unknown`` colour."""
    return FAMILY_COLORS.get(family, FAMILY_COLORS[DEFAULT_FAMILY])


def _shade(hex_color: str, t: float) -> str:
    """Blend towards black (t < 0) or white (t > 0) by |t| in [0, 1]."""
    rgb = mcolors.to_rgb(hex_color)
    target = (1.0, 1.0, 1.0) if t > 0 else (0.0, 0.0, 0.0)
    a = abs(t)
    return mcolors.to_hex(tuple((1 - a) * c + a * g for c, g in zip(rgb, target)))


@dataclass(frozen=True)
class ModelStyle:
    color: str
    marker: str
    family: str


def model_styles(families: dict[str, str]) -> dict[str, ModelStyle]:
    """Map model -> (colour, marker, family) from the full model -> family mapping.

    The i-th of n models of a family (sorted by name) gets the family hue shaded from darker to
    lighter (at most 35 % towards black/white) and the i-th marker; a lone model gets the pure
    family colour. Deterministic: the same mapping always gives the same styles.
    """
    by_family: dict[str, list[str]] = {}
    for model, fam in families.items():
        by_family.setdefault(fam if fam in FAMILY_COLORS else DEFAULT_FAMILY, []).append(model)
    out = {}
    for fam, models in by_family.items():
        models = sorted(models)
        n = len(models)
        for i, m in enumerate(models):
            t = 0.0 if n == 1 else -0.35 + 0.7 * i / (n - 1)
            out[m] = ModelStyle(_shade(FAMILY_COLORS[fam], t), MARKERS[i % len(MARKERS)],
                                families[m])
    return out


def model_order(families: dict[str, str]) -> list[str]:
    """Models sorted by family (FAMILIES order), then name: the row/legend order of figures."""
    return sorted(families, key=lambda m: (family_order(families[m]), m))
