"""The plan as text: stages, totals, disk, the largest cost drivers."""
from __future__ import annotations


def drivers(result: dict, top: int = 10) -> list[dict]:
    """The job rows that cost the most CPU hours (model x data set x stage)."""
    return sorted(result["jobs"], key=lambda r: -r.get("hours_cpu", r["flop"]))[:top]


def human_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(n) < 1000 or unit == "PB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n:.0f} B"
        n /= 1000
    return f"{n:.1f} PB"


def format_plan(result: dict, top: int = 10) -> str:
    """The plan as a text table: stages, totals, disk both ways, the largest cost drivers."""
    r = result["rates"]
    lines = [f"{'stage':18s} {'jobs':>5s} {'PFLOP':>9s} {'written':>10s} {'read':>10s} "
             f"{'h (cpu)':>10s} {'h (gpu)':>9s}"]
    for rule, s in sorted(result["stages"].items(), key=lambda kv: -kv[1]["hours_cpu"]):
        lines.append(f"{rule:18s} {s['jobs']:5d} {s['flop'] / 1e15:9.3f} "
                     f"{human_bytes(s['bytes_written']):>10s} {human_bytes(s['bytes_read']):>10s} "
                     f"{s['hours_cpu']:10.1f} {s['hours_gpu']:9.2f}")
    lines.append(f"total: {result['hours_cpu']:.1f} h on this machine "
                 f"({r['cpu_gflops']:.0f} GFLOP/s matmul, {r['read_mbps']:.0f} MB/s read); "
                 f"{result['hours_gpu']:.1f} h on a GPU ({r['gpu_tflops']:g} TFLOP/s, "
                 f"{r['disk_gbps']:g} GB/s disk)")
    lines.append(f"assumed on the GPU: similarity products at {r['gpu_fp16_tflops']:g} TFLOP/s "
                 "float16 (half an H100's dense figure; no device run has measured one), other "
                 f"FLOPs at {r['gpu_tflops']:g} TFLOP/s float32, memory-bound passes at "
                 f"{r['gpu_mem_gbps']:g} GB/s")
    lines.append(f"disk: {human_bytes(result['disk_bytes'])} with keep_features: true, "
                 f"{human_bytes(result['disk_bytes_temp'])} peak with keep_features: false")
    for node, c in (result.get("cluster") or {}).items():
        still = ", ".join(f"{m}/{d} {rule} {mins / 60:.0f} h" for rule, m, d, mins in
                          c["still_over"][:3])
        lines.append(f"cluster ({node} nodes, max_runtime {c['limit']} min): {c['jobs_over']} "
                     f"evaluator job(s) longer, split into {c['pieces']} pieces by layers/seeds"
                     "/query images"
                     + (f"; {len(c['still_over'])} whose smallest piece is still "
                        f"longer ({still})" if c["still_over"] else ""))
    lines.append("largest cost drivers (model x data set x stage):")
    for d in drivers(result, top):
        lines.append(f"  {d['hours_cpu']:9.1f} h cpu {d['hours_gpu']:8.2f} h gpu  "
                     f"{d['model']:16s} {d['dataset']:11s} {d['rule']}")
    return "\n".join(lines)
