"""benchmarks/device_rehearsal.py runs end to end at tiny shapes on the CPU (its GPU run is the
real check; here every job and the device-vs-CPU equality line must come out)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import device_rehearsal  # noqa: E402


def test_small_run_on_the_cpu(tmp_path, capsys):
    rows = device_rehearsal.main(["--device", "cpu", "--small", "--work", str(tmp_path)])
    jobs = [(r["job"], r["model"]) for r in rows]
    assert jobs == [("extract_features", "vit_b16"), ("extract_features", "vit_b8"),
                    ("fewshot_seg", "vit_b16"), ("fewshot_seg", "vit_b8"),
                    ("tracking", "vit_b16"), ("similarity", "-")]
    assert all(r["s"] > 0 for r in rows)
    sim = rows[-1]
    # torch on the CPU against the faiss path: float32 both, the same neighbours
    assert sim["max_diff"] < 1e-5 and sim["same_neighbours"] > 0.99
    assert "TFLOP/s" in capsys.readouterr().out
