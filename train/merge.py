"""Model merging by spherical linear interpolation, as mergekit does it (stage 3 of §3 of
the Qwen3 Embedding technical report, arXiv 2506.05176).

:func:`slerp` merges one tensor, :func:`merge_state_dicts` whole state dicts in memory and
:func:`merge_checkpoints` HF-format checkpoint directories, tensor by tensor.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from pathlib import Path

import torch
from torch import Tensor

from embedrank.errors import InputError, ModelDirError
from embedrank.outputs import check_no_overlap

DOT_THRESHOLD = 0.9995
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
COPIED_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "generation_config.json",
)


def _lerp(t: float, a: Tensor, b: Tensor) -> Tensor:
    return (1 - t) * a + t * b


def _unit(v: Tensor, eps: float) -> Tensor:
    norm = v.norm()
    return v / norm if norm > eps else v


def slerp(t: float, a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Spherical interpolation from ``a`` (t=0) to ``b`` (t=1), mergekit's recipe.

    The angle comes from the L2-normalized flattened tensors; when ``|cos| > 0.9995`` the
    result is the linear ``(1-t) a + t b``. Otherwise the coefficients ``sin((1-t) theta) /
    sin(theta)`` and ``sin(t theta) / sin(theta)`` weight the original, unnormalized tensors.
    Computed in float32 (or float64 for float64 input); the result has ``a``'s dtype.
    """
    if a.shape != b.shape:
        raise InputError(f"slerp needs equal shapes, got {tuple(a.shape)} and {tuple(b.shape)}")
    work = torch.promote_types(a.dtype, torch.float32)
    a32, b32 = a.to(work), b.to(work)
    dot = float((_unit(a32.flatten(), eps) * _unit(b32.flatten(), eps)).sum())
    if abs(dot) > DOT_THRESHOLD:
        return _lerp(t, a32, b32).to(a.dtype)
    theta = math.acos(dot)
    sin_theta = math.sin(theta)
    s0 = math.sin((1 - t) * theta) / sin_theta
    s1 = math.sin(t * theta) / sin_theta
    return (s0 * a32 + s1 * b32).to(a.dtype)


def _merge_tensor(name: str, tensors: Sequence[Tensor], t: float) -> Tensor:
    """Merge one tensor across checkpoints (see :func:`merge_state_dicts` for the weights)."""
    first = tensors[0]
    if not first.is_floating_point():
        if any(not torch.equal(first, other) for other in tensors[1:]):
            raise InputError(
                f"non-float tensor {name!r} differs between checkpoints; "
                "such buffers cannot be interpolated"
            )
        return first.clone()
    if len(tensors) == 2:
        return slerp(t, first, tensors[1])
    merged = first
    for k, other in enumerate(tensors[1:], start=2):
        merged = slerp(1 / k, merged, other)
    return merged


def _check_t(count: int, t: float) -> None:
    if count < 2:
        raise InputError(f"merging needs at least two checkpoints, got {count}")
    if not 0 <= t <= 1:
        raise InputError(f"t must lie in [0, 1], got {t}")
    if count > 2 and t != 0.5:
        raise InputError("t applies to two checkpoints only; more are merged with equal weights")


def _check_shapes(name: str, shapes: Sequence[tuple[int, ...]]) -> None:
    if any(shape != shapes[0] for shape in shapes[1:]):
        raise InputError(
            f"tensor {name!r} has different shapes across checkpoints: "
            f"{[list(s) for s in shapes]}; merge only fine-tunes of one base model"
        )


def _check_keys(key_sets: Sequence[set[str]]) -> None:
    for i, keys in enumerate(key_sets[1:], start=1):
        if keys != key_sets[0]:
            diff = sorted(keys ^ key_sets[0])[:5]
            raise InputError(
                f"checkpoint {i} does not have the same tensors as checkpoint 0 "
                f"(e.g. {diff}); merge only fine-tunes of one base model"
            )


def _progress(total: int, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="merging", unit="tensor", disable=not enabled)


def merge_state_dicts(
    state_dicts: Sequence[Mapping[str, Tensor]], t: float = 0.5, *, progress: bool = False
) -> dict[str, Tensor]:
    """Slerp-merge state dicts of one architecture, tensor by tensor.

    Two state dicts: ``slerp(t, sd0, sd1)``. More than two (``t`` must stay 0.5): equal weights
    by successive slerp, ``merged = sd0`` then for ``k = 2, 3, ...`` the k-th state dict enters
    with ``merged = slerp(1/k, merged, sd_{k-1})`` — so every input gets weight 1/k along the
    way (exactly the mean when the tensors are collinear; slerp is not associative, so the order
    of the inputs matters a little otherwise). Non-float tensors must be equal and are copied.
    """
    _check_t(len(state_dicts), t)
    _check_keys([set(sd) for sd in state_dicts])
    for name in state_dicts[0]:
        _check_shapes(name, [tuple(sd[name].shape) for sd in state_dicts])
    merged = {}
    with _progress(len(state_dicts[0]), progress) as bar:
        for name in state_dicts[0]:
            merged[name] = _merge_tensor(name, [sd[name] for sd in state_dicts], t)
            bar.update()
    return merged


