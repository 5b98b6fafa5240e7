"""KubeRay manifests against the vendored ray.io/v1 schema, and against the repository: the images they run
are the ones build.sh makes, the entrypoints name real job files and CLI commands, Ray versions match the
pin, every Ray cluster uses token authentication, and resources fit what the job asks for."""

import re
import shlex

import jsonschema
import pytest
import yaml

from tests.infra.infra_common import INFRA, ROOT, containers, load_all, walk

KUBERAY = INFRA / "kuberay"
SERVE_IMPORT_PATH = "loopfree_platform.serve.app:build_app"  # the Serve application builder (docs/serving.md)


@pytest.fixture(scope="module")
def ray_docs(k8s_docs) -> dict[str, dict]:
    docs = {f: d for f, ds in k8s_docs.items() for d in ds if d.get("apiVersion") == "ray.io/v1"}
    assert {d["kind"] for d in docs.values()} == {"RayCluster", "RayJob", "RayService"}
    return docs


def cluster_spec(doc: dict) -> dict:
    spec = doc["spec"]
    return {"RayCluster": lambda: spec, "RayJob": lambda: spec["rayClusterSpec"],
            "RayService": lambda: spec["rayClusterConfig"]}[doc["kind"]]()


def gpu_groups(doc: dict) -> list[tuple[int, int, int]]:
    """(maxReplicas, GPUs per pod, CPUs per pod) of each worker group with GPUs."""
    out = []
    for group in cluster_spec(doc).get("workerGroupSpecs", []):
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        if int(limits.get("nvidia.com/gpu", 0)):
            out.append((group["maxReplicas"], int(limits["nvidia.com/gpu"]), int(limits["cpu"])))
    return out


def test_manifests_match_the_vendored_kuberay_schema(ray_docs):
    schema = yaml.safe_load((KUBERAY / "crds" / "ray.io_v1.trimmed.schema.yaml").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    for name, doc in ray_docs.items():
        errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]
        assert not errors, f"{name}: {errors}"


def test_the_schema_rejects_a_misspelt_field(ray_docs):
    """The check above has teeth: an unknown field in a worker group fails it."""
    schema = yaml.safe_load((KUBERAY / "crds" / "ray.io_v1.trimmed.schema.yaml").read_text())
    doc = yaml.safe_load((KUBERAY / "rayjob-distill.yaml").read_text())
    doc["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["maxReplica"] = 2
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, schema, cls=jsonschema.Draft202012Validator)


def test_ray_version_and_token_auth_everywhere(ray_docs, pins):
    for name, doc in ray_docs.items():
        spec = cluster_spec(doc)
        assert spec["rayVersion"] == pins["ray"], f"{name}: rayVersion {spec['rayVersion']} != ray=={pins['ray']}"
        assert spec["authOptions"]["mode"] == "token", name
        assert spec["authOptions"]["secretName"] == "loopfree-ray-token", name


def test_images_are_the_ones_build_sh_makes(k8s_docs, built_tags):
    for name, docs in k8s_docs.items():
        for doc in docs:
            for c in containers(doc):
                image = c["image"]  # a registry prefix (README: sed to your ECR) is allowed
                if image.split("/")[-1].startswith("loopfree"):
                    assert image.split("/")[-1] in built_tags, f"{name}: {image} is not a tag of build.sh ({built_tags})"
                else:  # third-party images: an explicit, non-moving tag
                    assert ":" in image and not image.endswith(":latest"), f"{name}: pin {image}"


def image_paths() -> dict[str, str]:
    """Folders the Loopfree image copies from the repository: {path in the image: path in the repo}."""
    text = (INFRA / "docker" / "Dockerfile").read_text()
    return {dest: src for src, dest in re.findall(r"^COPY (\w+) (/app/\w+)$", text, re.MULTILINE)}


def test_job_entrypoint_is_a_cli_command_on_a_job_file_in_the_image(ray_docs):
    from loopfree_platform.cli import build_parser

    job = next(d for d in ray_docs.values() if d["kind"] == "RayJob")
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "loopfree_platform.cli"] or argv[0] == "loopfree", argv
    argv = argv[3:] if argv[0] == "python" else argv[1:]
    args = build_parser().parse_args(argv)  # exits (fails the test) on an unknown command or option
    assert args.command == "distill"
    folder, _, file = args.job.rpartition("/")
    assert folder in image_paths(), f"{args.job} is not in a folder the image copies ({image_paths()})"
    assert (ROOT / image_paths()[folder] / file).is_file()


