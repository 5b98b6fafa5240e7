"""Shared readers for the static checks of infra/ (plain functions; the fixtures are in conftest.py)."""

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"


def _name(requirement: str) -> str:
    return re.split(r"[\[=<>!~ ;]", requirement, maxsplit=1)[0].lower().replace("_", "-")


def parse_pins(lines) -> dict[str, str]:
    """{package: version} of the exact pins (name==version) among requirement lines."""
    pins = {}
    for line in lines:
        match = re.match(r"^\s*([A-Za-z0-9_.\-]+)(\[[^\]]*\])?==([^\s;#]+)", line)
        if match:
            pins[_name(match.group(1))] = match.group(3)
    return pins


def load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def walk(node, path=""):
    """(path, key, value) for every mapping entry below node."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk(value, f"{path}[{i}]")


def containers(doc: dict) -> list[dict]:
    """All containers of all pod templates in a document (KubeRay groups, Deployments, StatefulSets)."""
    return [c for _, key, value in walk(doc) if key == "containers" for c in value]
