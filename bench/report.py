"""``embedrank bench --report DIR``: a markdown page with tables and PNG plots (matplotlib)."""

from __future__ import annotations

import json
from pathlib import Path

from embedrank.errors import require

REPORT_NAME = "bench.md"
THROUGHPUT_PNG = "throughput_vs_length.png"
LATENCY_PNG = "latency.png"
RESULTS_JSON = "bench_full.json"


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def _speed_table(section: dict, ratios: dict, base: str | None, unit: str) -> list[str]:
    """Whole call and forward figures of every row, and the ratios to ``base``."""
    rows = [f"| row | tokens/s | docs/s | p50 ms {unit} | p99 ms {unit} | forward tokens/s | "
            f"forward p50 ms | x {base or 'baseline'}, call | x {base or 'baseline'}, forward |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, m in section.items():
        f, r = m.get("forward"), ratios.get(name, {})
        fwd = f"{f['tokens_per_s']:,.0f} | {f['p50_ms']:.2f}" if f else "- | -"
        label = f"**{name}** (baseline)" if name == base else name
        forward_ratio = _x(r.get("forward")) + (" (call)" if r and not f else "")
        rows.append(f"| {label} | {m['tokens_per_s']:,.0f} | {m['docs_per_s']:,.1f} | "
                    f"{m['p50_ms']:.2f} | {m['p99_ms']:.2f} | {fwd} | {_x(r.get('call'))} | "
                    f"{forward_ratio} |")
    return rows


def _sweep_table(sweep: dict, forward: dict) -> list[str]:
    cols = [(n, sweep[n], "call") for n in sweep]
    cols += [(n, forward[n], "forward") for n in forward]
    lengths = list(next(iter(sweep.values())))
    rows = ["| tokens per doc | " + " | ".join(f"{n} {kind}" for n, _, kind in cols) + " |",
            "|---:|" + "---:|" * len(cols)]
    for n in lengths:
        rows.append(f"| {n} | " + " | ".join(f"{points[n]:,.0f}" for _, points, _ in cols) + " |")
    return rows


def _rows_text(full: dict) -> list[str]:
    """What each row runs and what its figures include."""
    rows = {}
    for section in ("embed", "rerank"):
        rows.update(full.get("rows", {}).get(section, {}))
    if not rows:
        return []
    lines = ["## What each row includes", ""]
    first = next(iter(rows.values()))
    lines += [f"- **tokens/s, docs/s, p50, p99** (every row): {first['call']}.",
              "  Throughput is that of the median of the timed passes; p50 / p99 are over every "
              "timed call."]
    for label, forward in dict.fromkeys(("ONNX rows" if n == "onnx" else "PyTorch rows", r["forward"])
                                        for n, r in rows.items() if r["forward"]):
        lines += [f"- **forward** ({label}): {forward}."]
    lines += ["- **x baseline**: each row over the strongest PyTorch row of the same run (the "
              "highest forward tokens/s): call over call, and forward over forward (the ONNX "
              "forward also holds the input and output copies the PyTorch forward leaves out).", ""]
    described = full.get("rows", {})
    for section in ("embed", "rerank"):
        for name, r in described.get(section, {}).items():
            other = described.get("rerank" if section == "embed" else "embed", {}).get(name)
            if other is None or other["runs"] != r["runs"]:
                lines.append(f"- `{name}` ({section}): {r['runs']}.")
            elif section == "embed":  # the same in both sections: once
                lines.append(f"- `{name}`: {r['runs']}.")
    return [*lines, ""]


def markdown(full: dict, images: bool = True) -> str:
    cfg = full["config"]
    lo, hi = cfg["lengths"]
    lines = [f"# embedrank bench: {full['model']}", "",
             f"- device: {full['device']}; ONNX dtype: {full['dtype']}; PyTorch dtype: "
             f"{'bf16' if cfg['device'].startswith('cuda') else 'fp32'}; {cfg.get('warmup', 2)} "
             f"untimed calls, then {cfg.get('repeats', 1)} timed passes over every call",
             f"- documents: {cfg['docs']} with lengths drawn uniformly from {lo}:{hi} tokens "
             f"(seed {cfg['seed']}), {cfg['batch_size']} per embedding call" + (
                 f"; rerank: one query and {cfg['rerank_docs']} documents per call, "
                 f"{cfg['rerank_calls']} calls" if full.get("rerank") else ""),
             f"- padding waste of {cfg['batch_size']}-document batches: "
             f"{full['padding_waste']['unsorted']:.0%} in arrival order, "
             f"{full['padding_waste']['runtime_plan']:.0%} with the runtime's length-sorted "
             "token-budget plan (used by every backend here)", ""]
    for section, title in (("embed", "Embedding"), ("rerank", f"Rerank top-{cfg['rerank_docs']}")):
        if full.get(section):
            lines += [f"## {title} (latency per call)", "",
                      *_speed_table(full[section], full.get("vs_baseline", {}).get(section, {}),
                                    full.get("baseline", {}).get(section), "/call"), ""]
    if full.get("sweep"):
        lines += [f"## Throughput vs length ({cfg['batch_size']} documents of one length, tokens/s)",
                  "", *_sweep_table(full["sweep"], full.get("sweep_forward", {})), ""]
    lines += _rows_text(full)
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
        line, = ax.plot([int(n) for n in points], list(points.values()), marker="o", label=name)
        forward = full.get("sweep_forward", {}).get(name)
        if forward:
            ax.plot([int(n) for n in forward], list(forward.values()), marker="o", linestyle="--",
                    color=line.get_color(), label=f"{name} forward")
    lengths = [int(n) for n in next(iter(full["sweep"].values()))]
    ax.set(xscale="log", xlabel="tokens per document", ylabel="tokens/s",
           title=f"Embedding throughput, {full['config']['batch_size']} docs per call")
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.minorticks_off()
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
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
