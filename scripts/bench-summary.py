#!/usr/bin/env python3
"""The comparison table of scripts/bench-all.sh.

Reads the logs bench-all.sh left in a directory and prints one Markdown
table: every subject next to the baseline measured in the same run, the
ratio, and the project's goal for it (docs/BENCHMARKS.md). A log that is
missing or that this script cannot read gives a row that says so rather
than a guess.

Given several directories (several runs of bench-all.sh), each row is the
run whose ratio is the median for that row, and a last column lists the
ratio of every run: every ratio is still taken within one run.

    scripts/bench-summary.py /tmp/tollgate-bench-XXXXXX
    scripts/bench-summary.py run1 run2 run3
"""

import re
import statistics
import sys
from pathlib import Path

ROWS = []


def row(bench, subject, value, baseline, ratio, goal, verdict=""):
    ROWS.append((bench, subject, value, baseline, ratio, goal, verdict))


def read(out, name):
    path = out / f"{name}.log"
    if not path.exists():
        return None
    return path.read_text(errors="replace")


def missing(bench, name):
    row(bench, "—", f"no {name}.log (skipped or failed; see bench-all's output)", "", "", "", "")


def met(ratio, goal_min=None, goal_max=None):
    if goal_min is not None and ratio < goal_min:
        return "missed"
    if goal_max is not None and ratio > goal_max:
        return "missed"
    return "met"


# criterion prints `<id>\n  time: [low median high]` or `<id>  time: [...]`.
CRITERION = re.compile(r"^(\S+)\s*\n?\s*time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", re.M)
UNITS = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}


def memory_store(out):
    text = read(out, "memory_store")
    if text is None:
        return missing("memory store vs governor", "memory_store")
    times = {}
    for name, value, unit in CRITERION.findall(text):
        times[name] = float(value) * UNITS.get(unit, float("nan"))
    cases = sorted({n.split("/", 2)[2] for n in times if n.startswith("memory_store/governor/")})
    if not cases:
        return row("memory store vs governor", "—", "no criterion results in the log", "", "", "")
    for case in cases:
        ours = times.get(f"memory_store/tollgate/{case}")
        theirs = times[f"memory_store/governor/{case}"]
        if ours is None:
            continue
        ratio = theirs / ours  # throughput: time per decision inverted
        row("memory store vs governor", case, f"{ours:.1f} ns/decision",
            f"governor {theirs:.1f} ns", f"{ratio:.2f}× throughput", "≥ 1.0×", met(ratio, 1.0))


def redis_store(out):
    text = read(out, "redis_store")
    if text is None:
        return missing("RedisStore vs redis-benchmark", "redis_store")
    # Each algorithm's own ceiling: redis-benchmark sending the same FCALL.
    ceiling = re.findall(r"^(\w+)\s+(-P \d+ -c \d+)\s+(\d+)\s+(\d+)", text, re.M)
    ceilings = {(algorithm, label): (int(rps), int(p50)) for algorithm, label, rps, p50 in ceiling}
    found = False
    for line in text.splitlines():
        m = re.match(r"^(\w+)\s+(hot|\S+ random)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(.*)$", line)
        if not m:
            continue
        found = True
        algorithm, keys, callers, rps, _p50, _p99, versus = m.groups()
        subject = f"{algorithm}, {keys} keys, {callers} callers"
        if callers == "50":
            p1 = re.search(r"([\d.]+)x -P1", versus)
            p16 = re.search(r"([\d.]+)x -P16", versus)
            base = ceilings.get((algorithm, "-P 1 -c 50"), (0, 0))[0]
            row("RedisStore vs redis-benchmark", subject, f"{rps} decisions/s",
                f"same FCALL -P 1 -c 50: {base}/s", f"{p1.group(1)}× (-P16: {p16.group(1)}×)",
                "≥ 1.0× (-P16: ≥ 0.8×)",
                "met" if float(p1.group(1)) >= 1.0 and float(p16.group(1)) >= 0.8
                else ("half" if float(p1.group(1)) >= 1.0 else "missed"))
        else:
            delta = re.search(r"p50 ([+-]?\d+) µs", versus)
            base = ceilings.get((algorithm, "-P 1 -c 1"), (0, 0))[1]
            d = int(delta.group(1)) if delta else 0
            row("RedisStore vs redis-benchmark", subject, f"{rps} decisions/s",
                f"same FCALL -c 1: p50 {base} µs", f"p50 {d:+d} µs", "≤ +20 µs",
                "met" if d <= 20 else "missed")
    if not found:
        row("RedisStore vs redis-benchmark", "—", "no result table in the log", "", "", "")
    memory = re.findall(r"^(plain counter.*?|\w+)\s{2,}([\d.]+) B$", text, re.M)
    counter = next((float(v) for n, v in memory if n.startswith("plain counter")), None)
    for name, value in memory:
        if name.startswith("plain counter") or counter is None:
            continue
        ratio = float(value) / counter
        goal, verdict = ("≤ a counter (1.01×: allocator rounding)", met(ratio, goal_max=1.01)) if name == "gcra" else ("", "")
        row("Redis memory per idle key", name, f"{value} B", f"plain counter, same key names: {counter} B",
            f"{ratio:.2f}×", goal, verdict)


