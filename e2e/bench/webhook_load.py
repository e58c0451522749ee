#!/usr/bin/env python3
"""Webhook load benchmark, all in one run on this machine.

Each server runs pinned to one core (taskset; one tokio worker / GOMAXPROCS=1), the load
generator (oha, TLS with keep-alive) on the other. The request is the AdmissionReview of an
elected Argo v3 pod (webhook/tests/fixtures/argo-v3-emissary.pod.json).

- ours: the webhook (release build)
- floor: a no-op hyper + tokio-rustls server answering a fixed allow (webhook/examples)
- go: the same rewrite with controller-runtime's webhook server and a JSON-patch diff
  (e2e/bench/go-webhook)

Measures max reviews/s (closed loop, 32 connections) and p50/p99 latency at 500 and 2,000
reviews/s. Writes target/bench/webhook-load.json.
"""
import json, os, secrets, shutil, socket, ssl, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
QUICK = os.environ.get("BENCH_QUICK") == "1"
DURATION = "3s" if QUICK else "10s"
OHA = os.environ.get("OHA", str(Path.home() / ".cache/delegate-pods/cargo-tools/oha-1.16.0/bin/oha"))
GO_WEBHOOK = Path(os.environ.get("GO_WEBHOOK", ROOT / "target/bench-tools/go-webhook"))
SERVER_CPU, LOAD_CPU = "1", "0"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def review_body():
    pod = json.loads((ROOT / "webhook/tests/fixtures/argo-v3-emissary.pod.json").read_text())
    return json.dumps({
        "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
        "request": {"uid": "bench", "kind": {"group": "", "version": "v1", "kind": "Pod"},
                    "resource": {"group": "", "version": "v1", "resource": "pods"},
                    "namespace": "team-a", "operation": "CREATE", "userInfo": {"username": "bench"},
                    "object": pod, "dryRun": False}})


def wait_ready(port, body, timeout=30):
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as raw:
                with context.wrap_socket(raw) as tls:
                    data = body.encode()
                    tls.sendall(b"POST /mutate HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                                + f"content-length: {len(data)}\r\nconnection: close\r\n\r\n".encode() + data)
                    reply = b""
                    while chunk := tls.recv(65536):
                        reply += chunk
                    return reply.decode(errors="replace")
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on {port} never answered")


def oha(port, body_path, rate=None):
    cmd = ["taskset", "-c", LOAD_CPU, OHA, "-z", DURATION, "-c", "32", "--no-tui", "--insecure",
           "--output-format", "json", "-m", "POST", "-T", "application/json", "-D", str(body_path)]
    if rate:
        cmd += ["-q", str(rate)]
    out = subprocess.run(cmd + [f"https://127.0.0.1:{port}/mutate"], capture_output=True, text=True, check=True)
    result = json.loads(out.stdout)
    codes = result.get("statusCodeDistribution", {})
    if set(codes) != {"200"}:
        raise RuntimeError(f"non-200 answers: {codes}")
    return {"rps": result["summary"]["requestsPerSec"],
            "p50_ms": result["latencyPercentiles"]["p50"] * 1000,
            "p99_ms": result["latencyPercentiles"]["p99"] * 1000}


def measure(name, command, env, port, body, body_path, expect):
    server = subprocess.Popen(["taskset", "-c", SERVER_CPU] + command, env={**os.environ, **env},
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        reply = wait_ready(port, body)
        if expect not in reply:
            raise RuntimeError(f"{name} did not answer as expected: {reply[:300]}")
        results = {"max": oha(port, body_path), "at500": oha(port, body_path, 500), "at2000": oha(port, body_path, 2000)}
        print(f"{name}: {results['max']['rps']:.0f} reviews/s max; p99 {results['at500']['p99_ms']:.2f} ms at 500/s, "
              f"{results['at2000']['p99_ms']:.2f} ms at 2000/s")
        return results
    finally:
        server.terminate()
        server.wait()


def main():
    for tool in (OHA, GO_WEBHOOK):
        if not Path(tool).exists():
            sys.exit(f"{tool} is missing: run `make bench` (it installs oha and builds the Go baseline)")
    work = Path(tempfile.mkdtemp(prefix="webhook-bench-"))
    try:
        subprocess.run([ROOT / "target/release/certs", "ensure", "--name", "127.0.0.1", "--out-dir", work],
                       check=True, stdout=subprocess.DEVNULL)
        (work / "key").write_text(secrets.token_hex(32))
        body = review_body()
        body_path = work / "review.json"
        body_path.write_text(body)
        cert, key = str(work / "tls.crt"), str(work / "tls.key")
        ports = {n: free_port() for n in ("ours", "floor", "go")}
        ours = measure("webhook", [str(ROOT / "target/release/webhook"), "--bind-address", "127.0.0.1",
                                   "--secure-port", str(ports["ours"]), "--admin-address", f"127.0.0.1:{free_port()}",
                                   "--tls-cert-file", cert, "--tls-private-key-file", key,
                                   "--manifest-key-file", str(work / "key"), "--log-level", "warn"],
                       {"TOKIO_WORKER_THREADS": "1"}, ports["ours"], body, body_path, '"patch"')
        floor = measure("no-op floor", [str(ROOT / "target/release/examples/noop-webhook"), f"127.0.0.1:{ports['floor']}", cert, key],
                        {"TOKIO_WORKER_THREADS": "1"}, ports["floor"], body, body_path, '"allowed":true')
        go = measure("controller-runtime", [str(GO_WEBHOOK), "--port", str(ports["go"]), "--cert-dir", str(work),
                                            "--manifest-key-file", str(work / "key")],
                     {"GOMAXPROCS": "1"}, ports["go"], body, body_path, '"patch"')
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def row(measure, value, base, unit, goal, baseline_name):
        return {"measure": measure, "ours": round(value, 2), "baseline": round(base, 2), "unit": unit,
                "ratio": round(value / base, 2) if base else None, "goal": goal, "baseline_name": baseline_name}

    rows = [
        row("max reviews/s on one core vs controller-runtime", ours["max"]["rps"], go["max"]["rps"], "req/s", ">= 3x", "go"),
        row("max reviews/s on one core vs no-op floor", ours["max"]["rps"], floor["max"]["rps"], "req/s", "-", "floor"),
    ]
    for rate in ("500", "2000"):
        r = ours[f"at{rate}"]
        rows.append(row(f"p50 at {rate}/s vs no-op floor", r["p50_ms"], floor[f"at{rate}"]["p50_ms"], "ms", "-", "floor"))
        rows.append(row(f"p99 at {rate}/s vs no-op floor", r["p99_ms"], floor[f"at{rate}"]["p99_ms"], "ms", "<= 1.5x", "floor"))
        rows.append(row(f"p99 at {rate}/s vs controller-runtime", r["p99_ms"], go[f"at{rate}"]["p99_ms"], "ms", "-", "go"))
    out = ROOT / "target/bench"
    out.mkdir(parents=True, exist_ok=True)
    (out / "webhook-load.json").write_text(json.dumps({
        "benchmark": "webhook-load",
        "baseline": "no-op hyper+tokio-rustls floor and a controller-runtime webhook, same run, server pinned to one core",
        "command": "make bench", "raw": {"ours": ours, "floor": floor, "go": go}, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
