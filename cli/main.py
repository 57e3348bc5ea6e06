"""The ``embedrank`` command line. Commands only parse arguments and call library functions."""

from __future__ import annotations

import json
import sys

import click

from embedrank import __version__
from embedrank.errors import EmbedrankError


class _Group(click.Group):
    """Turns an EmbedrankError, or a known error of Qdrant's (:func:`embedrank.cli.errors.explain`),
    into a one-line message and exit code 1 (no traceback)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EmbedrankError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(1)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            from embedrank.cli.errors import explain

            message = explain(exc)
            if message is None:
                raise
            click.secho(f"error: {message}", fg="red", err=True)
            sys.exit(1)


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="embedrank")
def main() -> None:
    """Qwen3-style embeddings and rerankers: export, verify, ingest into Qdrant, query."""


@main.group()
def export() -> None:
    """Export a checkpoint (hub id or local dir) to an ONNX model directory."""


# embedrank.export.quantize.RECIPES, named here so that the CLI loads without torch (a test
# keeps the two equal)
INT8_RECIPES = ("int8-block32", "w8-block32", "smooth-pertoken", "w8-block32-outliers")


def _export_options(fn):
    options = [
        click.argument("src"),
        click.argument("out", type=click.Path(file_okay=False)),
        click.option("--dtype", type=click.Choice(["fp32", "fp16", "int8"]), default=None,
                     help="Weights and compute precision of the graph [default: fp16 on cuda, "
                          "fp32 on cpu]."),
        click.option("--max-length", type=int, default=None,
                     help="Token limit stored in the manifest [default: min(8192, model limit)]."),
        click.option("--opset", type=int, default=None,
                     help="ONNX opset [default: 20 with --optimize fused, 17 with none]."),
        click.option("--optimize", type=click.Choice(["fused", "none"]), default=None,
                     help="fused: dynamo export + ONNX Runtime fused attention / RMSNorm ops; "
                          "none: plain TorchScript export [default: fused; none for int8]."),
        click.option("--attention", type=click.Choice(["gqa", "mha"]), default=None,
                     help="Fused attention: gqa = GroupQueryAttention on right-padded batches, "
                          "mha = MultiHeadAttention on left-padded ones [default: gqa; mha for "
                          "fp32 on cuda]."),
        click.option("--rewrites", default=None, metavar="LIST",
                     help="Graph rewrites of the fused GQA graph, comma-separated: qkv (packed QKV, "
                          "q/k norms in the op; CUDA), swiglu (one fused SwiGLU kernel), rope (embedrank's "
                          "q/k norm + rotary kernel and causal MultiHeadAttention, instead of qkv); "
                          "swiglu and rope are opt-in: they need `embedrank ops build` where the "
                          "model is exported and served; or none [default: qkv on cuda, none on cpu]."),
        click.option("--int8-recipe", type=click.Choice(INT8_RECIPES), default=None,
                     help="With --dtype int8: int8-block32 (no calibration), w8-block32 (weight-only), "
                     "smooth-pertoken (fastest; needs --calibration) or w8-block32-outliers "
                     "(weight-only, outlier channels in fp32: closest to fp32; needs --calibration) "
                     "[default: int8-block32]."),
        click.option("--calibration", type=click.Path(exists=True, dir_okay=False), default=None,
                     help="With smooth-pertoken or w8-block32-outliers: JSONL calibration texts, "
                          '{"text": ...} or {"query": ...} per line.'),
        click.option("--device", default="cpu", show_default=True,
                     help="Where to trace and verify: cpu or cuda."),
        click.option("--no-verify", is_flag=True, help="Skip the parity check against PyTorch."),
        click.option("--overwrite", is_flag=True, help="Replace OUT if it exists."),
        click.option("--trust-remote-code", is_flag=True,
                     help="Allow custom model code from the checkpoint (off by default)."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def _run_export(kind: str, src, out, dtype, max_length, opset, optimize, attention, rewrites,
                int8_recipe, calibration, device, no_verify, overwrite, trust_remote_code) -> None:
    from embedrank.export import export_model

    click.echo(f"exporting {kind} {src} -> {out} ({dtype or 'device default dtype'}) ...", err=True)
    result = export_model(kind, src, out, dtype=dtype, opset=opset, max_length=max_length,
                          verify=not no_verify, overwrite=overwrite, device=device,
                          trust_remote_code=trust_remote_code, optimize=optimize,
                          attention=attention, int8_recipe=int8_recipe, calibration=calibration,
                          rewrites=_rewrites(rewrites))
    if result.parity is not None:
        click.echo(result.parity.table())
    click.echo(f"wrote {result.out} (fingerprint {result.manifest.fingerprint[:16]})")


def _rewrites(text: str | None) -> tuple[str, ...] | None:
    if text is None:
        return None
    if text.strip() == "none":
        return ()
    names = tuple(r.strip() for r in text.split(",") if r.strip())
    if not names:
        raise click.BadParameter("give rewrite names (qkv, swiglu, rope) or 'none'",
                                 param_hint="--rewrites")
    return names


@export.command("embedder")
@_export_options
def export_embedder(**kwargs) -> None:
    """Export an embedder: graph outputs L2-normalized last-token embeddings [B, D]."""
    _run_export("embedder", **kwargs)


@export.command("reranker")
@_export_options
def export_reranker(**kwargs) -> None:
    """Export a reranker: graph outputs the yes-no logit [B] (score = sigmoid)."""
    _run_export("reranker", **kwargs)


@main.command()
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--against", "src", required=True,
              help="The PyTorch checkpoint MODEL_DIR was exported from (hub id or dir; its "
                   "manifest's source), not an exported directory.")
@click.option("--device", default="cpu", show_default=True,
              help="Where to run both sides: cpu, cuda or cuda:N.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False), default=None,
              help="Also write the figures as JSON.")
def verify(model_dir, src, device, json_out) -> None:
    """Check an exported model directory against PyTorch and print the parity figures."""
    from embedrank.export import verify as run_verify

    report = run_verify(model_dir, src, device=device)
    click.echo(report.table())
    if json_out:
        with open(json_out, "w", encoding="utf-8") as fh:
            json.dump(report.to_dict(), fh, indent=2)
    if not report.passed:
        click.secho(f"next: {report.next_step(model_dir, src)}", fg="red", err=True)
        sys.exit(1)


# Subcommands live in their own modules (heavy imports stay inside their functions).
from embedrank.cli.bench import bench  # noqa: E402
from embedrank.cli.convert import convert  # noqa: E402
from embedrank.cli.data import data  # noqa: E402
from embedrank.cli.eval import eval_cmd  # noqa: E402
from embedrank.cli.mine import mine  # noqa: E402
from embedrank.cli.ops import ops  # noqa: E402
from embedrank.cli.qdrant import demo, ingest, query  # noqa: E402
from embedrank.cli.serve import serve  # noqa: E402
from embedrank.cli.train import merge, synth, train  # noqa: E402

for _command in (ingest, query, demo, convert, train, mine, merge, synth, eval_cmd, bench, data, ops, serve):
    main.add_command(_command)
