"""`loopfree env`: versions, devices, and whether RAY_ADDRESS and MLFLOW_TRACKING_URI answer (short timeouts)."""

from __future__ import annotations

import argparse
import os
import sys
from importlib import metadata

import yaml

from loopfree_platform.jobfile import redact, redact_text


def version() -> str:
    try:
        return metadata.version("loopfree")
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def reach_ray(address: str | None, timeout: float) -> dict:
    """Whether a Ray cluster answers at RAY_ADDRESS (a dashboard URL, ray://host:port or a GCS host:port)."""
    import socket
    import urllib.request
    from urllib.parse import urlsplit

    if not address:
        return {"address": "not set (RAY_ADDRESS)"}
    if address == "auto":
        return {"address": address, "reachable": "not checked (the machine's running cluster)"}
    try:
        if address.startswith(("http://", "https://")):
            with urllib.request.urlopen(address.rstrip("/") + "/api/version", timeout=timeout) as response:
                return {"address": address, "reachable": True, "detail": f"dashboard, HTTP {response.status}"}
        parts = urlsplit(address if "://" in address else f"tcp://{address}")
        with socket.create_connection((parts.hostname, parts.port or 6379), timeout=timeout):
            return {"address": address, "reachable": True, "detail": "TCP connection accepted"}
    except Exception as err:  # refused, timed out, bad address: all mean "not reachable" here
        return {"address": address, "reachable": False, "detail": f"{type(err).__name__}: {err}"}


def reach_mlflow(uri: str | None, timeout: float) -> dict:
    """Whether the MLflow tracking server at MLFLOW_TRACKING_URI answers /health (credentials never printed)."""
    import urllib.request
    from urllib.parse import urlsplit, urlunsplit

    if not uri:
        return {"tracking_uri": "not set (MLFLOW_TRACKING_URI)"}
    shown = redact(uri)
    if not uri.startswith(("http://", "https://")):
        return {"tracking_uri": shown, "reachable": "a local store, no server"}
    parts = urlsplit(uri)
    netloc = parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else parts.netloc
    health = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        with urllib.request.urlopen(health, timeout=timeout) as response:
            return {"tracking_uri": shown, "reachable": True, "detail": f"HTTP {response.status}"}
    except Exception as err:
        return {"tracking_uri": shown, "reachable": False, "detail": redact_text(f"{type(err).__name__}: {err}")}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds per reachability check (default 3)")


def run(args: argparse.Namespace) -> int:
    packages = {}
    for name in ("torch", "ray", "deepspeed", "diffusers", "transformers", "mlflow"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            packages[name] = "not installed"
    devices: dict = {"cpus": os.cpu_count()}
    try:
        import torch

        devices["cuda"] = torch.cuda.is_available()
        if devices["cuda"]:
            devices["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        devices["cuda"] = "torch not installed"
    report = {"loopfree": version(), "python": sys.version.split()[0], "packages": packages, "devices": devices,
              "ray": reach_ray(os.environ.get("RAY_ADDRESS"), args.timeout),
              "mlflow": reach_mlflow(os.environ.get("MLFLOW_TRACKING_URI"), args.timeout)}
    print(yaml.safe_dump(report, sort_keys=False, width=1000), end="")
    return 0
