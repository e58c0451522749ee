#!/usr/bin/env python3
"""Joins every target/bench/*.json written by the benchmarks into target/bench/summary.md
(measure, ours, baseline, ratio, goal) and target/bench/summary.json, with commit and machine."""
import json, os, platform, subprocess, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "target/bench"


def main():
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip() or "unknown"
    machine = f"{os.cpu_count()} cores, {platform.machine()}, {platform.release()}"
    benches = [json.loads(p.read_text()) for p in sorted(OUT.glob("*.json")) if p.name != "summary.json"]
    lines = [f"# Benchmarks — commit {commit}, {machine}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}", ""]
    lines += ["| benchmark | measure | ours | baseline | ratio | goal |", "|---|---|---|---|---|---|"]
    for bench in benches:
        for r in bench["rows"]:
            base = "-" if r["baseline"] is None else f"{r['baseline']} {r['unit']}"
            ratio = "-" if r["ratio"] is None else f"{r['ratio']}×"
            lines.append(f"| {bench['benchmark']} | {r['measure']} | {r['ours']} {r['unit']} | {base} | {ratio} | {r['goal']} |")
    lines += ["", "Baselines: " + "; ".join(f"{b['benchmark']}: {b['baseline']}" for b in benches)]
    (OUT / "summary.md").write_text("\n".join(lines) + "\n")
    (OUT / "summary.json").write_text(json.dumps({"commit": commit, "machine": machine, "benchmarks": benches}, indent=2))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
