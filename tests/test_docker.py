"""The docker/ files: compose files validate with docker-compose and wire Qdrant as documented.

`docker-compose` (Debian's 1.29: apt-get install docker-compose) validates offline. Without the
binary the validation tests skip, except under CI (env CI set), where they fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")

DOCKER = Path(__file__).resolve().parents[1] / "docker"
SINGLE = DOCKER / "docker-compose.yml"
CLUSTER = DOCKER / "docker-compose.cluster.yml"
QDRANT_IMAGE = re.compile(r"^qdrant/qdrant:v\d+\.\d+\.\d+$")  # official image, pinned tag


def _compose_binary() -> str:
    binary = shutil.which("docker-compose")
    if binary:
        return binary
    if os.environ.get("CI"):
        pytest.fail("docker-compose is missing; CI must run: apt-get install -y docker-compose")
    pytest.skip("docker-compose not installed (apt-get install -y docker-compose)")


def _config(path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [_compose_binary(), "-f", str(path), "config", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "COMPOSE_INTERACTIVE_NO_CLI": "1"},
    )


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


@pytest.mark.parametrize("path", [SINGLE, CLUSTER], ids=lambda p: p.name)
def test_compose_file_validates(path: Path) -> None:
    result = _config(path, "-q")
    assert result.returncode == 0, result.stderr


def test_gpu_reservation_survives_resolution() -> None:
    result = _config(SINGLE)
    assert result.returncode == 0, result.stderr
    resolved = yaml.safe_load(result.stdout)
    devices = resolved["services"]["embedrank"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_single_node() -> None:
    services = _load(SINGLE)["services"]
    qdrant = services["qdrant"]
    assert QDRANT_IMAGE.match(qdrant["image"])
    assert {"6333:6333", "6334:6334"} <= set(qdrant["ports"])
    volume, target = qdrant["volumes"][0].split(":")[:2]
    assert target == "/qdrant/storage" and volume in _load(SINGLE)["volumes"]  # named volume

    app = services["embedrank"]
    assert app["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
    assert "qdrant" in app["depends_on"]
    command = " ".join(app["command"])
    assert "--url http://qdrant:6333" in command
    assert any(re.search(r"\./models\}?:/models(:ro)?$", v) for v in app["volumes"])
    devices = app["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]


def test_cluster_bootstrap_wiring() -> None:
    spec = _load(CLUSTER)
    nodes = {n: s for n, s in spec["services"].items() if "qdrant" in s.get("image", "")}
    assert sorted(nodes) == ["qdrant-node-0", "qdrant-node-1", "qdrant-node-2"]
    volumes = set()
    for name, node in nodes.items():
        assert QDRANT_IMAGE.match(node["image"])
        assert str(node["environment"]["QDRANT__CLUSTER__ENABLED"]).lower() == "true"
        args = node["command"]
        assert args[0] == "./qdrant"
        assert args[args.index("--uri") + 1] == f"http://{name}:6335"
        if name == "qdrant-node-0":
            assert "--bootstrap" not in args
        else:
            assert args[args.index("--bootstrap") + 1] == "http://qdrant-node-0:6335"
            assert "qdrant-node-0" in node["depends_on"]
        assert not any("6335" in str(p) for p in node.get("ports", []))  # p2p stays internal
        (volume,) = node["volumes"]
        source, target = volume.split(":")
        assert target == "/qdrant/storage"
        volumes.add(source)
    assert len(volumes) == 3 and volumes <= set(spec["volumes"])  # one named volume per node
    assert {"6333:6333", "6334:6334"} <= set(nodes["qdrant-node-0"]["ports"])


def _dockerfile_commands() -> list[str]:
    """Shell commands of every RUN, continuation lines joined and split on &&."""
    text = re.sub(r"\\\n", " ", (DOCKER / "Dockerfile").read_text())
    runs = [line[4:] for line in text.splitlines() if line.startswith("RUN ")]
    return [" ".join(cmd.split()) for run in runs for cmd in run.split("&&")]


def test_dockerfile_gpu_runtime_only() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    # CUDA 13: PyPI's onnxruntime-gpu >= 1.31 links libcublas.so.13
    assert re.search(
        r"^FROM nvidia/cuda:13\.\d+\.\d+-cudnn-runtime-ubuntu\d\d\.\d\d$", text, re.MULTILINE
    )
    assert re.search(r'^ENTRYPOINT \["embedrank"\]$', text, re.MULTILINE)
    commands = _dockerfile_commands()
    # ubuntu:24.04 images already hold a user `ubuntu` with UID 1000: it goes first
    assert commands.index("userdel --remove ubuntu") + 1 == commands.index(
        "useradd --create-home --uid 1000 embedrank")
    installs = [c for c in commands if c.startswith("pip install")]
    bare_cpu = re.compile(r"""^["']?onnxruntime([=<>!~].*)?["']?$""")
    for cmd in installs:  # never the CPU wheel by name
        assert not any(bare_cpu.match(tok) for tok in cmd.split()), cmd
    gpu = next(i for i, c in enumerate(commands) if c.startswith("pip install") and "[gpu,serve]" in c)
    removal = commands.index("pip uninstall -y onnxruntime")
    reinstall = next(
        i for i, c in enumerate(commands)
        if "--force-reinstall" in c and "--no-deps" in c and "onnxruntime-gpu==" in c
    )  # fmt: skip
    assert gpu < removal < reinstall  # the CPU wheel pulled by base deps is removed afterwards
    assert any("! pip show onnxruntime" in c for c in commands[reinstall:])


def test_dockerfile_copies_every_package_folder() -> None:
    """pyproject.toml maps embedrank.* to top-level folders: the image must hold each of them."""
    import tomllib

    folders = set(tomllib.loads((DOCKER.parent / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-dir"].values())
    copied = set(re.findall(r"^COPY (\S+) \./\1$", (DOCKER / "Dockerfile").read_text(), re.MULTILINE))
    assert folders <= copied, sorted(folders - copied)


def _serve_args(service: dict[str, Any]) -> dict[str, list[str]]:
    """``embedrank serve`` options of a compose service: {"--flag": [values...]}."""
    args = service["command"]
    assert args[0] == "serve"
    out: dict[str, list[str]] = {}
    for flag, value in zip(args[1::2], args[2::2], strict=True):
        out.setdefault(flag, []).append(value)
    return out


def _inference_target(address: str, services: dict[str, Any]) -> None:
    """QDRANT__INFERENCE__ADDRESS names the serve service, its port and the hook's route."""
    from embedrank.serve.app import KNOWN_ROUTES

    match = re.fullmatch(r"http://([\w-]+):(\d+)(/[\w/]+)", address)
    assert match, address
    host, port, path = match.groups()
    args = _serve_args(services[host])
    assert args["--host"] == ["0.0.0.0"] and args["--port"] == [port]
    assert path == "/qdrant/infer" and path in KNOWN_ROUTES
    specs = args["--embedder"] + args["--reranker"]
    assert specs and all(spec.split("=", 1)[1].startswith("/models/") for spec in specs)
    assert any(v.endswith(":/models:ro") for v in services[host]["volumes"])
    assert {"published": int(port), "target": int(port)} in services[host]["ports"]  # resolved form
    devices = services[host]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert args["--device"] == ["cuda"]


def test_single_node_embeds_through_embedrank_serve() -> None:
    result = _config(SINGLE)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]  # as docker-compose resolves it
    qdrant = services["qdrant"]
    assert QDRANT_IMAGE.match(qdrant["image"])
    _inference_target(qdrant["environment"]["QDRANT__INFERENCE__ADDRESS"], services)
    assert int(qdrant["environment"]["QDRANT__INFERENCE__TIMEOUT"]) > 0
    assert _serve_args(services["embedrank-serve"])["--qdrant"] == ["http://qdrant:6333"]


def test_cluster_embeds_through_embedrank_serve() -> None:
    result = _config(CLUSTER)
    assert result.returncode == 0, result.stderr
    services = yaml.safe_load(result.stdout)["services"]
    nodes = [s for s in services.values() if "qdrant" in s.get("image", "")]
    assert len(nodes) == 3
    for node in nodes:
        _inference_target(node["environment"]["QDRANT__INFERENCE__ADDRESS"], services)
    assert _serve_args(services["embedrank-serve"])["--qdrant"] == ["http://qdrant-node-0:6333"]
