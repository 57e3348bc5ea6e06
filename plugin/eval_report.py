"""``embedrank eval --report DIR``: a markdown page with the metrics table and a PNG bar chart."""

from __future__ import annotations

import json
from pathlib import Path

from embedrank.errors import require
from embedrank.plugin.evaluate import STAGES, EvalResult, metric_names

REPORT_NAME = "eval.md"
METRICS_PNG = "metrics.png"
RESULTS_JSON = "eval.json"


def _metrics_table(metrics: dict[str, dict[str, float]]) -> list[str]:
    stages = list(metrics)
    rows = ["| metric | " + " | ".join(STAGES.get(s, s) for s in stages) + " |",
            "|---|" + "---:|" * len(stages)]
    for m in metric_names(metrics):
        rows.append(f"| {m} | " + " | ".join(f"{metrics[s][m]:.4f}" for s in stages) + " |")
    return rows


def markdown(result: EvalResult, images: bool = True) -> str:
    info, cfg = result.info, result.info["config"]
    instruction = cfg["instruction"] if cfg["instruction"] is not None else "the model's default"
    seconds = ", ".join(f"{k} {v:.1f} s" for k, v in info["seconds"].items())
    lines = [f"# embedrank eval: {Path(info['data']).name}", "",
             f"- data: {info['data']} (split {info['split']}): {info['passages']} passages "
             f"({info['empty_passages_skipped']} empty ones skipped), {info['queries']} queries",
             f"- embedder: {info['embedder']} (source {info['embedder_source']}, {info['dim']}-d)",
             f"- reranker: {info['reranker'] or 'none'}; top-k {cfg['top_k']} candidates per "
             f"query; instruction: {instruction}",
             f"- time: {seconds}; machine: {info['machine']}", "",
             *_metrics_table(result.metrics), "",
             "Metrics follow trec_eval as BEIR reports them (graded relevance, linear gain in "
             "nDCG); the mean is over the queries of the split.", ""]
    if images:
        lines += [f"![metrics]({METRICS_PNG})", ""]
    return "\n".join(lines)


def plot(result: EvalResult, path: Path) -> Path:
    """Grouped bars: one group per metric, one bar per stage."""
    require("matplotlib", "bench")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = metric_names(result.metrics)
    stages = list(result.metrics)
    width = 0.8 / len(stages)
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    for i, stage in enumerate(stages):
        xs = [j + (i - (len(stages) - 1) / 2) * width for j in range(len(names))]
        values = [result.metrics[stage][m] for m in names]
        bars = ax.bar(xs, values, width, label=STAGES.get(stage, stage))
        ax.bar_label(bars, fmt="%.3f", fontsize=8)
    ax.set_xticks(range(len(names)), names)
    ax.set(ylim=(0, 1.05), ylabel="score", title=f"{Path(result.info['data']).name} "
                                                   f"({result.info['split']})")
    ax.grid(alpha=0.3, axis="y")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def write_report(result: EvalResult, out: str | Path) -> Path:
    """eval.md + metrics.png + metrics and run details as JSON, in ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plot(result, out / METRICS_PNG)
    (out / RESULTS_JSON).write_text(json.dumps({"metrics": result.metrics, "info": result.info},
                                               indent=2), encoding="utf-8")
    path = out / REPORT_NAME
    path.write_text(markdown(result), encoding="utf-8")
    return path
