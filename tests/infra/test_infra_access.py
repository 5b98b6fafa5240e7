"""Who may reach what in the cluster manifests: MLflow behind its basic-auth app (checked live: the manifest's
own auth config on a real `mlflow server` on 127.0.0.1), the Ray pods logging in, and the NetworkPolicies
(evaluated by a small reader of the NetworkPolicy rules against the pods the manifests make)."""

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import requests

from tests.infra.infra_common import INFRA, containers, load_all

MLFLOW = INFRA / "mlflow" / "mlflow-server.yaml"
POLICIES = INFRA / "kuberay" / "network-policies.yaml"


def mlflow_docs() -> dict[str, dict]:
    return {d["kind"] + "/" + d["metadata"]["name"]: d for d in load_all(MLFLOW)}


def server_container() -> dict:
    return mlflow_docs()["Deployment/loopfree-mlflow"]["spec"]["template"]["spec"]["containers"][0]


def job_runner_setting() -> dict[str, str]:
    """The manifest's switch for MLflow's server-side job runner, as the servers of the tests run it too."""
    return {e["name"]: e["value"] for e in server_container()["env"] if e["name"] == "MLFLOW_SERVER_ENABLE_JOB_EXECUTION"}


JOB_RUNNER = job_runner_setting()


def test_mlflow_runs_without_the_job_runner_loopfree_never_uses():
    """The manifest turns MLflow's job runner off; the live server below, started with it, checks that no job
    runner process starts."""
    assert JOB_RUNNER == {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def test_mlflow_runs_its_basic_auth_app_with_secrets_from_secrets():
    from importlib.metadata import entry_points

    args = server_container()["args"]
    assert args[args.index("--app-name") + 1] in {e.name for e in entry_points(group="mlflow.app")}
    env = {e["name"]: e for e in server_container()["env"]}
    for name in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "loopfree-mlflow-auth", name
    mounts = {m["name"]: m["mountPath"] for m in server_container()["volumeMounts"]}
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"] == f"{mounts['auth-config']}/basic_auth.ini"


def test_the_auth_config_parses_as_mlflow_reads_it_and_keeps_users_on_the_volume(tmp_path, monkeypatch):
    from mlflow.server.auth.config import read_auth_config

    ini = tmp_path / "basic_auth.ini"
    ini.write_text(mlflow_docs()["ConfigMap/loopfree-mlflow-auth"]["data"]["basic_auth.ini"])
    monkeypatch.setenv("MLFLOW_AUTH_CONFIG_PATH", str(ini))
    config = read_auth_config()
    mounts = {m["name"]: m["mountPath"] for m in server_container()["volumeMounts"]}
    assert config.default_permission == "READ" and config.admin_username == "admin"
    assert config.database_uri.startswith(f"sqlite:///{mounts['auth-db']}/")  # survives a pod restart


def test_every_ray_container_that_talks_to_mlflow_logs_in_with_a_secret():
    for path in sorted((INFRA / "kuberay").glob("*.yaml")):
        for doc in load_all(path):
            for c in containers(doc):
                env = {e["name"]: e for e in c.get("env", [])}
                if "MLFLOW_TRACKING_URI" in env:
                    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
                        ref = env[name]["valueFrom"]["secretKeyRef"]
                        assert ref["name"] == "loopfree-mlflow-client", f"{path.name} {c['name']}: {name}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlflow_with_auth(tmp_path_factory):
    """`mlflow server` with the manifest's app and auth config (the user store moved to a temp folder)."""
    tmp = tmp_path_factory.mktemp("mlflow-auth")
    ini = mlflow_docs()["ConfigMap/loopfree-mlflow-auth"]["data"]["basic_auth.ini"]
    (tmp / "basic_auth.ini").write_text(ini.replace("/var/lib/mlflow-auth", str(tmp)))
    port = _free_port()
    args = server_container()["args"]
    env = {**os.environ, "MLFLOW_AUTH_CONFIG_PATH": str(tmp / "basic_auth.ini"), "MLFLOW_AUTH_ADMIN_PASSWORD": "admin-password-1",
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "test-secret-key", **JOB_RUNNER}
    server = subprocess.Popen([str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1",
                               "--port", str(port), "--workers", "1", "--app-name", args[args.index("--app-name") + 1],
                               "--backend-store-uri", f"sqlite:///{tmp}/mlflow.db"],
                              env=env, stdout=open(tmp / "log", "w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"mlflow server exited: {(tmp / 'log').read_text()[-2000:]}")
        try:
            requests.get(f"{url}/health", timeout=2)
            break
        except requests.ConnectionError:
            time.sleep(0.5)
    yield url, server.pid
    server.terminate()
    server.wait(timeout=30)


@pytest.mark.timeout(180)
def test_mlflow_refuses_strangers_and_only_an_owner_moves_a_model_alias(mlflow_with_auth):
    (url, pid), admin = mlflow_with_auth, ("admin", "admin-password-1")
    runners = [c for p in psutil.Process(pid).children(recursive=True)
               if "mlflow.server.jobs" in (c := " ".join(p.cmdline())) or "huey" in c]
    assert not runners, runners  # the manifest's setting: no job runner processes
    api = f"{url}/api/2.0/mlflow"
    assert requests.get(f"{api}/experiments/search?max_results=1", timeout=30).status_code == 401
    assert requests.get(f"{api}/experiments/search?max_results=1", auth=admin, timeout=30).status_code == 200
    jobs, other = ("loopfree-jobs", "jobs-password-1"), ("someone", "someone-password-1")
    for user, password in (jobs, other):
        created = requests.post(f"{api}/users/create", json={"username": user, "password": password}, auth=admin, timeout=30)
        assert created.status_code == 200, created.text
    model = requests.post(f"{api}/registered-models/create", json={"name": "loopfree-tiue"}, auth=jobs, timeout=30)
    assert model.status_code == 200, model.text
    version = requests.post(f"{api}/model-versions/create", json={"name": "loopfree-tiue", "source": "s3://b/m"},
                            auth=jobs, timeout=30)
    assert version.status_code == 200, version.text
    alias = {"name": "loopfree-tiue", "alias": "production", "version": "1"}
    assert requests.post(f"{api}/registered-models/alias", json=alias, auth=other, timeout=30).status_code == 403
    assert requests.get(f"{api}/registered-models/get?name=loopfree-tiue", auth=other, timeout=30).status_code == 200
    assert requests.post(f"{api}/registered-models/alias", json=alias, auth=jobs, timeout=30).status_code == 200


# --- NetworkPolicies -----------------------------------------------------------------------------------

KUBERAY = {"app.kubernetes.io/created-by": "kuberay-operator"}
RAY_HEAD = {**KUBERAY, "ray.io/node-type": "head", "ray.io/cluster": "loopfree-distill"}
RAY_WORKER = {**KUBERAY, "ray.io/node-type": "worker", "ray.io/cluster": "loopfree-distill"}
STRANGER = {"app": "something-else"}


def _selects(selector: dict, labels: dict) -> bool:
    """Kubernetes label-selector semantics for matchLabels and matchExpressions (In, NotIn, Exists,
    DoesNotExist); an empty selector selects every pod."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        ok = {"Exists": key in labels, "DoesNotExist": key not in labels,
              "In": labels.get(key) in values, "NotIn": labels.get(key) not in values}[op]
        if not ok:
            return False
    return True


def allowed(source: dict, dest: dict, port: int) -> bool:
    """Whether the policies let a pod labelled `source` open `port` on a pod labelled `dest` (one namespace)."""
    policies = [p for p in load_all(POLICIES) if "Ingress" in p["spec"]["policyTypes"]
                and _selects(p["spec"]["podSelector"], dest)]
    if not policies:
        return True  # a pod no policy selects is open
    for policy in policies:
        for rule in policy["spec"].get("ingress", []):
            peers_ok = "from" not in rule or any(_selects(peer["podSelector"], source) for peer in rule["from"])
            ports_ok = "ports" not in rule or any(p["port"] == port for p in rule["ports"])
            if peers_ok and ports_ok:
                return True
    return False


def pod_labels(kind_name: str) -> dict:
    doc = mlflow_docs()[kind_name]
    return doc["spec"]["template"]["metadata"]["labels"]


def test_the_policies_select_the_pods_the_manifests_make():
    policies = {p["metadata"]["name"]: p["spec"]["podSelector"] for p in load_all(POLICIES)}
    assert _selects(policies["loopfree-mlflow"], pod_labels("Deployment/loopfree-mlflow"))
    assert _selects(policies["loopfree-mlflow-db"], pod_labels("StatefulSet/loopfree-mlflow-db"))
    assert _selects(policies["loopfree-ray"], RAY_HEAD) and _selects(policies["loopfree-ray"], RAY_WORKER)
    assert not _selects(policies["loopfree-ray"], pod_labels("Deployment/loopfree-mlflow"))
    assert not allowed(STRANGER, pod_labels("Deployment/loopfree-mlflow"), 5000)
    assert not allowed(STRANGER, pod_labels("StatefulSet/loopfree-mlflow-db"), 5432)
    assert not allowed(STRANGER, RAY_HEAD, 8265)


@pytest.mark.parametrize("source, dest, port, expected", [
    (RAY_WORKER, "mlflow", 5000, True),                      # jobs log metrics and models
    (STRANGER, "mlflow", 5000, False),
    ({"loopfree.io/mlflow-client": "true"}, "mlflow", 5000, True),
    (RAY_HEAD, "mlflow-db", 5432, False),                     # only MLflow talks to its database
    ("mlflow", "mlflow-db", 5432, True),
    (STRANGER, RAY_HEAD, 8265, False),                        # the job API
    ({"loopfree.io/ray-client": "true"}, RAY_HEAD, 8265, True),
    ({"loopfree.io/ray-client": "true"}, RAY_HEAD, 6379, False),  # a client is not a node: no GCS
    (RAY_WORKER, RAY_HEAD, 6379, True),                       # Ray's own traffic
    (RAY_HEAD, RAY_WORKER, 12345, True),
    (STRANGER, RAY_WORKER, 8000, False),                      # Serve
    ({"loopfree.io/serve-client": "true"}, RAY_WORKER, 8000, True),
    ({"loopfree.io/serve-client": "true"}, RAY_HEAD, 8265, False),
])
def test_who_reaches_ray_mlflow_and_serve(source, dest, port, expected):
    named = {"mlflow": pod_labels("Deployment/loopfree-mlflow"), "mlflow-db": pod_labels("StatefulSet/loopfree-mlflow-db")}
    source = named.get(source, source) if isinstance(source, str) else source
    dest = named.get(dest, dest) if isinstance(dest, str) else dest
    assert allowed(source, dest, port) is expected


def test_the_policy_reader_is_checked_against_hand_made_cases():
    assert _selects({}, {"a": "1"}) and _selects({"matchLabels": {"a": "1"}}, {"a": "1", "b": "2"})
    assert not _selects({"matchLabels": {"a": "1"}}, {"a": "2"})
    assert _selects({"matchExpressions": [{"key": "a", "operator": "Exists"}]}, {"a": "x"})
    assert not _selects({"matchExpressions": [{"key": "a", "operator": "In", "values": ["1"]}]}, {"a": "2"})
