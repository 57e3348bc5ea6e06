"""Benchmark `embedrank serve` against the direct runtime on the same inputs (docs/serve.md).

The server runs as its own process (`embedrank serve`, real HTTP, real JSON). The clients are
asyncio tasks here, one keep-alive HTTP/1.1 connection each, sending their requests one after
another (a closed loop), written on asyncio streams: httpx's connection pool, not the server,
was the limit at 64 connections on the 2-core machine of docs/serve.md. The direct runtime
baseline runs the same requests as threads calling ``Embedder.embed_queries`` /
``embed_documents`` / ``Reranker.score`` on one shared model in this process, with the same
concurrency. Client, server and baseline share the machine's cores.

    python benchmarks/serve_bench.py --embedder DIR [--reranker DIR] [--clients 1,8,64] [--json F]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor

from common import cpu_model

WORDS = ("vector search engine query document passage rerank model token batch server client "
         "latency throughput embedding collection payload filter index cluster node shard").split()


def texts(n: int, seed: int, low: int = 4, high: int = 40) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) for _ in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args) -> tuple[subprocess.Popen, int]:
    port = free_port()
    command = [sys.executable, "-c", "from embedrank.cli import main; main()", "serve", "--port",
               str(port), "--log-level", "warning", "--embedder", f"e={args.embedder}"]
    command += ["--reranker", f"r={args.reranker}"] if args.reranker else []
    command += ["--threads", str(args.threads)] if args.threads else []
    command += ["--device", args.device]
    process = subprocess.Popen(command)
    for _ in range(1200):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health")
            return process, port
        except OSError:
            if process.poll() is not None:
                raise SystemExit("embedrank serve did not start") from None
            time.sleep(0.1)
    raise SystemExit("embedrank serve did not answer /health")


def summary(latencies: list[float], wall: float) -> dict:
    ordered = sorted(latencies)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"requests": len(ordered), "rps": len(ordered) / wall, "p50_ms": 1000 * pick(0.50),
            "p99_ms": 1000 * pick(0.99)}


async def _connection(port: int, queue: list, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    while queue:
        path, body = queue.pop()
        data = json.dumps(body).encode()
        head = (f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
                f"content-length: {len(data)}\r\n\r\n").encode()
        start = time.perf_counter()
        writer.write(head + data)
        await writer.drain()
        status, length = await reader.readline(), 0
        while (line := await reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            length = int(value) if name.lower() == "content-length" else length
        await reader.readexactly(length)
        if b" 200 " not in status:
            raise SystemExit(f"{path}: {status.decode().strip()}")
        latencies.append(time.perf_counter() - start)
    writer.close()


async def http_level(port: int, bodies: list[tuple[str, dict]], clients: int) -> dict:
    latencies: list[float] = []
    queue = list(reversed(bodies))
    start = time.perf_counter()
    await asyncio.gather(*(_connection(port, queue, latencies) for _ in range(clients)))
    return summary(latencies, time.perf_counter() - start)


def direct_level(calls: list, clients: int) -> dict:
    latencies: list[float] = []
    lock = threading.Lock()

    def timed(call) -> None:
        start = time.perf_counter()
        call()
        with lock:
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        list(pool.map(timed, calls))
    return summary(latencies, time.perf_counter() - start)


def workloads(args, embedder, reranker) -> dict[str, tuple[list, list]]:
    """name -> (HTTP requests, direct calls) on the same inputs."""
    chosen, out = args.workloads.split(","), {}
    queries = texts(args.requests, seed=1)
    if "search" in chosen:
        out["qdrant-search (1 query)"] = (
            [("/qdrant/infer", {"inputs": [{"data": q, "data_type": "text", "model": "e",
                                            "options": None}], "inference": "search", "token": None})
             for q in queries],
            [lambda q=q: embedder.embed_queries([q]) for q in queries])
    n, k = args.requests // 4, args.docs_per_request
    if "update" in chosen:
        docs = [texts(k, 100 + i, 20, 120) for i in range(n)]
        out[f"qdrant-update ({k} docs)"] = (
            [("/qdrant/infer", {"inputs": [{"data": d, "data_type": "text", "model": "e",
                                            "options": None} for d in batch],
                                "inference": "update", "token": None}) for batch in docs],
            [lambda b=batch: embedder.embed_documents(b) for batch in docs])
    if reranker is not None and "rerank" in chosen:
        pairs = [(q, texts(k, 500 + i, 20, 120)) for i, q in enumerate(queries[:n])]
        out[f"rerank (1 x {k})"] = (
            [("/rerank", {"query": q, "documents": d, "model": "r"}) for q, d in pairs],
            [lambda q=q, d=d: reranker.score(q, d) for q, d in pairs])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedder", required=True, help="embedder model directory")
    parser.add_argument("--reranker", default=None, help="reranker model directory")
    parser.add_argument("--clients", default="1,8,64", help="concurrency levels, comma-separated")
    parser.add_argument("--requests", type=int, default=256,
                        help="search requests per level (update and rerank: a quarter of it)")
    parser.add_argument("--docs-per-request", type=int, default=16)
    parser.add_argument("--workloads", default="search,update,rerank",
                        help="comma-separated: search (1 query per request), update (a batch of "
                             "documents), rerank (1 query x documents)")
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads per model")
    parser.add_argument("--device", default="cpu", help="cpu or cuda, for the server and the direct runtime")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()

    from embedrank.runtime import Embedder, Reranker

    kwargs = {"threads": args.threads} if args.threads else {}
    kwargs["device"] = args.device
    embedder = Embedder.load(args.embedder, **kwargs)
    reranker = Reranker.load(args.reranker, **kwargs) if args.reranker else None
    load_before = os.getloadavg()
    server, port = start_server(args)
    rows = []
    try:
        for name, (bodies, calls) in workloads(args, embedder, reranker).items():
            asyncio.run(http_level(port, bodies[:8], 1))  # warm-up
            for clients in [int(c) for c in args.clients.split(",")]:
                served = asyncio.run(http_level(port, bodies, clients))
                direct = direct_level(calls, clients)
                rows.append({"workload": name, "clients": clients, "serve": served, "direct": direct})
                print(f"{name:26} {clients:3} clients | serve {served['rps']:7.1f} req/s p50 "
                      f"{served['p50_ms']:7.1f} ms p99 {served['p99_ms']:7.1f} ms | direct "
                      f"{direct['rps']:7.1f} req/s p50 {direct['p50_ms']:7.1f} ms p99 "
                      f"{direct['p99_ms']:7.1f} ms", flush=True)
    finally:
        server.terminate()
        server.wait(timeout=60)
    if args.json:
        machine = {"cpu": cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
                   "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
