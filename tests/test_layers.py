"""The import contract: embedrank's layers, checked over every import statement in the package.

Deferred imports (inside functions) count like top-level ones: a layer may not reach upwards
at all. The layers, lowest first (docs/architecture.md):

    core      embedrank.{errors, formats, manifest, metrics, beir, datasets}   (torch-free)
    ops       embedrank.ops            the opt-in custom-op library's build
    runtime   embedrank.runtime        ONNX Runtime models (torch-free)
    train     embedrank.train          PyTorch modules, losses, training
    export    embedrank.export         PyTorch -> ONNX, parity against the runtime
    plugin    embedrank.plugin         Qdrant integration (torch-free)
    serve     embedrank.serve          the ASGI server (torch-free)
    bench     embedrank.bench          `embedrank bench`: PyTorch and the runtime side by side
    cli       embedrank.cli            on top of everything
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

import embedrank

# what each layer may import (besides itself); anything else of embedrank's is a violation
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "ops": {"core"},
    "runtime": {"core", "ops"},
    "train": {"core", "runtime"},
    "export": {"core", "ops", "runtime", "train"},
    "plugin": {"core", "runtime"},
    "serve": {"core", "runtime", "plugin"},
    "bench": {"core", "runtime", "train", "export", "plugin"},
    "cli": {"core", "ops", "runtime", "train", "export", "plugin", "serve", "bench"},
}
TORCH_FREE = {"core", "ops", "runtime", "plugin", "serve"}
MODEL_LIBRARIES = {"torch", "transformers", "peft", "safetensors", "onnx", "onnxscript", "onnx_ir"}


def _package_files() -> dict[str, Path]:
    """{module name: file} for every module of the installed package (the source tree)."""
    modules = {}
    for sub in ("", *ALLOWED):
        if sub == "core":
            continue
        package = f"embedrank.{sub}" if sub else "embedrank"
        spec = importlib.util.find_spec(package)  # found, not imported
        if spec is None:
            continue
        for file in Path(spec.origin).parent.glob("*.py"):
            modules[package if file.stem == "__init__" else f"{package}.{file.stem}"] = file
    return modules


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] != "embedrank":
        raise ValueError(module)
    if len(parts) > 1 and parts[1] in ALLOWED:
        return parts[1]
    return "core"


def _imports(file: Path, module: str) -> list[tuple[int, str]]:
    """Every imported module name (absolute), with its line, deferred imports included."""
    tree = ast.parse(file.read_text(encoding="utf-8"), str(file))
    package = module if file.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.append((node.lineno, base))
            # `from embedrank import plugin` names a subpackage
            if base == "embedrank":
                found += [(node.lineno, f"embedrank.{a.name}") for a in node.names
                          if a.name in ALLOWED]
            elif base.startswith("embedrank."):
                found += [(node.lineno, f"{base}.{a.name}") for a in node.names
                          if f"{base}.{a.name}" in _MODULES]
    return found


_MODULES = _package_files()


def violations() -> list[str]:
    problems = []
    for module, file in sorted(_MODULES.items()):
        layer = layer_of(module)
        for lineno, target in _imports(file, module):
            top = target.split(".")[0]
            where = f"{file.name}:{lineno} ({module} -> {target})"
            if top == "embedrank":
                other = layer_of(target)
                if other != layer and other not in ALLOWED[layer]:
                    problems.append(f"{layer} may not import {other}: {where}")
            elif layer in TORCH_FREE and top in MODEL_LIBRARIES:
                problems.append(f"{layer} is torch-free, but imports {top}: {where}")
    return problems


def test_the_package_keeps_its_layers() -> None:
    assert violations() == []


def test_the_contract_sees_every_package_and_deferred_imports() -> None:
    layers = {layer_of(m) for m in _MODULES}
    assert {"core", "ops", "runtime", "train", "export", "plugin", "bench", "cli"} <= layers
    # runtime.models imports onnxruntime inside functions: deferred imports are collected
    deferred = [t for _, t in _imports(_MODULES["embedrank.runtime.models"], "embedrank.runtime.models")]
    assert "onnxruntime" in deferred


def test_a_violation_is_reported(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from embedrank.export import export_model\n    import torch\n")
    found = _imports(bad, "embedrank.plugin.bad")
    assert (2, "embedrank.export") in found and (3, "torch") in found
    assert layer_of("embedrank.export.onnx") == "export" and layer_of("embedrank.beir") == "core"


def test_the_layer_graph_has_no_cycles() -> None:
    seen: dict[str, int] = {}

    def visit(layer: str, path: tuple[str, ...]) -> None:
        assert layer not in path, f"cycle: {' -> '.join(path + (layer,))}"
        for lower in ALLOWED[layer]:
            visit(lower, path + (layer,))
        seen[layer] = 1

    for layer in ALLOWED:
        visit(layer, ())


@pytest.mark.parametrize("name", ["embedrank.export.gpu_bench", "embedrank.export.gpu_probes",
                                  "embedrank.export.quant_bench", "embedrank.export.compare",
                                  "embedrank.export.bench_torch", "embedrank.plugin.cli"])
def test_lab_code_is_not_in_the_package(name: str) -> None:
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(name)


def test_the_package_root_is_the_core() -> None:
    assert Path(embedrank.__file__).parent.name == "embedrank"
