#!/usr/bin/env python3
"""The performance targets of `benches/layer.rs` as ratios, over several runs of the bench.

On a shared machine one criterion run can be off by a factor of two between rows, so this runs
the whole bench RUNS times (all rows in each run), computes each target's ratio within each run,
and prints every run's ratios and their median.

    python3 benches/ratios.py            # RUNS=5, 1 s warm-up and 3 s measurement per row
"""
import os
import re
import statistics
import subprocess

RUNS = int(os.environ.get("RUNS", "5"))
UNITS = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}


def one_run():
    output = subprocess.run(
        ["cargo", "bench", "--quiet", "--all-features", "--bench", "layer", "--",
         "--warm-up-time", "1", "--measurement-time", "3"],
        check=True, capture_output=True, text=True).stdout
    medians = {}
    # "request/valid_key_1k  time:   [830.1 ns 886.9 ns 970.9 ns]", possibly over two lines.
    pattern = r"request/(\w+)\s+time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]"
    for name, value, unit in re.findall(pattern, output):
        medians[name] = float(value) * UNITS[unit]
    return medians


def ratios(m):
    valid = m["valid_key_1k"] - m["baseline"]
    found = {
        "valid overhead / (floor - baseline)  [<= 1.5]": valid / (m["floor"] - m["baseline"]),
        "1M keys / 1k keys                    [<= 1.3]": m["valid_key_1m"] / m["valid_key_1k"],
        "missing overhead / valid overhead    [<= 3]": (m["missing_api_key"] - m["baseline"]) / valid,
        "checksum overhead / valid overhead   [<= 3]":
            (m["invalid_api_key_checksum"] - m["baseline"]) / valid,
        "unknown overhead / valid overhead    [<= 3]":
            (m["invalid_api_key_unknown"] - m["baseline"]) / valid,
    }
    if "valid_key_1k_rate_layer_no_limit" in m:
        # Issue 16: "the same layer with and without a limit".
        found["a limit adds, same layer (ns)       [<= 60]"] = (
            m["valid_key_1k_rate_limited"] - m["valid_key_1k_rate_layer_no_limit"])
    if "valid_key_1k_rate_limited" in m:
        found["the layer and its limit add (ns)"] = (
            m["valid_key_1k_rate_limited"] - m["valid_key_1k"])
    if "cache_hit" in m:
        found["cache hit / memory store           [<= 1.2]"] = m["cache_hit"] / m["valid_key_1k"]
    if "cache_hit_pushed" in m:
        found["pushed cache hit / memory store    [<= 1.2]"] = (
            m["cache_hit_pushed"] / m["valid_key_1k"])
    return found


def main():
    runs = []
    for index in range(RUNS):
        medians = one_run()
        runs.append(ratios(medians))
        row = ", ".join(f"{name} {value:.0f} ns" for name, value in medians.items())
        print(f"run {index + 1}: {row}", flush=True)
    print()
    for target in runs[0]:
        values = [run[target] for run in runs]
        listed = " ".join(f"{value:.2f}" for value in values)
        print(f"{target}  median {statistics.median(values):.2f}  (runs: {listed})")


if __name__ == "__main__":
    main()
