"""``unimmad bench``: inference benchmark on generated inputs, reference vs the fast path.

Sections (``--sections``):

* ``model`` — end-to-end inference of the reference model and of
  ``unimmad.accelerate(model)``; each provider is measured in a fresh spawned process, so
  its peak memory (resident set on CPU, CUDA max-allocated on GPU) is its own.  The
  accelerated output is compared with the reference output of the same run; a provider
  that fails the SPEC §3 tolerance is reported as FAIL, never with a speedup.
* ``train`` (not run by default) — one training step (loss, backward, Adam step) per
  call, each provider in its own process; parity on the first step's loss.
* ``cmoe`` — one C-MoE per level (paper formulation vs the fused path) on the units of the
  same batch shape; peak tensor memory from the allocator (GPU) or profiler (CPU).
* ``map`` — anomaly map + image score alone (``unimmad.anomaly_map`` vs
  ``kernels.anomaly_map``) on the three levels' features of the same units, with the
  achieved bandwidth against the bytes that must move (u and p read once).

``--shapes 1x1,1x2,2x2,1x4`` measures the model and train sections at several
``(batch, modalities)`` shapes in one run (the cmoe and map sections use ``--batch`` and
``--modalities``).  In the model and train sections every (provider, policy) runs in its
own spawned process (its peak memory is its own) and their calls are interleaved, one at a
time, round by round, so speed ratios stay fair when the machine's load changes; each row
records the load average (``uptime``'s) at the start and end of its shape.

Providers: ``reference`` (the plain model), ``torch`` / ``triton`` (the fast path on that
backend; the default is the one ``backend="auto"`` picks on the device).  Fast providers
run once per folded-kernel memory policy of ``--cache`` (``none`` — the default —,
``bounded`` with ``--cache-mb``, ``all``); each row names its policy, the MB its caches
hold and, next to its peak memory, the reference's.

Output: a printed table, ``bench.json`` and ``bench.md`` in ``--out``; ``bench.json`` is
also written after every shape and section (``"complete": false`` until the run ends), so
an interrupted run keeps what it measured.

On a CPU the default run is the ``model`` and ``map`` sections with one warm-up and three
timed calls each (a few minutes on two cores at paper dimensions); ``--sections
model,cmoe,map`` adds the per-level C-MoE rows.

Output: a compact table on the terminal; the full table in ``bench.md`` and every number
in ``bench.json`` (``--out``).  A row whose spread (IQR) exceeds a quarter of its median is
marked ``noisy``: the machine was busy; rerun it (``--threads``, more ``--iters``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
from typing import Dict, List

import torch

from kernels.cmoe_cache import DEFAULT_POLICY, POLICIES, check_policy

from .cases import FAST_PROVIDERS, fast_provider, preset_config
from .meta import environment
from .sections import (DEFAULT_SECTIONS, DTYPES, SECTIONS, cmoe_section, load_average, log,
                       map_section, model_section, train_section)

__all__ = ["DESCRIPTION", "add_arguments", "run", "main", "to_markdown", "to_terminal",
           "mark_noisy", "COLUMNS", "TERMINAL_COLUMNS", "HelpFormatter", "NOISY_SPREAD"]

#: Sections run by default on a CUDA device, and on a CPU (where the C-MoE rows alone
#: would double the run's time).
DEFAULT_SECTIONS_CUDA = tuple(DEFAULT_SECTIONS)
DEFAULT_SECTIONS_CPU = ("model", "map")
#: A row whose IQR exceeds this fraction of its median is marked noisy.
NOISY_SPREAD = 0.25


def _plain(doc: str) -> str:
    """The module docstring as ``--help`` text: no reST markup."""
    text = re.sub(r":[a-z]+:`~?([^`]+)`", r"\1", doc)
    return text.replace("``", "").strip() + "\n"


DESCRIPTION = _plain(__doc__)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's lines; adds ``(default: X)`` to options that take a value
    and have a default (not to flags, whose default is just "off")."""

    def _get_help_string(self, action):
        text = action.help or ""
        if ("%(default)" in text or action.default in (None, argparse.SUPPRESS)
                or action.nargs == 0 or not action.option_strings):
            return text
        return text + " (default: %(default)s)"

MODEL_PROVIDERS = ("reference",) + FAST_PROVIDERS


def _csv(kind):
    def parse(text):
        items = [t.strip() for t in text.split(",") if t.strip()]
        allowed = {"sections": SECTIONS, "providers": MODEL_PROVIDERS, "cache": POLICIES}[kind]
        bad = [t for t in items if t not in allowed]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"--{kind} takes a comma list of {allowed}")
        return items
    return parse


