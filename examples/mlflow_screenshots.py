"""Screenshots of a distillation run in the MLflow UI, as a person sees it (docs/tracking.md, reading a run in MLflow).

Starts `mlflow server` on 127.0.0.1 over a local tracking store, finds the runs of an experiment and has headless
Chromium (Debian's `chromium-headless-shell`) photograph the experiment page, the first run's page, its metric
charts and the comparison of two runs:

    .venv/bin/python examples/mlflow_screenshots.py --store runs/shots/mlflow.db --out docs/mlflow
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url: str, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


def shoot(url: str, out: Path, profile: str, size: str = "1600,1100", wait_ms: int = 20000) -> None:
    """One page as a person first sees it; `profile` is the browser profile shared by all shots (the
    UI opens its assistant panel on a profile's first visit only: a warm-up shot takes that)."""
    browser = shutil.which("chromium-headless-shell") or shutil.which("chromium")
    if browser is None:
        raise SystemExit("error: needs chromium-headless-shell (apt-get install chromium-headless-shell)")
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={profile}",
                    f"--window-size={size}", f"--virtual-time-budget={wait_ms}", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=180)
    print(f"written: {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--store", required=True, help="the sqlite tracking store (mlflow.db) of the runs")
    parser.add_argument("--experiment", default="loopfree")
    parser.add_argument("--out", default="docs/mlflow")
    args = parser.parse_args()
    store = Path(args.store).resolve()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = subprocess.Popen([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                               "--backend-store-uri", f"sqlite:///{store}", "--workers", "1",
                               "--artifacts-destination", (store.parent / "mlartifacts").as_uri()],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(f"{base}/health")
        from mlflow.tracking import MlflowClient

        client = MlflowClient(base)
        exp = client.get_experiment_by_name(args.experiment)
        runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
        if not runs:
            raise SystemExit(f"error: no runs in experiment {args.experiment!r} of {store}")
        first = runs[0].info.run_id
        page = f"{base}/#/experiments/{exp.experiment_id}"
        ml = "workflowType=machine_learning"  # the UI's model-training view (its default is GenAI's)
        with tempfile.TemporaryDirectory() as profile:
            shoot(f"{page}?{ml}", out / "warm-up.png", profile)
            (out / "warm-up.png").unlink()
            shoot(f"{page}/runs?{ml}", out / "experiment.png", profile)
            shoot(f"{page}/runs/{first}?{ml}", out / "run.png", profile)
            shoot(f"{page}/runs/{first}/model-metrics?{ml}", out / "run-metrics.png", profile, size="1600,2000")
            if len(runs) > 1:
                ids = urllib.parse.quote(json.dumps([r.info.run_id for r in runs[:2]]))
                exps = urllib.parse.quote(json.dumps([exp.experiment_id]))
                shoot(f"{base}/#/compare-runs?runs={ids}&experiments={exps}&{ml}", out / "compare.png", profile,
                      size="1600,2000")
    finally:
        server.terminate()
        server.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
