"""``embedrank ops``: build and locate embedrank's ONNX Runtime custom-op library."""

from __future__ import annotations

from pathlib import Path

import click


@click.group()
def ops() -> None:
    """embedrank's ONNX Runtime custom ops (opt-in: needed by exports made with --rewrites swiglu or rope)."""


@ops.command("build")
@click.option("--cuda/--cpu-only", default=None,
              help="Also compile the CUDA kernel (nvcc) [default: when nvcc is found].")
@click.option("--arch", "archs", default=None, metavar="LIST",
              help="GPU compute capabilities, comma-separated [default: 80,86,89,90].")
@click.option("--ort-include", type=click.Path(exists=True, file_okay=False), default=None,
              help="ONNX Runtime's C API headers [default: $ORT_INCLUDE, else /usr/include/onnxruntime "
                   "from libonnxruntime-dev].")
@click.option("--out", type=click.Path(dir_okay=False), default=None,
              help="Write the library here [default: the embedrank cache, where the runtime looks].")
@click.option("--force", is_flag=True, help="Rebuild even if the library exists.")
def build_cmd(cuda, archs, ort_include, out, force) -> None:
    """Compile the library; prints its path."""
    from embedrank import ops as lib

    names = tuple(a.strip() for a in archs.split(",") if a.strip()) if archs else lib.DEFAULT_ARCHS
    target = Path(out) if out else lib.default_library(lib.find_nvcc() is not None if cuda is None else cuda)
    cached = target.is_file() and not force
    click.echo("the embedrank ops library is already built (--force rebuilds it)" if cached
               else "building the embedrank ops library ...", err=True)
    click.echo(str(lib.build(cuda=cuda, out=out, ort_include=ort_include, archs=names, force=force)))


@ops.command("path")
@click.option("--cuda", is_flag=True, help="The build with the CUDA kernel.")
def path_cmd(cuda) -> None:
    """Print the library the runtime would load (error if none is built)."""
    from embedrank import ops as lib

    click.echo(str(lib.find_library(cuda=cuda)))
