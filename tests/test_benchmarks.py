"""The lab scripts in benchmarks/ stay runnable by the commands the docs give: `python benchmarks/X.py`.

Each script's ``--help`` runs in a subprocess from the repository root (imports and argument
parsing only: no model, no export), all at once to keep it fast.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from embedrank.errors import InputError

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("gpu_bench", "gpu_probes", "quant_bench", "compare", "eval_checkpoints", "debian_beir",
           "serve_bench", "bench_gpu", "eot_probe", "synth_probe")


def test_every_python_file_in_benchmarks_is_listed():
    helpers = {"common"}  # imported by the scripts, not run
    found = {p.stem for p in (ROOT / "benchmarks").glob("*.py")} - helpers
    assert found == set(SCRIPTS)


def test_each_benchmark_script_answers_help():
    procs = {name: subprocess.Popen([sys.executable, f"benchmarks/{name}.py", "--help"], cwd=ROOT,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name in SCRIPTS}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"python benchmarks/{name}.py --help failed:\n{err[-2000:]}"
        assert out.startswith("usage: "), out[:200]


def test_quant_bench_parses_product_and_extra_recipes():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import quant_bench
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    recipe = quant_bench.parse_recipe("smooth-pertoken+alpha=0.75+down=0.5+keep=/mlp/down_proj/")
    assert (recipe.method, recipe.smooth, recipe.smooth_down, recipe.keep_fp32) == (
        "pertoken", 0.75, 0.5, ("/mlp/down_proj/",))
    assert quant_bench.parse_recipe("pertoken").smooth is None
    outliers = quant_bench.parse_recipe("w8-block32+outliers=8")
    assert (outliers.outliers, outliers.calibrated, outliers.accuracy_level) == (8.0, True, 0)
    assert quant_bench.parse_recipe("w8-block32-outliers+outliers=none").calibrated is False
    with pytest.raises(InputError, match="unknown key 'bits'"):
        quant_bench.parse_recipe("w8-block32+bits=4")
    assert quant_bench.parse_recipe("int4-block32").bits == 4
