"""The AWS cluster launcher config and the MLflow server deployment against the pinned Ray and MLflow
themselves, and no credential written into any infra or job file."""

import json
import re
from pathlib import Path
from urllib.parse import urlparse

import jsonschema
import ray
import yaml

from tests.infra.infra_common import INFRA, ROOT, walk

LAUNCHER = INFRA / "launcher" / "aws.yaml"
MLFLOW = INFRA / "mlflow" / "mlflow-server.yaml"


def test_launcher_config_matches_rays_own_schema():
    """ray-schema.json ships with the installed Ray (the pinned version) and is what `ray up` validates."""
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(yaml.safe_load(LAUNCHER.read_text()), schema)


def test_launcher_uses_the_built_images_and_token_auth(built_tags):
    config = yaml.safe_load(LAUNCHER.read_text())
    images = [v for _, k, v in walk(config) if k in ("image", "head_image", "worker_image")]
    assert images and all(i.split("/")[-1] in built_tags for i in images), images
    assert config["provider"]["type"] == "aws"
    starts = config["head_start_ray_commands"] + config["worker_start_ray_commands"]
    assert all("RAY_AUTH_MODE=token" in c for c in starts if "ray start" in c)
    assert config["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}  # the token, never its value


def mlflow_docs() -> dict[str, dict]:
    return {d["kind"] + "/" + d["metadata"]["name"]: d for d in yaml.safe_load_all(MLFLOW.read_text())}


def test_mlflow_server_arguments_and_settings_are_ones_mlflow_accepts(pins):
    from mlflow.cli import server

    container = mlflow_docs()["Deployment/loopfree-mlflow"]["spec"]["template"]["spec"]["containers"][0]
    server.make_context("server", list(container["args"]))  # raises on an unknown option or a bad value
    import mlflow.environment_variables as mlflow_env

    known = {p.envvar for p in server.params if isinstance(p.envvar, str)}  # the server's options
    known |= {name for name in vars(mlflow_env) if name.startswith("MLFLOW_")}  # settings MLflow reads itself
    settings = {e["name"] for e in container["env"] if e["name"].startswith("MLFLOW_")}
    assert {"MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION"} <= settings <= known, settings - known
    assert container["image"].endswith(f":{pins['mlflow']}")


def test_ray_pods_reach_mlflow_through_its_service_and_allowed_hosts(k8s_docs):
    from mlflow.server.security_utils import is_allowed_host_header

    docs = mlflow_docs()
    env = {e["name"]: e for e in docs["Deployment/loopfree-mlflow"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    allowed = [h.strip() for h in env["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")]
    port = docs["Service/loopfree-mlflow"]["spec"]["ports"][0]["port"]
    uris = {v for docs_ in k8s_docs.values() for d in docs_ for _, k, v in walk(d)
            if k == "value" and isinstance(v, str) and v.startswith("http://loopfree-mlflow")}
    uris |= set(re.findall(r"MLFLOW_TRACKING_URI: (\S+)", (INFRA / "kuberay" / "rayjob-distill.yaml").read_text()))
    assert uris
    for uri in uris:
        parsed = urlparse(uri)
        assert (parsed.hostname, parsed.port) == ("loopfree-mlflow", port), uri
        assert is_allowed_host_header(allowed, parsed.netloc), f"MLflow would refuse Host {parsed.netloc}"


# What a credential looks like when written out: AWS access key ids, private keys, URIs with a password.
CREDENTIAL_PATTERNS = [r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", r"-----BEGIN [A-Z ]*PRIVATE KEY-----",
                       r"(?i)aws_secret_access_key\s*[:=]", r"://[^/\s:@]+:[^/\s@.]+@"]
SECRET_ENV = re.compile(r"(?i)(^|_)(KEY|TOKEN|SECRET|PASSWORD|CREDENTIALS?)(_|$)")


def test_no_credentials_in_infra_or_job_files():
    files = [p for p in INFRA.rglob("*") if p.is_file() and p.name != "LICENSE"] + sorted((ROOT / "jobs").glob("*.yaml"))
    for path in files:
        text = path.read_text()
        for pattern in CREDENTIAL_PATTERNS:
            found = re.findall(pattern, text)
            assert not found, f"{path.relative_to(ROOT)}: looks like a credential: {found}"
        if path.suffix == ".yaml":
            for doc in yaml.safe_load_all(text):
                for _, key, value in walk(doc):
                    if key == "env" and isinstance(value, list):
                        for e in value:
                            if SECRET_ENV.search(e["name"]):  # a secret's value comes from a Secret, never inline
                                assert "value" not in e and "valueFrom" in e, f"{path.name}: {e['name']} is inline"
