#!/usr/bin/env python3
"""Turn tokmix_bench's JSON (--benchmark_out=x.json) into a markdown table and a PNG plot.

Benchmark names are `<case>/.../<impl>` (Google Benchmark may append
`/real_time`); every impl is compared with the `/tokmix` run of the same case.
The table has time, GFLOPS or GBps, frac_of_peak and `tokmix speed-up`
(= impl time / tokmix time: above 1 means tokmix is faster). The plot shows
frac_of_peak per case and impl, drawn with gnuplot (Debian's gnuplot-nox);
without gnuplot only the table is written.

Standard library only (Debian 12's python3).

    python3 bench/report.py results.json [--md results.md] [--png results.png]
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

TIMER_SUFFIXES = ("/real_time", "/manual_time", "/process_time")
TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


def split_name(name):
    """'attention_prefill/D:64/threads:1/tokmix/real_time' -> ('attention_prefill/D:64/threads:1', 'tokmix')."""
    for suffix in TIMER_SUFFIXES:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    # ->Iterations(n) appends "/iterations:n" after the impl.
    parts = name.split("/")
    while parts and parts[-1].startswith(("iterations:", "repeats:")):
        parts.pop()
    name = "/".join(parts)
    if "/" not in name:
        return name, ""
    case, impl = name.rsplit("/", 1)
    return case, impl


def load_rows(path):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    context = data.get("context", {})
    grouped = {}  # run name -> list of iteration rows (repetitions)
    medians = {}  # run name -> median aggregate row, when the run had repetitions
    order = []
    for b in data.get("benchmarks", []):
        if b.get("error_occurred"):
            print(f"skipping {b.get('name')}: {b.get('error_message', 'error')}", file=sys.stderr)
            continue
        run = b.get("run_name", b["name"])
        if b.get("run_type") == "aggregate":
            if b.get("aggregate_name") == "median":
                medians[run] = b
                if run not in grouped:  # --benchmark_report_aggregates_only: no iteration rows
                    grouped[run] = []
                    order.append(run)
            continue
        if run not in grouped:
            grouped[run] = []
            order.append(run)
        grouped[run].append(b)
    rows = []
    for run in order:
        reps = grouped[run]
        src = medians.get(run)

        def pick(key, reps=reps, src=src):
            if src is not None and key in src:
                return src[key]
            vals = [r[key] for r in reps if key in r]
            return statistics.median(vals) if vals else None

        unit = (reps[0] if reps else src).get("time_unit", "ns")
        case, impl = split_name(run)
        rows.append(
            {
                "case": case,
                "impl": impl,
                "time_ms": pick("real_time") * TO_MS.get(unit, 1e-6),
                "gflops": pick("GFLOPS"),
                "gbps": pick("GBps"),
                "frac": pick("frac_of_peak"),
            }
        )
    return context, rows


def add_speedups(rows):
    tokmix_time = {r["case"]: r["time_ms"] for r in rows if r["impl"] == "tokmix"}
    for r in rows:
        base = tokmix_time.get(r["case"])
        r["speedup"] = (r["time_ms"] / base) if base else None


def fmt(v, digits):
    return "-" if v is None else f"{v:.{digits}f}"


def markdown(context, rows):
    lines = []
    peaks = []
    for t in ("1", "2"):
        p = context.get(f"fma_peak_gflops_threads_{t}")
        bw = context.get(f"read_bandwidth_gbps_threads_{t}")
        if p or bw:
            peaks.append(f"{t} thread{'s' if t != '1' else ''}: FMA peak {p} GFLOP/s, read {bw} GB/s")
    if peaks:
        arch = context.get("simd_arch", "?")
        lines.append(f"Machine limits measured in the same run ({arch}): " + "; ".join(peaks) + ".")
        lines.append("")
    lines.append("| case | impl | time (ms) | GFLOPS | GBps | frac_of_peak | tokmix speed-up |")
    lines.append("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['impl']} | {fmt(r['time_ms'], 3)} | {fmt(r['gflops'], 1)} | {fmt(r['gbps'], 1)} "
            f"| {fmt(r['frac'], 2)} | {fmt(r['speedup'], 2)} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows, png_path):
    gnuplot = shutil.which("gnuplot")
    if not gnuplot:
        print("gnuplot not found (Debian: apt-get install gnuplot-nox): no PNG written", file=sys.stderr)
        return False
    cases = []
    for r in rows:
        if r["case"] not in cases:
            cases.append(r["case"])
    impls = []
    for r in rows:
        if r["impl"] not in impls:
            impls.append(r["impl"])
    if "tokmix" in impls:  # tokmix first: same colour in every plot
        impls.remove("tokmix")
        impls.insert(0, "tokmix")
    value = {(r["case"], r["impl"]): r["frac"] for r in rows}
    png_path = os.path.abspath(png_path)
    os.makedirs(os.path.dirname(png_path), exist_ok=True)

    def quoted(text):  # gnuplot single-quoted string
        return "'" + text.replace("'", "''") + "'"

    with tempfile.TemporaryDirectory() as tmp:
        data_path = os.path.join(tmp, "data.tsv")
        with open(data_path, "w", encoding="utf-8") as f:
            for c in cases:
                vals = [value.get((c, i)) for i in impls]
                f.write(c.replace(" ", "_") + "\t" + "\t".join("NaN" if v is None else f"{v:.4f}" for v in vals) + "\n")
        width = max(900, 60 * len(cases) * max(1, len(impls)) // 2 + 200)
        cols = " , ".join(f"{quoted(data_path)} using {k + 2}:xtic(1) title {quoted(impl)}" for k, impl in enumerate(impls))
        script = f"""
set terminal pngcairo size {width},650 noenhanced font ',9'
set output {quoted(png_path)}
set title 'tokmix_bench: fraction of the machine peak (FMA or read bandwidth) per case'
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.85 border -1
set boxwidth 0.9
set ylabel 'frac_of_peak'
set yrange [0:*]
set grid ytics
set key top right
set xtics rotate by -40 left
set bmargin 14
set datafile separator '\\t'
set datafile missing 'NaN'
plot {cols}
"""
        def run(text):
            res = subprocess.run([gnuplot], input=text.encode(), capture_output=True)
            return res.returncode, res.stderr.decode(errors="replace")

        rc, err = run(script)
        if rc != 0 and "pngcairo" in err:  # a gnuplot built without cairo
            rc, err = run(script.replace("pngcairo", "png"))
        if rc != 0 or not os.path.isfile(png_path):
            print("gnuplot failed:\n" + err, file=sys.stderr)
            return False
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("json", help="Google Benchmark JSON output of tokmix_bench")
    ap.add_argument("--md", help="also write the markdown table to this file")
    ap.add_argument("--png", help="write the frac_of_peak plot to this PNG file")
    args = ap.parse_args()

    context, rows = load_rows(args.json)
    if not rows:
        print("no benchmark results in " + args.json, file=sys.stderr)
        return 1
    add_speedups(rows)
    table = markdown(context, rows)
    sys.stdout.write(table)
    if args.md:
        with open(args.md, "w", encoding="utf-8") as f:
            f.write(table)
    if args.png and plot(rows, args.png):
        print(f"plot: {args.png}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
