"""The images' essentials, read from the Dockerfiles (no Docker engine runs here to build them).

Gateway: slim Python, nothing of torch/vLLM installed. Worker: the official vLLM image at the version of
the `gpu` extra, vlq added with --no-deps. Both: non-root numeric USER (so that runAsNonRoot can verify it),
exec-form ENTRYPOINT (SIGTERM reaches the process), a HEALTHCHECK on the service's /healthz.
"""

from __future__ import annotations

import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction, continuation lines joined."""

    keyword: str
    args: str


def parse(path: Path) -> list[Instruction]:
    """Instructions of a Dockerfile (comments dropped, backslash continuations joined)."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, args = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
        pending = ""
    assert not pending, f"{path}: dangling continuation"
    return instructions


def only(instructions: list[Instruction], keyword: str) -> list[str]:
    """Arguments of every instruction called ``keyword``."""
    return [i.args for i in instructions if i.keyword == keyword]


def gpu_vllm_version() -> str:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    (pin,) = [d for d in pyproject["project"]["optional-dependencies"]["gpu"] if d.startswith("vllm")]
    match = re.fullmatch(r"vllm==([0-9.]+)", pin)
    assert match, pin
    return match.group(1)


@pytest.fixture(scope="module")
def gateway() -> list[Instruction]:
    return parse(ROOT / "gateway" / "Dockerfile")


@pytest.fixture(scope="module")
def worker() -> list[Instruction]:
    return parse(ROOT / "worker" / "Dockerfile")


def test_gateway_is_slim_python(gateway: list[Instruction]) -> None:
    (base,) = only(gateway, "FROM")
    assert re.fullmatch(r"python:3\.1[1-3]-slim(-\w+)?", base), base


def test_gateway_installs_neither_torch_nor_vllm(gateway: list[Instruction]) -> None:
    installs = [cmd for cmd in only(gateway, "RUN") if "pip install" in cmd]
    assert installs
    for cmd in installs:
        install_args = cmd.split("pip install", 1)[1].split("&&", 1)[0]
        assert not re.search(r"torch|vllm|\[", install_args), f"gateway must install no extras: {install_args}"
    # The build itself proves it: it fails when torch or vllm became importable.
    assert any("find_spec" in cmd and "torch" in cmd and "vllm" in cmd for cmd in only(gateway, "RUN"))


def test_worker_is_the_official_vllm_image_at_the_pinned_version(worker: list[Instruction]) -> None:
    (base,) = only(worker, "FROM")
    assert base == f"vllm/vllm-openai:v{gpu_vllm_version()}"


def test_worker_adds_vlq_without_touching_vllm(worker: list[Instruction]) -> None:
    runs = " ".join(only(worker, "RUN"))
    assert "pip install --no-deps ." in runs
    # Dependencies vlq needs beyond the image are installed under the image's own pins, never upgraded.
    assert re.search(r"pip list --format=freeze > (\S+).*--constraint \1", runs)


@pytest.mark.parametrize("image", ["gateway", "worker"])
def test_runs_as_a_numeric_non_root_user(image: str, request: pytest.FixtureRequest) -> None:
    instructions: list[Instruction] = request.getfixturevalue(image)
    user = only(instructions, "USER")[-1]
    uid = user.split(":")[0]
    assert uid.isdigit() and int(uid) != 0, user
    # Nothing after USER may run as root again.
    last_user = max(i for i, ins in enumerate(instructions) if ins.keyword == "USER")
    assert all(ins.keyword != "RUN" for ins in instructions[last_user:])


@pytest.mark.parametrize(("image", "module"), [("gateway", "gateway"), ("worker", "worker")])
def test_entrypoint_is_exec_form_python_module(image: str, module: str, request: pytest.FixtureRequest) -> None:
    instructions: list[Instruction] = request.getfixturevalue(image)
    (entrypoint,) = only(instructions, "ENTRYPOINT")
    argv = json.loads(entrypoint)  # exec form is a JSON array; shell form would not parse
    assert argv[0] in {"python", "python3"} and argv[1:] == ["-m", module]
    assert not only(instructions, "CMD"), "a CMD would be appended to the entrypoint's argv"


@pytest.mark.parametrize(("image", "port"), [("gateway", 8000), ("worker", 9100)])
def test_healthcheck_probes_healthz(image: str, port: int, request: pytest.FixtureRequest) -> None:
    instructions: list[Instruction] = request.getfixturevalue(image)
    (check,) = only(instructions, "HEALTHCHECK")
    assert f"127.0.0.1:{port}/healthz" in check
    assert check.split("CMD", 1)[1].strip().startswith("[")
    assert str(port) in only(instructions, "EXPOSE")


def test_worker_healthcheck_waits_for_model_load(worker: list[Instruction]) -> None:
    (check,) = only(worker, "HEALTHCHECK")
    match = re.search(r"--start-period=(\d+)m", check)
    assert match and int(match.group(1)) >= 20


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    lines = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()]
    assert "*" in lines  # allow-list: only what is re-included below goes in
    included = {ln[1:].rstrip("/") for ln in lines if ln.startswith("!")}
    assert included == {"pyproject.toml", "gateway", "worker", "cache"}
    for image in ("gateway", "worker"):
        for copy in only(parse(ROOT / image / "Dockerfile"), "COPY"):
            source = copy.split()[0].rstrip("/")
            assert source in included, f"{image}/Dockerfile copies {source}, which .dockerignore leaves out"


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    """Variables set by ENV instructions (the key=value form)."""
    env: dict[str, str] = {}
    for args in only(instructions, "ENV"):
        for pair in args.split():
            name, _, value = pair.partition("=")
            env[name] = value
    return env


def test_gateway_image_listens_beyond_loopback_and_keeps_auth_on(gateway: list[Instruction]) -> None:
    env = env_of(gateway)
    # GatewaySettings defaults to 127.0.0.1, unreachable from outside the container.
    assert env["VLQ_GATEWAY_HOST"] == "0.0.0.0"
    assert env["VLQ_GATEWAY_PORT"] in only(gateway, "EXPOSE")
    assert "VLQ_GATEWAY_AUTH_ENABLED" not in env  # on by default; turning it off is the deployer's explicit act
