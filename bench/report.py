"""``embedrank bench --report DIR``: a markdown page with tables and PNG plots (matplotlib)."""

from __future__ import annotations

import json
from pathlib import Path

from embedrank.errors import require

REPORT_NAME = "bench.md"
THROUGHPUT_PNG = "throughput_vs_length.png"
LATENCY_PNG = "latency.png"
RESULTS_JSON = "bench_full.json"


def _speed_table(section: dict, unit: str) -> list[str]:
    base = section.get("torch")
    rows = [f"| backend | docs/s | tokens/s | p50 ms {unit} | p99 ms {unit} | vs torch eager |",
            "|---|---:|---:|---:|---:|---:|"]
    for name, m in section.items():
        ratio = f"{m['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        rows.append(f"| {name} | {m['docs_per_s']:,.1f} | {m['tokens_per_s']:,.0f} | "
                    f"{m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {ratio} |")
    return rows


def _sweep_table(sweep: dict) -> list[str]:
    names = list(sweep)
    lengths = list(next(iter(sweep.values())))
    rows = ["| tokens per doc | " + " | ".join(f"{n} tokens/s" for n in names) + " |",
            "|---:|" + "---:|" * len(names)]
    for n in lengths:
        rows.append(f"| {n} | " + " | ".join(f"{sweep[b][n]:,.0f}" for b in names) + " |")
    return rows


def markdown(full: dict, images: bool = True) -> str:
    cfg = full["config"]
    lo, hi = cfg["lengths"]
    lines = [f"# embedrank bench: {full['model']}", "",
             f"- device: {full['device']}; ONNX dtype: {full['dtype']}; PyTorch dtype: "
             f"{'bf16' if cfg['device'].startswith('cuda') else 'fp32'}",
             f"- documents: {cfg['docs']} with lengths drawn uniformly from {lo}:{hi} tokens "
             f"(seed {cfg['seed']}), {cfg['batch_size']} per embedding call; rerank: one query and "
             f"{cfg['rerank_docs']} documents per call, {cfg['rerank_calls']} calls",
             f"- padding waste of {cfg['batch_size']}-document batches: "
             f"{full['padding_waste']['unsorted']:.0%} in arrival order, "
             f"{full['padding_waste']['runtime_plan']:.0%} with the runtime's length-sorted "
             "token-budget plan (used by every backend here)", ""]
    if full.get("embed"):
        lines += ["## Embedding (latency per call)", "", *_speed_table(full["embed"], "/call"), ""]
    if full.get("rerank"):
        lines += [f"## Rerank top-{cfg['rerank_docs']} (latency per call)", "",
                  *_speed_table(full["rerank"], "/call"), ""]
    if full.get("sweep"):
        lines += [f"## Throughput vs length ({cfg['batch_size']} documents of one length)", "",
                  *_sweep_table(full["sweep"]), ""]
    if full.get("ingest"):
        i, q = full["ingest"], full.get("query", {})
        lines += ["## Qdrant (in-memory local mode)", "",
                  "| ingest docs/s (embed + upsert) | embed-only docs/s | query p50 ms | query p99 ms |",
                  "|---:|---:|---:|---:|",
                  f"| {i['docs_per_s']:,.1f} | {i['embed_only_docs_per_s']:,.1f} | "
                  f"{q.get('p50_ms', float('nan')):.2f} | {q.get('p99_ms', float('nan')):.2f} |", "",
                  "Query = embed the query + search the top 100 + rerank them to a top 10 "
                  "(with a reranker), through embedrank.plugin.QdrantClient.", ""]
    if images:
        lines += [f"![throughput vs length]({THROUGHPUT_PNG})", "", f"![latency]({LATENCY_PNG})", ""]
    return "\n".join(lines)


def plot(full: dict, out: Path, prefix: str = "") -> list[Path]:
    """Throughput-vs-length and latency-distribution PNGs; returns their paths."""
    require("matplotlib", "bench")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = [out / (prefix + THROUGHPUT_PNG), out / (prefix + LATENCY_PNG)]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for name, points in full["sweep"].items():
        ax.plot([int(n) for n in points], list(points.values()), marker="o", label=name)
    lengths = [int(n) for n in next(iter(full["sweep"].values()))]
    ax.set(xscale="log", xlabel="tokens per document", ylabel="tokens/s",
           title=f"Embedding throughput, {full['config']['batch_size']} docs per call")
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(paths[0])
    plt.close(fig)

    sections = [(k, v) for k, v in full["latencies_ms"].items() if k != "query" and v]
    if full["latencies_ms"].get("query"):
        sections.append(("query", {"onnx + qdrant": full["latencies_ms"]["query"]}))
    fig, axes = plt.subplots(1, len(sections), figsize=(3.4 * len(sections), 3.4), dpi=100,
                             squeeze=False)
    for ax, (section, per_backend) in zip(axes[0], sections, strict=True):
        ax.boxplot(list(per_backend.values()), whis=(1, 99), showfliers=True)
        ax.set_xticks(range(1, len(per_backend) + 1), list(per_backend), fontsize=8)
        ax.set(title=f"{section} latency per call", ylabel="ms")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def write_report(full: dict, out: str | Path) -> Path:
    """bench.md + the two plots + every measurement as JSON, in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot(full, out)
    (out / RESULTS_JSON).write_text(json.dumps(full, indent=2), encoding="utf-8")
    path = out / REPORT_NAME
    path.write_text(markdown(full), encoding="utf-8")
    return path
