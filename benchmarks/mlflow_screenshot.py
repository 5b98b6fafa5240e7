"""Screenshot of the MLflow UI on a distillation run (headless Chromium), for docs/.

Runs `mlflow ui` on a tracking store, finds the newest run of the "loopfree" experiment, opens its
metrics page in headless Chromium (Debian's `chromium` package) and saves a PNG.

    python -m benchmarks.mlflow_screenshot --store sqlite:///$PWD/runs/mlflow.db --out docs/mlflow-run.png
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--window-size=1500,1100", "--virtual-time-budget=60000",
                  "--run-all-compositor-stages-before-draw"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store", required=True, help="MLflow backend store URI, e.g. sqlite:///abs/path/mlflow.db")
    ap.add_argument("--out", default="docs/mlflow-run.png")
    args = ap.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise SystemExit("chromium not found: apt-get install chromium")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(args.store)
    exp = client.get_experiment_by_name("loopfree")
    run = client.search_runs([exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=1)[0]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ui = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "ui", "--backend-store-uri", args.store,
                           "--host", "127.0.0.1", "--port", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                time.sleep(0.5)
        url = f"http://127.0.0.1:{port}/#/experiments/{exp.experiment_id}/runs/{run.info.run_id}/model-metrics"
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as profile:
            subprocess.run([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                            f"--screenshot={Path(args.out).resolve()}", url], check=True, capture_output=True, timeout=120)
    finally:
        ui.terminate()
        ui.wait(timeout=30)
    print(f"screenshot of {url} written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
