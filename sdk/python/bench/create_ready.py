"""Create -> Ready latency through the Python SDK, beside the Rust e2e benchmark.

Times ``Sandbox.create(...)`` (the create call until the SDK's watch shows
the sandbox Running) sequentially and from 16 threads, and, in the same
run, the plain official client doing what the Rust benchmark
(``test/bench/e2e``) does: a create call timed to the Running event of a
namespace watch opened beforehand. The difference of the two is the SDK's
own overhead; ``--rust`` puts the Rust benchmark's sandbox rows (its
``results.json``) beside them.

Run against a cluster with Fast Sandbox deployed (current KUBECONFIG)::

    python sdk/python/bench/create_ready.py [--sandboxes 200] [--concurrency 1,16] \\
        [--rust target/bench-e2e/results.json] [--out target/bench-python]

Prints a Markdown table with the Rust benchmark's columns (runs, p50, p95,
p99, mean in ms) and writes it with the samples as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import watch
from kubernetes.client import CoreV1Api, CustomObjectsApi, V1Namespace, V1ObjectMeta
from kubernetes.client.exceptions import ApiException

from fast_sandbox import Client, Sandbox

GROUP, VERSION = "sandbox.fast.io", "v1alpha1"
AGENTS = 4


def percentile(samples: list[float], p: float) -> float:
    """The sample at rank round((n - 1) * p), as the Rust report
    (``test/bench/report``) computes it, so both tables read alike."""
    s = sorted(samples)
    if not s:
        return math.nan
    k = math.floor((len(s) - 1) * p / 100 + 0.5)
    return s[min(k, len(s) - 1)]


def row(name: str, concurrency: int, samples_ms: list[float]) -> dict[str, Any]:
    return {
        "name": name,
        "concurrency": concurrency,
        "runs": len(samples_ms),
        "p50_ms": percentile(samples_ms, 50),
        "p95_ms": percentile(samples_ms, 95),
        "p99_ms": percentile(samples_ms, 99),
        "mean_ms": statistics.fmean(samples_ms) if samples_ms else math.nan,
        "samples_ms": samples_ms,
    }


def watch_pool(
    client: Client, ns: str, pred: Callable[[dict[str, Any]], bool], what: str, timeout: float = 300
) -> None:
    """Waits on a watch of pool ``bench`` until ``pred`` holds."""
    api = CustomObjectsApi(client.api_client)
    deadline = time.monotonic() + timeout
    while (remaining := deadline - time.monotonic()) > 0:
        w = watch.Watch()
        try:
            for ev in w.stream(
                api.list_namespaced_custom_object,
                GROUP,
                VERSION,
                ns,
                "sandboxpools",
                field_selector="metadata.name=bench",
                timeout_seconds=max(1, math.ceil(remaining)),
            ):
                if pred(ev["raw_object"]):
                    w.stop()
                    return
        except ApiException as e:
            # A resumed watch ahead of the apiserver's watch cache (504
            # "Too large resource version") or behind it (410): list anew.
            if e.status not in (410, 504):
                raise
    sys.exit(f"pool bench: {what} not reached in {timeout:g} s")


def slots_free(client: Client, ns: str) -> None:
    watch_pool(
        client, ns, lambda p: (p.get("status") or {}).get("slotsUsed", 1) == 0, "no slot in use"
    )


class Arrivals:
    """First Running event per sandbox name, from one namespace watch (the Rust
    benchmark's method, with the official client)."""

    def __init__(self, client: Client, ns: str) -> None:
        self._api = CustomObjectsApi(client.api_client)
        self._ns = ns
        self._lock = threading.Lock()
        self._waiting: dict[str, tuple[threading.Event, list[float]]] = {}
        self._watch = watch.Watch()
        threading.Thread(target=self._run, daemon=True).start()

    def expect(self, name: str) -> tuple[threading.Event, list[float]]:
        entry: tuple[threading.Event, list[float]] = (threading.Event(), [])
        with self._lock:
            self._waiting[name] = entry
        return entry

    def _run(self) -> None:
        for ev in self._watch.stream(
            self._api.list_namespaced_custom_object, GROUP, VERSION, self._ns, "sandboxes"
        ):
            obj = ev["raw_object"]
            if (obj.get("status") or {}).get("phase") != "Running":
                continue
            now = time.perf_counter()
            with self._lock:
                entry = self._waiting.pop(obj["metadata"]["name"], None)
            if entry is not None:
                entry[1].append(now)
                entry[0].set()

    def stop(self) -> None:
        self._watch.stop()


def manifest(name: str, image: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Sandbox",
        "metadata": {"name": name},
        "spec": {"image": image, "command": ["/bin/sleep", "3600"], "poolRef": "bench"},
    }


def series(n: int, concurrency: int, one: Callable[[int], float]) -> list[float]:
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        return list(pool.map(one, range(n)))


def delete_all(client: Client, ns: str) -> None:
    api = CustomObjectsApi(client.api_client)
    api.delete_collection_namespaced_custom_object(
        GROUP, VERSION, ns, "sandboxes", grace_period_seconds=0
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sandboxes", type=int, default=200, help="sandboxes per series")
    ap.add_argument("--concurrency", default="1,16", help="concurrency levels")
    ap.add_argument("--image", default="docker.io/fast-sandbox/busybox:dev")
    ap.add_argument("--agent-image", default="fast-sandbox/agent:dev")
    ap.add_argument("--rust", type=Path, help="the Rust benchmark's results.json, to compare")
    ap.add_argument("--out", type=Path, default=Path("target/bench-python"))
    args = ap.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]

    client = Client.auto()
    core = CoreV1Api(client.api_client)
    ns_obj = core.create_namespace(V1Namespace(metadata=V1ObjectMeta(generate_name="bench-sdk-")))
    assert ns_obj.metadata is not None
    ns = str(ns_obj.metadata.name)
    print(f"namespace {ns}", file=sys.stderr)
    try:
        results = bench(args, levels, Client.auto(namespace=ns), ns)
    finally:
        core.delete_namespace(ns, propagation_policy="Background")
    report(results, args)


def bench(
    args: argparse.Namespace, levels: list[int], client: Client, ns: str
) -> list[dict[str, Any]]:
    # One more than the series needs: the warm-up sandbox holds a slot too.
    slots = math.ceil((args.sandboxes + 1) / AGENTS)
    client.call(
        client.custom.create_namespaced_custom_object,
        GROUP,
        VERSION,
        ns,
        "sandboxpools",
        {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": "SandboxPool",
            "metadata": {"name": "bench"},
            "spec": {
                "capacity": {"poolMin": AGENTS, "poolMax": AGENTS},
                "maxSandboxesPerAgent": slots,
                "warmImages": [args.image],
                "agentTemplate": {
                    "spec": {"containers": [{"name": "agent", "image": args.agent_image}]}
                },
            },
        },
    )
    watch_pool(
        client,
        ns,
        lambda p: (p.get("status") or {}).get("readyAgents", 0) >= AGENTS,
        f"{AGENTS} ready agents",
    )
    results: list[dict[str, Any]] = []
    for c in levels:
        # Each series has the process to itself: the SDK's client (and its
        # namespace watch) exists only during its series, the plain client's
        # watch only during its own.
        sdk_client = Client.auto(namespace=ns)
        # Warm up: connections, and the SDK's watch of the namespace.
        Sandbox.create("bench", args.image, command=["/bin/sleep", "3600"], client=sdk_client)

        def sdk(i: int, c: int = c, client: Client = sdk_client) -> float:
            t0 = time.perf_counter()
            Sandbox.create(
                "bench",
                args.image,
                name=f"sdk-c{c}-{i}",
                command=["/bin/sleep", "3600"],
                timeout=120,
                client=client,
            )
            return (time.perf_counter() - t0) * 1000

        print(f"SDK: {args.sandboxes} at concurrency {c}", file=sys.stderr)
        results.append(row("python SDK Sandbox.create", c, series(args.sandboxes, c, sdk)))
        sdk_client.close()
        delete_all(client, ns)
        slots_free(client, ns)

        plain = Client.auto(namespace=ns)
        arrivals = Arrivals(plain, ns)
        custom = CustomObjectsApi(plain.api_client)
        custom.create_namespaced_custom_object(
            GROUP, VERSION, ns, "sandboxes", manifest(f"warm-c{c}", args.image)
        )

        def raw(
            i: int, c: int = c, custom: CustomObjectsApi = custom, arrivals: Arrivals = arrivals
        ) -> float:
            name = f"raw-c{c}-{i}"
            done, at = arrivals.expect(name)
            t0 = time.perf_counter()
            custom.create_namespaced_custom_object(
                GROUP, VERSION, ns, "sandboxes", manifest(name, args.image)
            )
            if not done.wait(120):
                sys.exit(f"{name} not Running after 120 s")
            return (at[0] - t0) * 1000

        print(f"plain client: {args.sandboxes} at concurrency {c}", file=sys.stderr)
        results.append(
            row("python client, create + watch event", c, series(args.sandboxes, c, raw))
        )
        arrivals.stop()
        plain.close()
        delete_all(client, ns)
        slots_free(client, ns)
    return results


def report(results: list[dict[str, Any]], args: argparse.Namespace) -> None:
    rust: dict[int, dict[str, Any]] = {}
    if args.rust:
        written = json.loads(args.rust.read_text())
        # The Rust benchmark writes {"series": [...], "stages": ...}.
        series_rows = written["series"] if isinstance(written, dict) else written
        for r in series_rows:
            if r.get("name") == "sandbox":
                rust[int(r["concurrency"])] = r
    rows = list(results)
    for c, r in sorted(rust.items()):
        rows.append({**r, "name": "Rust e2e benchmark (sandbox)", "concurrency": c})
    lines = [
        "| configuration | concurrency | runs | p50 ms | p95 ms | p99 ms | mean ms "
        "| p50 - Rust p50 ms |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows, key=lambda r: (r["concurrency"], r["name"])):
        base = rust.get(r["concurrency"])
        delta = f"{r['p50_ms'] - base['p50_ms']:+.1f}" if base else "n/a"
        lines.append(
            f"| {r['name']} | {r['concurrency']} | {r['runs']} | {r['p50_ms']:.1f} | "
            f"{r['p95_ms']:.1f} | {r['p99_ms']:.1f} | {r['mean_ms']:.1f} | {delta} |"
        )
    by = {(r["name"], r["concurrency"]): r for r in results}
    for c in sorted({r["concurrency"] for r in results}):
        sdk = by.get(("python SDK Sandbox.create", c))
        plain = by.get(("python client, create + watch event", c))
        if sdk and plain:
            lines.append("")
            lines.append(
                f"At concurrency {c}, the SDK's p50 is "
                f"{sdk['p50_ms'] - plain['p50_ms']:+.1f} ms from the plain client's "
                "create + watch event in the same run."
            )
    table = "\n".join(lines)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    print(table)
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