def flood(out):
    text = read(out, "flood")
    if text is None:
        return missing("deny cache under a flood", "flood")
    for label, cache, calls in re.findall(
            r"^flood (.+?)\s+deny cache (on|off)\s*:.*?=\s+([\d.]+) x allowed", text, re.M):
        ratio = float(calls)
        goal = "≤ 1.1× allowed" if cache == "on" else "(baseline: no cache)"
        row("deny cache under a flood", f"{label.strip()}, cache {cache}", f"{calls} Redis calls per allowed",
            "allowed decisions", f"{ratio:.2f}×", goal, met(ratio, goal_max=1.1) if cache == "on" else "")
    for label, p99, timeout in re.findall(
            r"^outage (.+?)\s*:.*?p99\s+(\d+) us.*?\(timeout (\d+) us\)", text, re.M):
        p99, timeout = int(p99), int(timeout)
        if "breaker off" in label:
            goal, verdict = "(baseline: without the breaker every call waits the timeout)", ""
        else:
            goal, verdict = "p99 ≤ timeout", met(p99 / timeout, goal_max=1.0)
        row("latency while Redis is down", label.strip(), f"p99 {p99} µs", f"timeout {timeout} µs",
            f"{p99 / timeout:.3f}×", goal, verdict)


def middleware(out):
    text = read(out, "bench-middleware")
    if text is None:
        return missing("tower layer overhead", "bench-middleware")
    m = re.search(r"median: plain ([\d.]+) req/s, limited ([\d.]+) req/s, ratio ([\d.]+)", text)
    if not m:
        return row("tower layer overhead", "—", "no median line in the log", "", "", "")
    plain, limited, ratio = m.groups()
    row("tower layer overhead", "hello-world route with the layer (memory store)", f"{float(limited):.0f} req/s",
        f"without the layer {float(plain):.0f} req/s", f"{float(ratio):.2f}×", "≥ 0.9×", met(float(ratio), 0.9))


def server(out):
    text = read(out, "bench-server")
    if text is None:
        return missing("tollgate serve", "bench-server")
    rows = re.findall(r"^\| (\w+/\w+/[\w-]+) \| (\d+) \| ([\d.]+) \| ([\d.]+) \| (\d+) \| ([\d.]*) \|$", text, re.M)
    if not rows:
        return row("tollgate serve", "—", "no result table in the log", "", "", "")
    ceiling = next((r for r in rows if r[0] == "redis/ceiling/redis-benchmark"), None)
    for name, rps, p50, p99, errors, ratio in rows:
        if name.endswith("ceiling/redis-benchmark"):
            continue
        baseline = f"Redis ceiling {ceiling[1]}/s" if ceiling and ratio else ""
        row("tollgate serve", name, f"{rps} req/s, p50 {p50} ms, p99 {p99} ms, {errors} errors",
            baseline, f"{ratio}×" if ratio else "", "", "")


