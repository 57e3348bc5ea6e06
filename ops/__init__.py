"""embedrank's ONNX Runtime custom ops (the ``ai.embedrank`` domain), built from source on demand.

Two ops (``ops.h``), each used by a graph rewrite of :mod:`embedrank.export.cuda_rewrites`:

* ``SwiGLU``: the SiLU-gated product of an MLP's gate and up projections in one pass, which
  ONNX Runtime 1.31 has no CUDA kernel for (the ``"swiglu"`` rewrite);
* ``QKVRotary``: from the packed q / k / v projections to the inputs of causal attention in one
  pass (Qwen3's q / k RMS norms, the rotary embedding, key / value heads repeated for their query
  heads), where ONNX Runtime's GroupQueryAttention spends a quarter of the GPU time in its own
  unpack kernel (the ``"rope"`` rewrite).

The library always has CPU kernels, and CUDA kernels when built with ``nvcc``; it needs only ONNX
Runtime's C API headers, not its binaries. ``embedrank ops build`` compiles it into the cache;
exports that use it record that in their manifest and the runtime registers it with the session.

The library is opt-in: no default export uses it, so the same ``embedrank export`` command gives
the same graph on every machine, built or not.

Headers come from an installed package, never from a download: ``--ort-include DIR`` /
``$ORT_INCLUDE``, else ``/usr/include/onnxruntime`` (Debian 13's / Ubuntu's ``libonnxruntime-dev``).
The C API is backward compatible: a library built against API 21 loads in every later ONNX
Runtime; one built against newer headers needs an ONNX Runtime at least that new, and refuses
older ones with an error saying so.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from embedrank.errors import OpsError

DOMAIN = "ai.embedrank"
OPS = ("SwiGLU", "QKVRotary")  # what the library registers in DOMAIN
SOURCES = ("ops.h", "ops.cc", "ops_cuda.cu")
LIBRARY_ENV = "EMBEDRANK_OPS_LIBRARY"  # an explicit library file, used as is
# compute capabilities compiled ahead of time (Ampere, Ada, Hopper); PTX of the last one lets
# newer GPUs JIT-compile it
DEFAULT_ARCHS = ("80", "86", "89", "90")
SYSTEM_HEADERS = Path("/usr/include/onnxruntime")  # Debian's libonnxruntime-dev
_HERE = Path(__file__).parent


def cache_dir() -> Path:
    return Path(os.environ.get("EMBEDRANK_CACHE", Path.home() / ".cache" / "embedrank")) / "ops"


def _digest() -> str:
    """Of the sources: a changed kernel (a new embedrank) builds into a new directory."""
    h = hashlib.sha256()
    for name in SOURCES:
        h.update(name.encode() + b"\0" + (_HERE / name).read_bytes())
    return h.hexdigest()[:16]


def library_name(cuda: bool) -> str:
    return "libembedrank_ops_cuda.so" if cuda else "libembedrank_ops.so"


def default_library(cuda: bool) -> Path:
    return cache_dir() / _digest() / library_name(cuda)


def find_library(cuda: bool) -> Path:
    """The library to register: ``$EMBEDRANK_OPS_LIBRARY``, else the built one of this embedrank
    (for ``cuda``: the CUDA build; on CPU either build serves). Raises :class:`OpsError`."""
    explicit = os.environ.get(LIBRARY_ENV)
    if explicit:
        if not Path(explicit).is_file():
            raise OpsError(f"${LIBRARY_ENV}={explicit!r} is not a file: point it at a built "
                           "libembedrank_ops*.so, or unset it and run `embedrank ops build`")
        return Path(explicit)
    for candidate in [default_library(True)] + ([] if cuda else [default_library(False)]):
        if candidate.is_file():
            return candidate
    need = " with its CUDA kernel" if cuda else ""
    build = f"embedrank ops build{' --cuda' if cuda else ''}"
    raise OpsError(f"embedrank's custom-op library ({DOMAIN}, used by exports made with --rewrites "
                   f"swiglu or rope) is not built{need}: run `{build}` "
                   f"(or set ${LIBRARY_ENV})")


def ort_headers(include: str | os.PathLike | None = None) -> Path:
    """A directory holding ``onnxruntime_cxx_api.h``: ``include``, ``$ORT_INCLUDE`` or the system's."""
    for candidate in (include, os.environ.get("ORT_INCLUDE")):
        if candidate:
            if not (Path(candidate) / "onnxruntime_cxx_api.h").is_file():
                raise OpsError(f"{str(candidate)!r} has no onnxruntime_cxx_api.h (ONNX Runtime's C/C++ "
                               "API headers, e.g. Debian's libonnxruntime-dev)")
            return Path(candidate)
    if (SYSTEM_HEADERS / "onnxruntime_cxx_api.h").is_file():
        return SYSTEM_HEADERS
    raise OpsError("building the ops library needs ONNX Runtime's C API headers: install "
                   "libonnxruntime-dev (Debian 13, Ubuntu 24.04), or pass --ort-include DIR / set "
                   "$ORT_INCLUDE to a directory holding onnxruntime_cxx_api.h")


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def find_nvcc() -> str | None:
    local = Path(os.environ.get("CUDA_HOME", "/usr/local/cuda")) / "bin" / "nvcc"
    return shutil.which("nvcc") or (str(local) if local.is_file() else None)


def _run(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise OpsError(f"building the ops library failed:\n$ {' '.join(cmd)}\n{done.stderr[-3000:]}")


def build(cuda: bool | None = None, out: str | os.PathLike | None = None,
          ort_include: str | os.PathLike | None = None, archs: tuple[str, ...] = DEFAULT_ARCHS,
          force: bool = False) -> Path:
    """Compile the library and return its path (the cache's :func:`default_library` unless ``out``).

    ``cuda``: also the CUDA kernel (nvcc); default when nvcc is found. An existing build is
    reused unless ``force``. The file appears only once it is complete.
    """
    nvcc = find_nvcc()
    cuda = nvcc is not None if cuda is None else cuda
    if cuda and nvcc is None:
        raise OpsError("--cuda needs nvcc (the CUDA toolkit) on PATH or in $CUDA_HOME/bin")
    if shutil.which("g++") is None:
        raise OpsError("building the ops library needs g++")
    if cuda and (not archs or not all(a.isdigit() for a in archs)):
        raise OpsError(f"archs must be compute capabilities such as 90 (sm_90), got {archs!r}")
    target = Path(out) if out is not None else default_library(cuda)
    if target.is_file() and not force:
        return target
    include = ort_headers(ort_include)
    _mkdir(target.parent)
    work = Path(tempfile.mkdtemp(prefix=".build.", dir=target.parent))
    try:
        cxx = ["g++", "-O3", "-std=c++17", "-fPIC", "-fvisibility=hidden", f"-I{include}", f"-I{_HERE}"]
        if not cuda:
            _run([*cxx, "-shared", str(_HERE / "ops.cc"), "-o", str(work / "lib.so")])
        else:
            gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
            gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
            _run([nvcc, "-O3", "-std=c++17", "-Xcompiler", "-fPIC,-fvisibility=hidden", *gencode, "-c",
                  str(_HERE / "ops_cuda.cu"), "-o", str(work / "cuda.o")])
            _run([*cxx, "-DEMBEDRANK_WITH_CUDA", "-c", str(_HERE / "ops.cc"), "-o", str(work / "op.o")])
            _run([nvcc, "-shared", "-Xcompiler", "-fPIC", str(work / "op.o"), str(work / "cuda.o"),
                  "-o", str(work / "lib.so")])
        (work / "lib.so").replace(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target
