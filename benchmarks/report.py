"""Results page: ``python -m benchmarks.report`` turns the JSON files committed under
``benchmarks/results/`` into ``benchmarks/RESULTS.md`` and a throughput-vs-batch plot
(``benchmarks/results/throughput.png``).

Understood formats: pytest-benchmark JSON (``--benchmark-json``), ``unimmad bench``'s
``bench.json``, and the GPU suite's files (``suite.json`` and every stage's ``*.json``).
Every section names the machine, versions, commit and date of its file.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
from collections import defaultdict
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))


def _meta_line(meta: Dict) -> str:
    keys = [("device_name", "device"), ("device", "on"), ("torch", "torch"),
            ("triton", "triton"), ("cuda", "CUDA"), ("commit", "commit"), ("date", "date")]
    parts = []
    for k, label in keys:
        v = meta.get(k)
        if v:
            parts.append(f"{label} {str(v)[:10] if k == 'commit' else v}")
    return ", ".join(parts)


def _pytest_benchmark(data: Dict) -> Tuple[str, List[str], List[Tuple]]:
    rows, points = [], []
    benches = data.get("benchmarks", [])
    env = next((b["extra_info"].get("env") for b in benches if b.get("extra_info", {}).get("env")), {})
    meta = env or {"commit": data.get("commit_info", {}).get("id"),
                   "date": data.get("datetime"),
                   "device_name": data.get("machine_info", {}).get("cpu", {}).get("brand_raw")}
    def median_s(b):
        # benchmarks timed inside an isolated process report the model's own latency
        ms = b.get("extra_info", {}).get("latency_median_ms")
        return ms / 1e3 if ms is not None else b["stats"]["median"]

    # Speedup of each provider over the reference in the same group (same run).
    ref = {b["group"]: median_s(b) for b in benches
           if b.get("extra_info", {}).get("provider") == "reference"}
    memory = any("cache_mb" in b.get("extra_info", {}) for b in benches)
    head = "| group | provider | median ms | IQR ms | rounds | vs reference | peak MB |"
    rows.append(head + (" cache MB |" if memory else ""))
    rows.append("|---|---|---|---|---|---|---|" + ("---|" if memory else ""))
    for b in sorted(benches, key=lambda b: (b["group"] or "", b["extra_info"].get("provider", ""))):
        st, ex = b["stats"], b.get("extra_info", {})
        r = ref.get(b["group"])
        speed = f"{r / median_s(b):.2f}×" if r else "—"
        peak = ex.get("peak_memory_mb")
        iqr = "—" if ex.get("latency_median_ms") is not None else f"{st['iqr'] * 1e3:.1f}"
        cache = ex.get("cache_mb")
        rows.append(f"| {b['group']} | {ex.get('provider', b['name'])} | {median_s(b) * 1e3:.1f} | "
                    f"{iqr} | {st['rounds']} | {speed} | "
                    f"{'—' if peak is None else f'{peak:.0f}'} |"
                    + (f" {'—' if cache is None else f'{cache:.0f}'} |" if memory else ""))
        if ex.get("samples_per_s") and ex.get("batch"):
            points.append((f"{ex.get('device', '?')} {ex['provider']}", ex["batch"],
                           ex["samples_per_s"]))
    return _meta_line(meta), rows, points


def _unimmad_bench(data: Dict) -> Tuple[str, List[str], List[Tuple]]:
    rows = ["| section | provider | cache | level | B | M | units | dtype | median ms | samples/s | "
            "peak MB | ref. peak MB | cache MB | rel. err | status | speedup | CPU-time speedup "
            "| load (1 min) |", "|" + "---|" * 18]
    points = []
    dev = data["meta"].get("device", "?")
    for r in data["results"]:
        f = lambda k, fmt: "—" if r.get(k) is None else fmt.format(r[k])
        rows.append(f"| {r['section']} | {r['provider']} | {f('cache', '{}')} | {f('level', '{}')} | "
                    f"{f('batch', '{}')} | {f('modalities', '{}')} | "
                    f"{f('units', '{}')} | {f('dtype', '{}')} | {f('latency_median_ms', '{:.1f}')} | "
                    f"{f('samples_per_s', '{:.3f}')} | {f('peak_memory_mb', '{:.0f}')} | "
                    f"{f('ref_peak_memory_mb', '{:.0f}')} | {f('cache_mb', '{:.0f}')} | "
                    f"{f('parity_rel_err', '{:.1e}')} | {f('status', '{}')} | {f('speedup', '{:.2f}×')} | "
                    f"{f('speedup_cpu', '{:.2f}×')} | {f('load_1m', '{}')} |")
        if r["section"] == "model" and r.get("samples_per_s"):
            tag = r["provider"] + (f"[{r['cache']}]" if r.get("cache") else "")
            points.append((f"{dev} {tag}", r["batch"], r["samples_per_s"]))
    head = _meta_line(data["meta"])
    if data.get("complete") is False:
        head += " (run stopped before its end: the rows it measured)"
    return head, rows, points


def _gpu_rows(data: Dict) -> Tuple[str, List[str], List[Tuple]]:
    rows_in = data.get("rows", [])
    keys = sorted({k for r in rows_in for k in r if k != "error"})
    rows = ["| " + " | ".join(keys) + " | error |", "|" + "---|" * (len(keys) + 1)]
    points = []
    for r in rows_in:
        cells = []
        for k in keys:
            v = r.get(k)
            cells.append("—" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v)))
        rows.append("| " + " | ".join(cells) + f" | {r.get('error') or ''} |")
        if r.get("samples_per_s") and r.get("batch") and not r.get("error"):
            points.append((f"cuda {r['provider']} {r.get('dtype', '')} M={r.get('modalities')}",
                           r["batch"], r["samples_per_s"]))
    extra = {k: v for k, v in data.items()
             if k not in ("rows", "meta", "skipped") and not isinstance(v, (dict, list))}
    head = _meta_line(data["meta"]) + ("; " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float)
                                                        else f"{k} {v}" for k, v in extra.items())
                                       if extra else "")
    # ceilings, summaries, floors: one line each
    for k, v in data.items():
        if isinstance(v, dict) and k not in ("meta",):
            head += f"\n\n{k}: `{json.dumps(v, default=str)}`"
    if data.get("skipped"):
        head += f"\n\nskipped (time budget): {len(data['skipped'])} rows"
    return head, rows, points


def _suite(data: Dict) -> Tuple[str, List[str], List[Tuple]]:
    """``suite.json`` of the GPU suite: one row per stage."""
    src = data.get("source", {})
    ver = data.get("versions", {})
    head = (f"GPU suite on {data.get('gpu') or '?'}; commit {str(src.get('commit'))[:10]} "
            f"(from {src.get('commit_from')}, tree matches: {src.get('tree_matches')}); "
            f"torch {ver.get('torch')}, triton {ver.get('triton')}; status {data.get('status')}, "
            f"{data.get('wall_s')} s")
    rows = ["| stage | status | seconds | budget s | exit | note |", "|---|---|---|---|---|---|"]
    for r in data.get("stages", []):
        rows.append(f"| {r['stage']} | {r['status']} | {r.get('seconds', '—')} | "
                    f"{r.get('budget_s', '—')} | {r.get('returncode', '—')} | "
                    f"{r.get('why', '')} |")
    return head, rows, []


def load(path: str):
    with open(path) as f:
        data = json.load(f)
    if "benchmarks" in data:
        return _pytest_benchmark(data)
    if "results" in data and "meta" in data:
        return _unimmad_bench(data)
    if "rows" in data and "meta" in data:
        return _gpu_rows(data)
    if "stages" in data and "plan" in data:
        return _suite(data)
    raise ValueError(f"{path}: not a benchmark result this report understands")


def plot(points: List[Tuple], path: str) -> bool:
    """Throughput (samples/s) against batch size, one line per provider."""
    series = defaultdict(dict)
    for name, batch, value in points:
        series[name][batch] = value
    if not series:
        return False
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, pts in sorted(series.items()):
        xs = sorted(pts)
        ax.plot(xs, [pts[x] for x in xs], marker="o", label=name)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("batch size (samples)")
    ax.set_ylabel("throughput (samples/s)")
    ax.set_title("UniMMAD inference throughput")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def build(results_dir: str, out_md: str, out_png: str) -> str:
    files = sorted(glob.glob(os.path.join(results_dir, "*.json")))
    parts = ["# Benchmark results", "",
             "Generated by `python -m benchmarks.report` from the JSON files in "
             "`benchmarks/results/`; do not edit by hand. Ratios are measured side by side in "
             "one run; absolute CPU times on shared machines are noise.", ""]
    points = []
    for path in files:
        try:
            head, rows, pts = load(path)
        except (ValueError, KeyError) as exc:
            parts += [f"## {os.path.basename(path)}", "", f"(skipped: {exc})", ""]
            continue
        parts += [f"## {os.path.basename(path)}", "", head, ""] + rows + [""]
        points += pts
    if plot(points, out_png):
        rel = os.path.relpath(out_png, os.path.dirname(out_md))
        parts[4:4] = [f"![throughput vs batch size]({rel})", ""]
    text = "\n".join(parts) + "\n"
    with open(out_md, "w") as f:
        f.write(text)
    return text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--results", default=os.path.join(HERE, "results"))
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--png", default=os.path.join(HERE, "results", "throughput.png"))
    args = ap.parse_args(argv)
    build(args.results, args.out, args.png)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
