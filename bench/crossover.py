#!/usr/bin/env python3
"""The L above which each linear-time mixer's prefill beats tokmix's own causal
flash attention at the same head count and head dim, from one tokmix_bench
JSON (scripts/bench.sh writes bench-results/results.json).

Each mixer's cost per token is read at L = 4096 (its prefill is linear in L:
the benchmarks check t(65536) / t(4096) <= 17); attention is measured at
L = 512 .. 16384 (`attention_crossover/...`), and the crossover is
interpolated log-log between the two measured lengths around it.

    python3 bench/crossover.py bench-results/results.json [--md out.md]

Standard library only.
"""

import argparse
import json
import math
import re
import sys

# mixer label, regex on the /tokmix run name at L = 4096, attention shape (heads, dim)
MIXERS = [
    ("GLA (chunked)", r"^gla/heads:12/dim:64/L:4096/threads:1/tokmix", (12, 64)),
    ("GLA (chunked)", r"^gla/heads:16/dim:128/L:4096/threads:1/tokmix", (16, 128)),
    ("retention (chunked)", r"^retention/heads:12/dim:64/L:4096/threads:1/tokmix", (12, 64)),
    ("retention (chunked)", r"^retention/heads:16/dim:128/L:4096/threads:1/tokmix", (16, 128)),
    ("DeltaNet (chunked)", r"^delta_rule/heads:12/dim:64/L:4096/threads:1/tokmix", (12, 64)),
    ("DeltaNet (chunked)", r"^delta_rule/heads:16/dim:128/L:4096/threads:1/tokmix", (16, 128)),
    ("gated DeltaNet (chunked)", r"^gated_delta_rule/heads:12/dim:64/L:4096/threads:1/tokmix", (12, 64)),
    ("gated DeltaNet (chunked)", r"^gated_delta_rule/heads:16/dim:128/L:4096/threads:1/tokmix", (16, 128)),
    ("GLA (token loop)", r"^gla/heads:12/dim:64/L:4096/threads:1/recurrent", (12, 64)),
    ("DeltaNet (token loop)", r"^delta_rule/heads:12/dim:64/L:4096/threads:1/recurrent", (12, 64)),
    ("NHA (window 64, 64 slots)", r"^nha/heads:12/dim:64/.*/L:4096/threads:1/tokmix", (12, 64)),
    ("NHA (window 64, 64 slots)", r"^nha/heads:16/dim:128/.*/L:4096/threads:1/tokmix", (16, 128)),
    ("linear attention elu+1", r"^linear_attn_elu/H:12/D:64/L:4096/B:1/threads:1/tokmix", (12, 64)),
    ("linear attention FAVOR+ m=256", r"^linear_attn_favor/m:256/H:12/D:64/L:4096/B:1/threads:1/tokmix", (12, 64)),
    ("Mamba-2 SSD (N = 128)", r"^ssd/heads:24/P:64/N:128/L:4096/threads:1/tokmix", (24, 64)),
]

TO_MS = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}


def medians(path):
    with open(path, encoding="utf-8") as f:
        data = json.load(f)
    out = {}
    for b in data.get("benchmarks", []):
        if b.get("error_occurred"):
            continue
        name = b.get("run_name", b["name"])
        agg = b.get("aggregate_name")
        if b.get("run_type") == "aggregate" and agg != "median":
            continue
        ms = b["real_time"] * TO_MS.get(b.get("time_unit", "ns"), 1e-6)
        # A median row wins over iteration rows of the same run.
        if agg == "median" or name not in out:
            out[name] = ms
    return out


def find(times, pattern):
    rx = re.compile(pattern)
    hits = [v for k, v in times.items() if rx.search(k)]
    return hits[0] if hits else None


def attention_curve(times, heads, dim):
    rx = re.compile(rf"^attention_crossover/heads:{heads}/dim:{dim}/L:(\d+)/causal:1/threads:1/tokmix")
    pts = sorted((int(m.group(1)), v) for k, v in times.items() for m in [rx.search(k)] if m)
    return pts


def crossover(per_token_ms, curve):
    """Smallest L with attention slower than the mixer, interpolated log-log."""
    if not curve:
        return None, "no attention data"
    prev = None
    for L, t in curve:
        mixer = per_token_ms * L
        if t > mixer:
            if prev is None:
                return L, f"<= {L}"
            (L0, t0) = prev
            # log t_attn - log t_mixer is linear in log L between the two points.
            d0 = math.log(t0) - math.log(per_token_ms * L0)
            d1 = math.log(t) - math.log(mixer)
            x = math.log(L0) + (math.log(L) - math.log(L0)) * (-d0) / (d1 - d0)
            Lx = math.exp(x)
            return Lx, f"~{Lx:,.0f}"
        prev = (L, t)
    return None, f"> {curve[-1][0]}"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("json")
    ap.add_argument("--md")
    args = ap.parse_args()
    times = medians(args.json)
    lines = [
        "| mixer | heads x dim | mixer ms / 1k tokens | attention ms at L = 2048 / 16384 | beats flash attention above L |",
        "|---|---|---:|---:|---:|",
    ]
    for label, pattern, (h, d) in MIXERS:
        t = find(times, pattern)
        curve = attention_curve(times, h, d)
        if t is None or not curve:
            continue
        per_token = t / 4096
        _, text = crossover(per_token, curve)
        att = dict(curve)
        a2, a16 = att.get(2048), att.get(16384)
        fmt = lambda v: "-" if v is None else f"{v:.1f}"
        lines.append(f"| {label} | {h} x {d} | {1000 * per_token:.2f} | {fmt(a2)} / {fmt(a16)} | {text} |")
    text = "\n".join(lines) + "\n"
    if len(lines) == 2:
        print("crossover.py: no matching benchmark runs in " + args.json, file=sys.stderr)
        return 1
    if args.md:
        with open(args.md, "w", encoding="utf-8") as f:
            f.write(text)
    print(text, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
