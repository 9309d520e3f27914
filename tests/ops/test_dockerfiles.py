"""The one Dockerfile, checked statically (tests/integration/test_containers.py builds and runs
it): a multi-stage build from python:3.11-slim-bookworm by default, dependencies only from the
wheelhouse, a non-root user, no build tools in the final stage, every role's real console
script, protobuf code generated in the build stage."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import pytest
from ops_support import ROOT, console_scripts

SERVICES = ["orderer", "committer", "endorser", "meter-agent"]
DOCKERFILE = ROOT / "Dockerfile"
BUILD_TOOLS = re.compile(r"\b(gcc|g\+\+|clang|make|build-essential|python3-dev|libc6-dev|"
                         r"cargo|rustc|grpc_tools|grpcio-tools|protoc)\b")


def stages(path: Path) -> list[list[str]]:
    """Instructions (continuation lines joined, comments dropped) grouped by FROM."""
    lines, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        current += line.removesuffix("\\").strip() + " "
        if not line.endswith("\\"):
            lines.append(current.strip())
            current = ""
    result: list[list[str]] = []
    for line in lines:
        if line.upper().startswith("FROM "):
            result.append([])
        if result:
            result[-1].append(line)
    return result


def arg_defaults(path: Path) -> dict[str, str]:
    return dict(re.findall(r"^ARG (\w+)=(\S+)", path.read_text(), re.M))


def test_one_dockerfile_for_every_role() -> None:
    assert not list((ROOT / "services").glob("*/Dockerfile")), "per-role Dockerfiles are back"


def test_multi_stage_slim_python_base() -> None:
    path = DOCKERFILE
    found = stages(path)
    assert len(found) >= 2
    defaults = arg_defaults(path)
    for stage in found:
        image = stage[0].split()[1]
        image = re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image)
        assert image.startswith("python:3.11-slim"), image


@pytest.mark.parametrize("service", SERVICES)
def test_final_stage_runs_the_console_script_as_non_root(service: str) -> None:
    path = DOCKERFILE
    final = stages(path)[-1]
    users = [line.split()[1] for line in final if line.upper().startswith("USER ")]
    assert users, "the final stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert user.isdigit() and int(user) >= 1000, "a numeric uid lets runAsNonRoot verify it"
    entrypoints = [line for line in final if line.upper().startswith("ENTRYPOINT ")]
    assert len(entrypoints) == 1
    command = json.loads(entrypoints[0].split(None, 1)[1])
    assert command == ["/opt/gridledger/bin/gridledger-node"]
    # gridledger-node execs gridledger-$ROLE (the build argument), checked at build time.
    text = " ".join(final)
    assert "ENV GRIDLEDGER_IMAGE_ROLE=${ROLE}" in text
    assert 'test -x "/opt/gridledger/bin/gridledger-${ROLE}"' in text
    assert "gridledger-${GRIDLEDGER_IMAGE_ROLE:?}" in " ".join(stages(path)[0])
    scripts = console_scripts()
    assert scripts[f"gridledger-{service}"] == f"gridledger_{service.replace('-', '_')}.main:main"


def test_no_build_tools_in_the_final_stage() -> None:
    path = DOCKERFILE
    build, *_, final = stages(path)
    for line in final:
        assert not BUILD_TOOLS.search(line), line
        if line.upper().startswith("COPY"):
            assert "--from=build" in line and "/opt/gridledger" in line, line
    assert not any("apt-get install" in line for line in final)
    # The build stage generates the protobuf code and then removes the compiler package.
    text = " ".join(build)
    assert "grpc_tools.protoc" in text
    assert "pip uninstall -y grpcio-tools" in text
    assert "compileall" in text


def test_build_copies_what_exists_and_installs_every_package() -> None:
    path = DOCKERFILE
    build = stages(path)[0]
    for line in build:
        if line.upper().startswith("COPY ") and "--from" not in line:
            *sources, _ = line.split()[1:]
            for source in sources:
                # build/wheelhouse is made by deploy/images/wheelhouse.sh before every build.
                assert source.startswith("build/wheelhouse") or (ROOT / source).exists(), source
    # Every source root of the package discovery is copied in, and the project is installed
    # again after the protobuf code is generated, so the generated package is in the image.
    roots = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"][
        "packages"]["find"]["where"]
    copied = " ".join(line for line in build if line.upper().startswith("COPY "))
    for root in roots:
        if root != "gen":
            assert root.split("/")[0] + "/" in copied, f"{root} is not copied into the image"
    text = " ".join(build)
    # Nothing from an index: every dependency and the build backend from the wheelhouse.
    installs = re.findall(r"pip install [^&]*", text)
    assert installs and all("--no-index --find-links /wheelhouse" in i for i in installs)
    assert text.index("grpc_tools.protoc") < text.index("--no-deps .")
    expose = next(line for line in stages(path)[-1] if line.upper().startswith("EXPOSE"))
    assert expose.split()[1:] == ["7050", "7051", "9464"]


def test_dockerignore_keeps_secrets_and_local_state_out() -> None:
    entries = {line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", ".devnet", "gen", "**/*.key", "**/consortium"} <= entries
    for needed in ("core", "services", "cli", "protos", "pyproject.toml"):
        assert needed not in entries
    assert "!build/wheelhouse" in entries