def test_every_job_file_named_in_infra_exists():
    """Generic: any jobs/<name>.yaml mentioned under infra/ (manifests, configs, comments) is in the repo."""
    named = {m for p in INFRA.rglob("*") if p.is_file() and p.suffix in (".yaml", ".sh", ".md", "")
             for m in re.findall(r"\bjobs/[\w.-]+\.yaml\b", p.read_text())}
    assert "jobs/distill.yaml" in named
    missing = sorted(n for n in named if not (ROOT / n).is_file())
    assert not missing, f"named under infra/ but not in the repository: {missing}"


def test_distill_job_fits_its_gpu_workers(ray_docs):
    job = next(d for d in ray_docs.values() if d["kind"] == "RayJob")
    scaling = yaml.safe_load((ROOT / "jobs" / "distill.yaml").read_text())["scaling"]
    groups = gpu_groups(job)
    assert scaling["use_gpu"] and groups
    assert sum(n * gpus for n, gpus, _ in groups) >= scaling["num_workers"], "fewer GPUs than Train workers"
    assert sum(n * cpus for n, _, cpus in groups) > scaling["num_workers"] * scaling["cpus_per_worker"], \
        "no CPU left for Ray Data beside the Train workers (docs/architecture.md)"


def serve_config(ray_docs) -> dict:
    service = next(d for d in ray_docs.values() if d["kind"] == "RayService")
    return yaml.safe_load(service["spec"]["serveConfigV2"])


def test_serve_config_is_valid_for_the_pinned_ray_serve(ray_docs):
    from ray.serve.config import AutoscalingConfig
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(serve_config(ray_docs))
    (app,) = config.applications
    assert app.import_path == SERVE_IMPORT_PATH
    assert config.http_options.port == 8000
    for deployment in app.deployments:
        AutoscalingConfig(**deployment.autoscaling_config)


def test_serve_autoscaling_fits_the_gpu_worker_group(ray_docs):
    service = next(d for d in ray_docs.values() if d["kind"] == "RayService")
    assert cluster_spec(service)["enableInTreeAutoscaling"] is True  # the Ray autoscaler adds pods for replicas
    (app,) = serve_config(ray_docs)["applications"]
    need = sum(d["autoscaling_config"]["max_replicas"] * d.get("ray_actor_options", {}).get("num_gpus", 0)
               for d in app["deployments"])
    assert need <= sum(n * gpus for n, gpus, _ in gpu_groups(service)), "max_replicas cannot all get a GPU"


def test_serve_config_agrees_with_the_platform_serve_config(ray_docs):
    """platform/serve_config.yaml and the RayService deploy the same application."""
    path = ROOT / "platform" / "serve_config.yaml"
    assert path.is_file(), "platform/serve_config.yaml (the Serve config `serve deploy` takes) is missing"
    platform_apps = {a["import_path"]: a for a in yaml.safe_load(path.read_text())["applications"]}
    (app,) = serve_config(ray_docs)["applications"]
    assert app["import_path"] in platform_apps
    ours = platform_apps[app["import_path"]]
    assert {d["name"] for d in app["deployments"]} <= {d["name"] for d in ours.get("deployments", [])}
    assert set(app.get("args", {})) <= set(ours.get("args", {}))


def test_secrets_and_service_accounts_are_documented(k8s_docs):
    """Every Secret a manifest reads is created in the README's steps; every service account is defined."""
    readme = (ROOT / "README.md").read_text()
    secrets = {v["name"] for docs in k8s_docs.values() for d in docs for _, k, v in walk(d) if k == "secretKeyRef"}
    secrets |= {d["spec"].get("rayClusterSpec", d["spec"].get("rayClusterConfig", d["spec"]))["authOptions"]["secretName"]
                for docs in k8s_docs.values() for d in docs if d.get("apiVersion") == "ray.io/v1"}
    undocumented = sorted(s for s in secrets if f"kubectl create secret generic {s}" not in readme)
    assert not undocumented, f"README.md does not say how to create: {undocumented}"
    accounts = {v for docs in k8s_docs.values() for d in docs for _, k, v in walk(d) if k == "serviceAccountName"}
    defined = {d["metadata"]["name"] for d in load_all(KUBERAY / "service-account.yaml") if d["kind"] == "ServiceAccount"}
    assert accounts <= defined, accounts - defined
