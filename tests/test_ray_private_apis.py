"""Ray's private APIs (a module path or name with a leading underscore under `ray`) are used only where Ray
has no public one. Every use is listed here with its reason, and a check of what the code relies on fails
on a Ray upgrade that moves or changes it; a new use that is not listed fails the scan. The behaviour
behind the first two is also checked end to end by tests/integration/test_local_ray.py (every socket of a
local instance with Serve on 127.0.0.1)."""

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUNTIME, SUBMIT = "platform/loopfree_platform/runtime.py", "platform/loopfree_platform/submit.py"
PROCESS_GROUP = "platform/loopfree_platform/distill/process_group.py"

# symbol -> (the file that uses it, why no public API does)
ALLOWED = {
    "ray._private.ray_constants.ENABLE_RAY_CLUSTER": (RUNTIME, "Ray reads its variable once, at import; no public setter"),
    "ray._common.tls_utils.add_port_to_grpc_server": (RUNTIME, "Serve binds replicas' gRPC servers to [::], no option"),
    "ray.train.torch.config._TorchBackend": (PROCESS_GROUP, "no public hook sets where torch's rendezvous store listens"),
    "ray.train.torch.config._set_torch_distributed_env_vars": (PROCESS_GROUP, "Ray's own step, kept as it is"),
    "ray.train.torch.config._setup_torch_process_group": (PROCESS_GROUP, "Ray's own step, kept as it is"),
    "ray._private.runtime_env.packaging": (SUBMIT, "the SDK's packaging logger, which has no public switch"),
}
PRIVATE_STRING = re.compile(r"^ray(\.\w+)*\._[a-zA-Z]\w*")


def _private(dotted: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in dotted.split("."))


def _dotted(node: ast.AST, names: dict[str, str]) -> str | None:
    """`a.b.c` as the full name it refers to, when its root is a name bound by an import from ray."""
    parts = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if isinstance(node, ast.Name) and node.id in names:
        return ".".join([names[node.id], *reversed(parts)])
    return None


def private_ray_uses(source: str) -> set[str]:
    """Private Ray modules, names, attributes, keyword arguments (`ray.init(_x=...)`) and module-name strings."""
    tree, names, found = ast.parse(source), {}, set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in (a for a in node.names if a.name.split(".")[0] == "ray"):
                names[alias.asname or "ray"] = alias.name if alias.asname else "ray"
                found |= {alias.name} if _private(alias.name) else set()
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "ray":
            for alias in node.names:
                names[alias.asname or alias.name] = full = f"{node.module}.{alias.name}"
                found |= {full} if _private(full) else set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and (full := _dotted(node, names)) and _private(full):
            found.add(full)
        elif isinstance(node, ast.Call) and (func := _dotted(node.func, names)):
            found |= {f"{func}({k.arg}=)" for k in node.keywords if k.arg and k.arg.startswith("_")}
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and PRIVATE_STRING.match(node.value):
            found.add(node.value)
    # `a._b.c` also yields `a._b`: keep the longest name of each use
    return {s for s in found if not any(o != s and o.startswith(s + ".") for o in found)}


def test_the_scan_finds_each_kind_of_private_use():
    source = ("import ray\nimport ray._private.services as services\nfrom ray.train.torch.config import _TorchBackend\n"
              "from ray import serve\nray.init(_node_ip_address='127.0.0.1')\nray._private.worker._global_node.x()\n"
              "serve.context._get_internal_replica_context()\nname = 'ray._private.runtime_env.packaging'\n"
              "ray.util.get_node_ip_address()\nimport os._x\n")
    assert private_ray_uses(source) == {
        "ray._private.services", "ray.train.torch.config._TorchBackend", "ray.init(_node_ip_address=)",
        "ray._private.worker._global_node.x", "ray.serve.context._get_internal_replica_context",
        "ray._private.runtime_env.packaging"}


def test_private_ray_uses_are_the_listed_ones():
    files = [*(ROOT / "platform").rglob("*.py"), *(ROOT / "tests").rglob("*.py")]
    uses = {(str(p.relative_to(ROOT)), s) for p in files if p != Path(__file__).resolve()
            for s in private_ray_uses(p.read_text())}
    listed = {(path, symbol) for symbol, (path, _) in ALLOWED.items()}
    assert not uses - listed, f"a private Ray API not listed in {Path(__file__).name}: use a public one, or list it " \
                              f"with its reason and a check: {sorted(uses - listed)}"
    assert not listed - uses, f"listed but no longer used: remove from ALLOWED: {sorted(listed - uses)}"


def _params(func) -> list[str]:
    return list(inspect.signature(func).parameters)


def test_the_cluster_mode_flag_is_read_at_call_time():
    """runtime._loopback_only sets the constant; the node address is worked out from it when Ray starts."""
    from ray._private import ray_constants, services

    assert ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR == "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
    assert isinstance(ray_constants.ENABLE_RAY_CLUSTER, bool)
    assert "ray_constants.ENABLE_RAY_CLUSTER" in inspect.getsource(services.get_node_ip_address)


def test_serve_still_binds_its_replica_grpc_server_through_the_patched_helper():
    """runtime.grpc_servers_on_loopback wraps tls_utils.add_port_to_grpc_server(server, address)."""
    from ray._common import tls_utils

    assert _params(tls_utils.add_port_to_grpc_server) == ["server", "address"]
    import ray

    replica = (Path(ray.__file__).parent / "serve" / "_private" / "replica.py").read_text()
    assert re.search(r'add_port_to_grpc_server\([^)]*"\[::\]:0"\)', replica), \
        "Serve no longer binds its replica gRPC server to [::]: the loopback patch may be unneeded"


def test_the_torch_backend_steps_keep_their_signatures():
    """distill/process_group._Backend subclasses _TorchBackend and calls Ray's two set-up steps by keyword on the
    Train V2 worker group's execute / execute_single / execute_single_async."""
    from ray.train.backend import Backend
    from ray.train.torch import config
    from ray.train.v2._internal.execution.worker_group import WorkerGroup

    assert issubclass(config._TorchBackend, Backend)
    assert _params(config._TorchBackend.on_start) == ["self", "worker_group", "backend_config"]
    assert callable(config._TorchBackend.on_shutdown)
    assert _params(config._set_torch_distributed_env_vars) == []
    assert {"backend", "world_rank", "world_size", "init_method", "timeout_s"} <= set(
        _params(config._setup_torch_process_group))
    for method in ("execute", "execute_single", "execute_single_async", "get_resources_per_worker", "__len__"):
        assert callable(getattr(WorkerGroup, method)), method


def test_the_packaging_logger_keeps_its_name():
    """submit.submit quiets this logger by name when not verbose."""
    packaging = importlib.import_module("ray._private.runtime_env.packaging")
    assert packaging.default_logger.name == "ray._private.runtime_env.packaging"


@pytest.mark.parametrize("symbol", sorted(ALLOWED))
def test_each_listed_use_carries_a_reason_where_it_is_used(symbol):
    path, reason = ALLOWED[symbol]
    assert reason
    assert "private" in (ROOT / path).read_text() and "test_ray_private_apis.py" in (ROOT / path).read_text()
