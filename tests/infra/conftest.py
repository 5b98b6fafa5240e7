"""Fixtures of the static checks of infra/: pyproject pins, manifests, the image tags build.sh makes."""

import re
import tomllib

import pytest

from tests.infra.infra_common import INFRA, ROOT, load_all, parse_pins


@pytest.fixture(scope="session")
def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


@pytest.fixture(scope="session")
def pins(pyproject) -> dict[str, str]:
    """Every exact pin of pyproject.toml: runtime dependencies and the dev extra."""
    project = pyproject["project"]
    return parse_pins(project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra])


@pytest.fixture(scope="session")
def built_tags(pyproject, pins) -> set[str]:
    """The image tags infra/docker/build.sh produces (with its default IMAGE_REPO), read from the script."""
    script = (INFRA / "docker" / "build.sh").read_text()
    repo = re.search(r'IMAGE_REPO="\$\{IMAGE_REPO:-([^}]+)\}"', script).group(1)
    variants = re.findall(r"^build (\w+) ", script, re.MULTILINE)
    assert variants, "build.sh builds no variant"
    assert '"${IMAGE_REPO}-mlflow:$(pin mlflow)"' in script
    version = pyproject["project"]["version"]
    return {f"{repo}:{version}-{v}" for v in variants} | {f"{repo}-mlflow:{pins['mlflow']}"}


@pytest.fixture(scope="session")
def k8s_docs() -> dict[str, list[dict]]:
    """Every Kubernetes document under infra/ (KubeRay and MLflow), by file (relative to the repo)."""
    files = sorted((INFRA / "kuberay").glob("*.yaml")) + sorted((INFRA / "mlflow").glob("*.yaml"))
    return {str(f.relative_to(ROOT)): load_all(f) for f in files}
