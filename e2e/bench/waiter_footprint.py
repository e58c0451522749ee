#!/usr/bin/env python3
"""proxy-waiter footprint, side by side with the seed's equivalent in the same run.

The seed's proxy container was a busybox that waits to be killed; its equivalent here is
Debian's busybox-static running `sh` with a trap loop, ended by a signal. Measures binary size,
RSS while waiting, start-up time (exec to exit of a no-op) and delivery-to-exit latency.
Writes target/bench/waiter-footprint.json (rows for summary.md).
"""
import json, os, statistics, subprocess, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WAITER = Path(os.environ.get("PROXY_WAITER_BIN", ROOT / "target/x86_64-unknown-linux-gnu/waiter/proxy-waiter"))
BUSYBOX = Path("/bin/busybox")
QUICK = os.environ.get("BENCH_QUICK") == "1"
RUNS = 20 if QUICK else 100
SEED_LOOP = "trap 'exit 0' USR1; trap 'exit 1' USR2; while true; do sleep 1 & wait $!; done"
RESULT = '{"v":1,"phase":"Succeeded","containers":{"main":{"exitCode":0}}}'


def rss_kib(pids):
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


def children(pid):
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except FileNotFoundError:
        return []


def waiter_env(i):
    env = dict(os.environ)
    env.update(PROXY_WAITER_CONTAINER="main", PROXY_WAITER_SOCKET=f"bench-{os.getpid()}-{i}",
               PROXY_WAITER_ANNOTATIONS="/nonexistent/annotations", PROXY_WAITER_TERMINATION_LOG="/dev/null")
    return env


def wait_listening(name, timeout=5.0):
    import socket
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect("\0" + name)
            return s
        except OSError:
            time.sleep(0.002)
        finally:
            pass
    raise RuntimeError("waiter never listened")


def ours_rss():
    p = subprocess.Popen([WAITER], env=waiter_env("rss"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    value = rss_kib([p.pid])
    p.terminate(); p.wait()
    return value


def seed_rss():
    p = subprocess.Popen([BUSYBOX, "sh", "-c", SEED_LOOP])
    time.sleep(0.5)
    value = rss_kib([p.pid] + children(p.pid))
    p.send_signal(10); p.wait()
    return value


def startup(cmd, env=None):
    samples = []
    for _ in range(RUNS):
        t = time.perf_counter()
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        samples.append(time.perf_counter() - t)
    return statistics.median(samples) * 1000


def ours_delivery():
    samples = []
    for i in range(RUNS):
        env = waiter_env(i)
        p = subprocess.Popen([WAITER], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(env["PROXY_WAITER_SOCKET"]).close()
        # The waiter refuses the empty probe connection above; then the real delivery.
        t = time.perf_counter()
        subprocess.run([WAITER, "deliver", RESULT], env=env, check=True, stdout=subprocess.DEVNULL)
        p.wait()
        samples.append(time.perf_counter() - t)
    return samples


def seed_delivery():
    samples = []
    for _ in range(RUNS):
        p = subprocess.Popen([BUSYBOX, "sh", "-c", SEED_LOOP])
        time.sleep(0.05)
        t = time.perf_counter()
        subprocess.run([BUSYBOX, "kill", "-USR1", str(p.pid)], check=True)
        p.wait()
        samples.append(time.perf_counter() - t)
    return samples


def pct(samples, q):
    s = sorted(samples)
    return s[min(len(s) - 1, int(q * len(s)))] * 1000


def row(measure, ours, baseline, unit, goal):
    ratio = round(ours / baseline, 2) if baseline else None
    return {"measure": measure, "ours": round(ours, 2), "baseline": round(baseline, 2), "unit": unit,
            "ratio": ratio, "goal": goal}


def main():
    for path in (WAITER, BUSYBOX):
        if not path.exists():
            sys.exit(f"{path} is missing (make waiter; apt-get install busybox-static)")
    ours_d, seed_d = ours_delivery(), seed_delivery()
    rows = [
        row("proxy-waiter binary size (static, stripped)", WAITER.stat().st_size / 1024, BUSYBOX.stat().st_size / 1024, "KiB", "<= 1024 KiB"),
        row("RSS while waiting", ours_rss(), seed_rss(), "KiB", "<= 1024 KiB"),
        row("start-up, exec to exit (median)", startup([WAITER, "init"]), startup([BUSYBOX, "true"]), "ms", "-"),
        row("result delivered to exit, p50", pct(ours_d, 0.5), pct(seed_d, 0.5), "ms", "< 50 ms"),
        row("result delivered to exit, p99", pct(ours_d, 0.99), pct(seed_d, 0.99), "ms", "< 50 ms"),
    ]
    out = ROOT / "target/bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "waiter-footprint.json").write_text(json.dumps({
        "benchmark": "waiter-footprint", "baseline": "busybox-static sh trap loop (the seed's proxy)",
        "runs": RUNS, "rows": rows}, indent=2))
    for r in rows:
        print(f"{r['measure']}: ours {r['ours']} {r['unit']}, seed {r['baseline']} {r['unit']} (ratio {r['ratio']})")


if __name__ == "__main__":
    main()
