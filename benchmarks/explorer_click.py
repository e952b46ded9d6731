"""How fast the patch explorer answers a click (target: < 100 ms in headless Chromium).

Opens an explorer page (default: the demo's results/report/explorer.html), clicks ``--clicks``
patches spread over the shown images with both panels showing a model, and prints the page's own
timing of each click (``patchExplorer.lastMs``: similarity of the patch against every shown patch
in both panels, colouring and drawing every canvas), the first click of a (model, variant, layer)
included (it decodes that layer). Needs Chromium (see tests/browser/test_report_browser.py)."""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("page", nargs="?", default=str(ROOT / "results/report/explorer.html"))
    ap.add_argument("--clicks", type=int, default=40)
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location(
        "_report_browser", ROOT / "tests/browser/test_report_browser.py")
    rb = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(rb)
    if rb.CHROMIUM is None:
        raise SystemExit("headless Chromium not found (apt-get install chromium)")
    page = Path(args.page)
    load = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        b = rb.Chromium(rb.CHROMIUM, Path(tmp) / "profile", Path(tmp) / "chromium.log")
        try:
            b.open(page.resolve().as_uri())
            n = b.evaluate("patchExplorer.panels[0].cards.length")
            layers = b.evaluate("patchExplorer.data.datasets[patchExplorer.state.dataset]"
                                ".models[patchExplorer.panels[0].model].layers.length")
            times = []
            for i in range(args.clicks):
                if i % 10 == 0:  # a new layer: the first click decodes it
                    b.evaluate(f"(() => {{ const e = document.querySelector('#panel0 "
                               f"input.layer'); e.value = '{(i // 10) % layers}'; "
                               "e.dispatchEvent(new Event('input')); })()")
                r = b.evaluate(f"(() => {{ const c = document.querySelectorAll('#panel0 canvas')"
                               f"[{i % n}].getBoundingClientRect(); return [c.left, c.top, "
                               "c.width, c.height]; })()")
                u, v = (0.13 + 0.37 * i) % 1, (0.29 + 0.23 * i) % 1
                for kind in ("mousePressed", "mouseReleased"):
                    b.send("Input.dispatchMouseEvent", {
                        "type": kind, "x": r[0] + u * r[2], "y": r[1] + v * r[3],
                        "button": "left", "clickCount": 1})
                times.append(b.evaluate("patchExplorer.lastMs"))
            patches = b.evaluate("patchExplorer.result(0).sims.length")
        finally:
            b.close()
    p95 = sorted(times)[max(0, round(0.95 * len(times)) - 1)]
    print(f"{page}: {page.stat().st_size / 1e6:.2f} MB, {n} images, {patches} patches per "
          f"panel; {len(times)} clicks: median {statistics.median(times):.1f} ms, 95th "
          f"percentile {p95:.1f} ms, max {max(times):.1f} ms, "
          f"{sum(t >= 100 for t in times)} at or over 100 ms (load average {load:.1f})")


if __name__ == "__main__":
    main()