def _shapes(text):
    shapes = []
    for item in (t.strip() for t in text.split(",")):
        b, sep, m = item.lower().partition("x")
        if not (sep and b.isdigit() and m.isdigit() and int(b) >= 1 and 1 <= int(m) <= 4):
            raise argparse.ArgumentTypeError(
                f"--shapes takes a comma list of BxM (batch >= 1, modalities 1-4), got {item!r}")
        shapes.append((int(b), int(m)))
    return shapes


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="paper", choices=["paper", "tiny"],
                   help="model size: the paper's dimensions or the tiny test preset")
    p.add_argument("--batch", type=int, default=1, help="samples per forward pass")
    p.add_argument("--modalities", type=int, default=2,
                   help="modalities per sample (1-4); units per batch = batch x modalities")
    p.add_argument("--shapes", type=_shapes, default=None,
                   help="comma list of BxM shapes (e.g. 1x1,1x2,2x2,1x4) measured by the model "
                   "and train sections in this one run, in place of --batch/--modalities")
    p.add_argument("--image-size", type=int, default=None,
                   help="input side (multiple of 32; default: the preset's)")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES),
                   help="parameter and input dtype")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--sections", type=_csv("sections"), default=None,
                   help="comma list of: model (end-to-end inference), train (one training "
                   "step; never run by default), cmoe (one C-MoE per level), map (anomaly map "
                   "+ image score); default: model,cmoe,map on CUDA, model,map on a CPU")
    p.add_argument("--providers", type=_csv("providers"), default=None,
                   help="model providers: reference, torch, triton (default: reference and "
                   "the fast path of the device: triton on CUDA, torch elsewhere)")
    p.add_argument("--cache", type=_csv("cache"), default=[DEFAULT_POLICY],
                   help="comma list of folded-kernel memory policies to measure the fast "
                   f"providers under: {', '.join(POLICIES)} (default {DEFAULT_POLICY})")
    p.add_argument("--cache-mb", type=float, default=None,
                   help="budget of the bounded policy in MB (default: kernels.cmoe_cache."
                   "DEFAULT_BUDGET_MB)")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per measurement")
    p.add_argument("--iters", type=int, default=3, help="timed calls per measurement")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: torch's default)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights and inputs")
    p.add_argument("--out", default="bench_out", help="folder for bench.json and bench.md")
    p.add_argument("--no-flops", dest="flops", action="store_false",
                   help="skip the fvcore FLOP count (one extra traced forward per provider)")
    p.add_argument("--no-isolate", action="store_true",
                   help="measure the model in this process (peak memory then includes setup)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("unimmad bench: --device cuda requested but CUDA is not available")
    return dev


def run(args: argparse.Namespace) -> Dict:
    """Measure, print and write the result record (``bench.json`` + ``bench.md``)."""
    if not 1 <= args.modalities <= 4:
        raise SystemExit("unimmad bench: --modalities must be 1..4")
    if args.batch < 1 or args.iters < 1 or args.warmup < 0:
        raise SystemExit("unimmad bench: --batch and --iters must be >= 1, --warmup >= 0")
    if args.shapes is None:
        args.shapes = [(args.batch, args.modalities)]
    if "bounded" not in args.cache and args.cache_mb is not None:
        raise SystemExit("unimmad bench: --cache-mb applies to --cache bounded")
    try:
        _, args.cache_mb = check_policy("bounded", args.cache_mb)
    except (TypeError, ValueError) as exc:
        raise SystemExit(f"unimmad bench: --cache-mb: {exc}")
    if "bounded" not in args.cache:
        args.cache_mb = None
    device = _resolve_device(args.device)
    if args.sections is None:
        args.sections = list(DEFAULT_SECTIONS_CUDA if device.type == "cuda"
                             else DEFAULT_SECTIONS_CPU)
        if device.type != "cuda":
            log("CPU run: sections model,map (add the per-level C-MoE rows with --sections "
                "model,cmoe,map)")
    fast = fast_provider(device)
    if args.providers is None:
        args.providers = ["reference", fast]
    if "triton" in args.providers and device.type != "cuda":
        raise SystemExit("unimmad bench: the triton provider needs --device cuda")
    try:
        cfg = preset_config(args.preset, args.image_size)
    except ValueError as exc:
        raise SystemExit(f"unimmad bench: {exc}")
    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    base_job = {
        "config": cfg.to_dict(), "batch": args.batch, "modalities": args.modalities,
        "dtype": args.dtype, "device": str(device), "warmup": args.warmup,
        "iters": args.iters, "seed": args.seed, "threads": threads,
        "progress": not args.quiet,
    }
    rows: List[Dict] = []
    load_start = load_average()
    os.makedirs(args.out, exist_ok=True)

    def save(partial=(), complete=False):
        record = {"meta": dict(environment(device), load_avg_start=load_start,
                               load_avg_end=load_average()),
                  "preset": args.preset, "config": cfg.to_dict(),
                  "args": {k: v for k, v in vars(args).items() if k != "func"},
                  "complete": complete, "results": rows + list(partial)}
        tmp = os.path.join(args.out, "bench.json.partial")
        with open(tmp, "w") as f:
            json.dump(record, f, indent=2)
        os.replace(tmp, os.path.join(args.out, "bench.json"))
        return record

    # bench.json is rewritten after every shape / section ("complete": false until the
    # end), so a long run interrupted keeps what it measured
    if "model" in args.sections:
        rows += model_section(args, cfg, device, base_job, on_shape=save)
        save()
    if "train" in args.sections:
        rows += train_section(args, cfg, device, base_job, on_shape=save)
        save()
    if "cmoe" in args.sections:
        rows += cmoe_section(args, cfg, device, fast)
        save()
    if "map" in args.sections:
        rows += map_section(args, cfg, device, fast)
    mark_noisy(rows)
    record = save(complete=True)
    md = to_markdown(record)
    with open(os.path.join(args.out, "bench.md"), "w") as f:
        f.write(md)
    print(to_terminal(record))
    noisy = [r for r in rows if r.get("noisy")]
    if noisy:
        log(f"{len(noisy)} row(s) marked noisy (IQR > {NOISY_SPREAD:.0%} of the median): the "
            f"machine was busy (load average {_load()}); rerun with fewer threads than cores "
            f"(--threads {max(1, (os.cpu_count() or 2) // 2)}) or more --iters before trusting "
            "them")
    log(f"wrote {os.path.join(args.out, 'bench.json')} and bench.md (the full table)")
    return record


def _load() -> str:
    try:
        return ", ".join(f"{x:.1f}" for x in os.getloadavg())
    except OSError:  # pragma: no cover
        return "unknown"


def mark_noisy(rows: List[Dict]) -> None:
    """``row["noisy"] = True`` where the IQR exceeds :data:`NOISY_SPREAD` of the median."""
    for r in rows:
        med, iqr = r.get("latency_median_ms"), r.get("latency_iqr_ms")
        if med and iqr is not None:
            r["noisy"] = bool(iqr > NOISY_SPREAD * med)


#: The terminal table's columns (the full set is in bench.md / bench.json).
TERMINAL_COLUMNS = [
    ("section", "section", "{}"), ("provider", "provider", "{}"), ("level", "lvl", "{}"),
    ("units", "units", "{}"), ("latency_median_ms", "median ms", "{:.1f}"),
    ("latency_iqr_ms", "IQR ms", "{:.1f}"), ("peak_memory_mb", "peak MB", "{:.0f}"),
    ("gflops_fvcore_per_sample", "GFLOPs", "{:.1f}"), ("parity_rel_err", "rel.err", "{:.1e}"),
    ("status", "status", "{}"), ("speedup", "speedup", "{:.2f}x"),
]


def _cells(r: Dict, cols) -> List[str]:
    out = []
    for key, _, fmt in cols:
        v = r.get(key)
        text = "-" if v is None else fmt.format(v)
        if key == "status" and r.get("noisy"):
            text += " noisy"
        out.append(text)
    return out


def to_terminal(record: Dict) -> str:
    """The results as a narrow plain-text table (under 100 columns) with a two-line
    legend; ``bench.md`` has every column."""
    rows = record["results"]
    cols = [c for c in TERMINAL_COLUMNS if any(r.get(c[0]) is not None for r in rows)]
    table = [[c[1] for c in cols]] + [_cells(r, cols) for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    m = record["meta"]
    r0 = rows[0] if rows else {}
    lines = [f"unimmad bench: {m['device_name']} ({m['device']}), {r0.get('dtype', '')}, "
             f"B={r0.get('batch', '')}, {m.get('cpu_threads')} threads"]
    for i, row in enumerate(table):
        lines.append("  ".join(v.rjust(w) if j >= 3 else v.ljust(w)
                               for j, (v, w) in enumerate(zip(row, widths))).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("GFLOPs: fvcore multiply-adds per sample; speedup vs the reference of the "
                 "same run, shown only where rel.err is within SPEC §3; noisy: IQR > "
                 f"{NOISY_SPREAD:.0%} of the median.")
    return "\n".join(lines)


COLUMNS = [
    ("section", "section", "{}"), ("provider", "provider", "{}"), ("level", "level", "{}"),
    ("batch", "B", "{}"), ("modalities", "M", "{}"), ("units", "units", "{}"), ("dtype", "dtype", "{}"),
    ("cache", "cache", "{}"),
    ("samples_per_s", "samples/s", "{:.3f}"), ("latency_median_ms", "median ms", "{:.1f}"),
    ("latency_iqr_ms", "IQR ms", "{:.1f}"), ("peak_memory_mb", "peak MB", "{:.0f}"),
    ("ref_peak_memory_mb", "ref. peak MB", "{:.0f}"), ("cache_mb", "cache MB", "{:.1f}"),
    ("params", "params", "{:,}"), ("params_mb", "params MB", "{:.2f}"),
    ("activated_params_per_unit", "active params/unit", "{:,}"),
    ("gflops_fvcore_per_sample", "GFLOPs/sample (fvcore)", "{:.1f}"),
    ("gflop", "GFLOP", "{:.1f}"), ("gbps", "GB/s", "{:.1f}"),
    ("parity_rel_err", "rel. err", "{:.1e}"),
    ("status", "status", "{}"), ("speedup", "speedup", "{:.2f}×"),
    ("cpu_median_ms", "CPU ms", "{:.0f}"), ("speedup_cpu", "CPU-time speedup", "{:.2f}×"),
    ("load_1m", "load (1 min)", "{}"),
]


def to_markdown(record: Dict) -> str:
    """The result record as a Markdown table with a legend (every column)."""
    m = record["meta"]
    cols = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in record["results"])]
    lines = [f"# unimmad bench — {m['device_name']} ({m['device']}), torch {m['torch']}, "
             f"commit {str(m['commit'])[:10]}, {m['date']}", "",
             "| " + " | ".join(c[1] for c in cols) + " |",
             "|" + "---|" * len(cols)]
    for r in record["results"]:
        cells = []
        for key, _, fmt in cols:
            v = r.get(key)
            cells.append(("—" if v is None else fmt.format(v))
                         + (" (noisy)" if key == "status" and r.get("noisy") else ""))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["",
              "Providers: reference — the plain PyTorch model; torch / triton — "
              "unimmad.accelerate on that backend. "
              "cache: the fast path's folded-kernel memory policy (none — folded on the fly, "
              "the default; bounded — most recently routed leaders within a budget; all — "
              "every leader). "
              "Peak memory: model and train rows — CUDA max allocated on GPU, the measuring "
              "process's peak resident set on CPU; cmoe rows — peak tensor allocations of one "
              "call beyond what was live before it (a cache built by the warm-up is not in "
              "it: see cache MB); cmoe 'all' rows — the largest level. ref. peak MB: the "
              "reference's, same run. cache MB: bytes the folded-kernel caches hold after the "
              "run (included in model rows' peak). "
              "params MB = parameters × element size / 2^20. Active params/unit: all "
              "parameters except, per C-MoE branch, N − K base-expert-sized kernels (a unit "
              "uses K composed leader kernels where N base experts are stored; the paper's "
              "Table 6 convention). GFLOPs/sample (fvcore): fvcore's count, one multiply-add "
              "= one FLOP, fused ops counted by their multiply-adds. GFLOP (cmoe rows): 2 FLOPs "
              "per multiply-add (analytic, SPEC §2). GB/s (map rows): bytes of u and p (read once) "
              "per second. Speedups are shown only where the output matches the "
              "reference of the same run within SPEC §3 (rel. err ≤ tolerance). "
              "Model and train rows: every provider in its own process, their calls "
              "interleaved round by round (one at a time), so the speedups compare "
              "providers under the same machine load; CPU ms: median process CPU time of a "
              "call (all threads), and CPU-time speedup its ratio to the reference's — "
              "less sensitive to other processes than wall-clock time; load (1 min): the 1-minute load "
              "average at the start and end of that shape's measurement (the machine has "
              f"{record['meta'].get('cpu_count')} CPUs). (noisy): the "
              f"IQR exceeds {NOISY_SPREAD:.0%} of the median — the machine was busy, rerun "
              "before trusting the row."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="unimmad bench", description=DESCRIPTION,
                                formatter_class=HelpFormatter)
    add_arguments(p)
    run(p.parse_args(argv))
    return 0
