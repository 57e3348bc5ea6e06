"""Benchmark `embedrank serve` against the direct runtime on the same inputs (docs/serve.md).

The server runs in this process under uvicorn on a free local port (real HTTP, real JSON); the
clients are asyncio tasks over httpx, each sending its requests one after another (a closed
loop). The direct runtime baseline runs the same requests as threads calling
``Embedder.embed_queries`` / ``embed_documents`` / ``Reranker.score`` on one shared model, with
the same concurrency. Client, server and baseline share this machine's cores.

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
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

WORDS = ("vector search engine query document passage rerank model token batch server client "
         "latency throughput embedding collection payload filter index cluster node shard").split()


def texts(n: int, seed: int, low: int = 4, high: int = 40) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(low, high))) for _ in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(options):
    import uvicorn

    from embedrank.serve import create_app

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(options), host="127.0.0.1", port=port,
                                           log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    return server, thread, f"http://127.0.0.1:{port}"


def summary(latencies: list[float], wall: float) -> dict:
    ordered = sorted(latencies)
    pick = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"requests": len(ordered), "rps": len(ordered) / wall, "p50_ms": 1000 * pick(0.50),
            "p99_ms": 1000 * pick(0.99), "mean_ms": 1000 * statistics.fmean(ordered)}


async def http_level(url: str, bodies: list[tuple[str, dict]], clients: int) -> dict:
    import httpx

    latencies: list[float] = []
    queue = list(reversed(bodies))
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=600) as client:
        async def one_client() -> None:
            while queue:
                path, body = queue.pop()
                start = time.perf_counter()
                response = await client.post(path, json=body)
                response.raise_for_status()
                latencies.append(time.perf_counter() - start)

        start = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(clients)))
        wall = time.perf_counter() - start
    return summary(latencies, wall)


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
    queries = texts(args.requests, seed=1)
    chosen = args.workloads.split(",")
    out = {}
    if "search" in chosen:
        out["qdrant-search (1 query)"] = (
            [("/qdrant/infer", {"inputs": [{"data": q, "data_type": "text", "model": "e",
                                            "options": None}], "inference": "search", "token": None})
             for q in queries],
            [lambda q=q: embedder.embed_queries([q]) for q in queries])
    docs = [texts(args.docs_per_request, 100 + i, 20, 120) for i in range(args.requests // 4)]
    if "update" in chosen:
        out[f"qdrant-update ({args.docs_per_request} docs)"] = (
            [("/qdrant/infer", {"inputs": [{"data": d, "data_type": "text", "model": "e",
                                            "options": None} for d in batch],
                                "inference": "update", "token": None}) for batch in docs],
            [lambda b=batch: embedder.embed_documents(b) for batch in docs])
    if reranker is not None and "rerank" in chosen:
        pairs = [(q, texts(args.docs_per_request, 500 + i, 20, 120)) for i, q in
                 enumerate(queries[: args.requests // 4])]
        out[f"rerank (1 x {args.docs_per_request})"] = (
            [("/rerank", {"query": q, "documents": d, "model": "r"}) for q, d in pairs],
            [lambda q=q, d=d: reranker.score(q, d) for q, d in pairs])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedder", required=True, help="embedder model directory")
    parser.add_argument("--reranker", default=None, help="reranker model directory")
    parser.add_argument("--clients", default="1,8,64", help="concurrency levels, comma-separated")
    parser.add_argument("--requests", type=int, default=512, help="requests per level and workload")
    parser.add_argument("--docs-per-request", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads per model")
    parser.add_argument("--workloads", default="search,update,rerank",
                        help="comma-separated: search (1 query per request), update (a batch of "
                             "documents), rerank (1 query x documents)")
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()

    from embedrank.runtime import Embedder, Reranker
    from embedrank.serve import ModelSpec, ServeOptions

    kwargs = {"threads": args.threads} if args.threads else {}
    embedder = Embedder.load(args.embedder, **kwargs)
    reranker = Reranker.load(args.reranker, **kwargs) if args.reranker else None
    options = ServeOptions(embedders=(ModelSpec("e", Path(args.embedder)),),
                           rerankers=(ModelSpec("r", Path(args.reranker)),) if args.reranker else (),
                           threads=args.threads)
    load_before = os.getloadavg()
    server, thread, url = start_server(options)
    levels = [int(c) for c in args.clients.split(",")]
    rows = []
    try:
        for name, (bodies, calls) in workloads(args, embedder, reranker).items():
            asyncio.run(http_level(url, bodies[:8], 1))  # warm-up
            for clients in levels:
                served = asyncio.run(http_level(url, bodies, clients))
                direct = direct_level(calls, clients)
                rows.append({"workload": name, "clients": clients, "serve": served, "direct": direct})
                print(f"{name:28} {clients:3} clients | serve {served['rps']:8.1f} req/s p50 "
                      f"{served['p50_ms']:7.1f} ms p99 {served['p99_ms']:7.1f} ms | direct "
                      f"{direct['rps']:8.1f} req/s p50 {direct['p50_ms']:7.1f} ms p99 "
                      f"{direct['p99_ms']:7.1f} ms", flush=True)
    finally:
        server.should_exit = True
        thread.join()
    if args.json:
        machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                   "loadavg_before": load_before, "loadavg_after": os.getloadavg()}
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "args": vars(args), "rows": rows}, f, indent=1)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