def tool(out, name, bench):
    text = read(out, name)
    if text is None:
        return missing(bench, name)
    requests = re.search(r"^requests\s+(.*)$", text, re.M)
    accuracy = re.search(r"^accuracy\s+(.*)$", text, re.M)
    verdict = ""
    if accuracy:
        verdict = "met" if "OK: no key over-admitted" in accuracy.group(1) else "missed"
    row(bench, name.replace("bench_", ""), requests.group(1) if requests else "no summary in the log",
        "the policy's allowance", "", "no over-admission", verdict)


def script_cpu(out):
    text = read(out, "script_cpu")
    if text is None:
        return missing("Redis CPU per decision", "script_cpu")
    found = False
    # The medians table: a header naming the forms, then per algorithm one
    # figure per form (µs) and fcall/floor.
    header = re.search(r"^algorithm((?:\s+\w+)+)\s+fcall/floor", text, re.M)
    forms = header.group(1).split() if header else []
    for m in re.finditer(r"^(\w+)((?:\s+[\d.]+)+)\s+([\d.]+)x$", text, re.M):
        figures = dict(zip(forms, m.group(2).split()))
        if "fcall" not in figures or "floor" not in figures:
            continue
        found = True
        algorithm, ratio = m.group(1), float(m.group(3))
        empty = f" (empty FCALL {figures['empty']} µs)" if "empty" in figures else ""
        row("Redis CPU per decision", algorithm, f"FCALL {figures['fcall']} µs",
            f"plain commands {figures['floor']} µs{empty}", f"{ratio:.2f}×", "≤ 2.0×",
            met(ratio, goal_max=2.0))
    if not found:
        row("Redis CPU per decision", "—", "no result table in the log", "", "", "")


def rows_of(out):
    ROWS.clear()
    memory_store(out)
    redis_store(out)
    script_cpu(out)
    flood(out)
    middleware(out)
    server(out)
    tool(out, "bench_direct_memory", "tollgate bench direct")
    tool(out, "bench_direct_redis", "tollgate bench direct")
    tool(out, "bench_http_api_server", "tollgate bench http (demo API)")
    return list(ROWS)


def number(ratio):
    """The leading number of a ratio cell, or None."""
    m = re.match(r"p50 ([+-]?\d+)|([\d.]+)", ratio)
    if not m:
        return None
    return float(m.group(1) or m.group(2))


def main():
    runs = [rows_of(Path(d)) for d in (sys.argv[1:] or ["."])]
    header = "| benchmark | subject | measured | baseline (same run) | ratio | goal | goal met? |"
    if len(runs) == 1:
        print(header)
        print("|---|---|---|---|---|---|---|")
        for r in runs[0]:
            print("| " + " | ".join(r) + " |")
        return
    print(header[:-1] + f"| ratio in each of the {len(runs)} runs |")
    print("|---|---|---|---|---|---|---|---|")
    order, groups = [], {}
    for rows in runs:
        for r in rows:
            key = (r[0], r[1])
            if key not in groups:
                order.append(key)
                groups[key] = []
            groups[key].append(r)
    for key in order:
        rows = groups[key]
        # The ratio where there is one, else the measured figure (rows with
        # no baseline: requests/s).
        column = 4 if any(r[4] for r in rows) else 2
        valued = [(number(r[column]), r) for r in rows if number(r[column]) is not None]
        if valued:
            valued.sort(key=lambda v: v[0])
            median = valued[(len(valued) - 1) // 2][1]
            each = ", ".join(
                r[column] if r[column].startswith("p50") else r[column].split(" ")[0] for r in rows
            )
        else:
            median, each = rows[0], ""
        print("| " + " | ".join(median) + f" | {each} |")


if __name__ == "__main__":
    main()