# --------------------------------------------------------------------------- checkpoints


class _Checkpoint:
    """Lazy tensor access to an HF checkpoint directory (single or sharded safetensors)."""

    def __init__(self, path: Path, stack: ExitStack) -> None:
        from safetensors import safe_open

        self.path = path
        self.config = _read_json(path / "config.json")
        if (path / INDEX_FILE).is_file():
            self.weight_map: dict[str, str] = _read_json(path / INDEX_FILE)["weight_map"]
        elif (path / SINGLE_FILE).is_file():
            with safe_open(str(path / SINGLE_FILE), framework="pt") as f:
                self.weight_map = dict.fromkeys(f.keys(), SINGLE_FILE)
        else:
            raise ModelDirError(
                f"{path} has neither {SINGLE_FILE} nor {INDEX_FILE}: "
                "save the checkpoint with save_pretrained(safe_serialization=True)"
            )
        self._files = {
            name: stack.enter_context(safe_open(str(path / name), framework="pt"))
            for name in sorted(set(self.weight_map.values()))
        }

    def shape(self, key: str) -> tuple[int, ...]:
        return tuple(self._files[self.weight_map[key]].get_slice(key).get_shape())

    def get(self, key: str) -> Tensor:
        return self._files[self.weight_map[key]].get_tensor(key)

    def shards(self) -> dict[str, list[str]]:
        """Output file name -> tensor names, in this checkpoint's layout."""
        out: dict[str, list[str]] = {}
        for key, name in self.weight_map.items():
            out.setdefault(name, []).append(key)
        return out


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise ModelDirError(f"{path} is missing: is {path.parent} an HF checkpoint directory?")
    return json.loads(path.read_text(encoding="utf-8"))


def _check_configs(ckpts: Sequence[_Checkpoint]) -> None:
    for field in ("architectures", "model_type"):
        values = [c.config.get(field) for c in ckpts]
        if any(v != values[0] for v in values[1:]):
            raise InputError(
                f"checkpoints disagree on {field}: {values}; "
                "merge only checkpoints of one architecture"
            )


def _write_merged(ckpts: Sequence[_Checkpoint], tmp: Path, t: float, progress: bool) -> None:
    from safetensors.torch import save_file

    first = ckpts[0]
    with _progress(len(first.weight_map), progress) as bar:
        for file_name, keys in first.shards().items():
            tensors = {}
            for key in keys:
                tensors[key] = _merge_tensor(key, [c.get(key) for c in ckpts], t).contiguous()
                bar.update()
            save_file(tensors, str(tmp / file_name), metadata={"format": "pt"})
    for name in ("config.json", INDEX_FILE, *COPIED_FILES):
        if (first.path / name).is_file():
            shutil.copy2(first.path / name, tmp / name)


def _publish(tmp: Path, out: Path) -> None:
    """Move the finished ``tmp`` directory to ``out`` (an empty ``out`` is replaced)."""
    if out.exists():
        out.rmdir()
    tmp.rename(out)


def merge_checkpoints(
    paths: Sequence[str | Path], out: str | Path, t: float = 0.5, *, progress: bool = True
) -> Path:
    """Slerp-merge HF checkpoint directories into ``out`` (weights as :func:`merge_state_dicts`).

    Architectures, model types, tensor names and shapes must agree. The merged weights follow
    the first checkpoint's shard layout and dtypes; config, index and tokenizer files are copied
    from it. Everything is written to a temporary sibling directory that is renamed to ``out``
    at the end, so a failure leaves nothing half-written. ``out`` must not exist or be empty.
    """
    _check_t(len(paths), t)
    out = Path(out)
    check_no_overlap(out, *paths)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists and is not empty: choose a new output directory")
    with ExitStack() as stack:
        ckpts = [_Checkpoint(Path(p), stack) for p in paths]
        _check_configs(ckpts)
        _check_keys([set(c.weight_map) for c in ckpts])
        for key in ckpts[0].weight_map:
            _check_shapes(key, [c.shape(key) for c in ckpts])
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
        try:
            _write_merged(ckpts, tmp, t, progress)
            _publish(tmp, out)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out
