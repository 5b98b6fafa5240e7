"""The training workers' torch.distributed process group, with its rendezvous store on the node's Ray address.

Ray Train's own set-up lets rank 0's `init_process_group` start torch's TCPStore, which listens on every
interface (`::`) whatever address the workers are told to dial. A local instance that must stay on
127.0.0.1 (docs/architecture.md, "Local Ray stays on loopback") and a cluster node that should serve only
on its cluster address both want the store bound to the address Ray itself uses for that node. So rank 0
binds a socket there, hands it to a TCPStore server it keeps for the life of the worker, and every rank,
rank 0 included, joins that store as a client through torch's "agent store" rendezvous (the path torchrun
uses when its agent hosts the store).
"""

from __future__ import annotations

import datetime
import os
import socket
from dataclasses import dataclass

import ray
import torch.distributed as dist

# private: no public hook sets where the store listens; Ray's own steps keep the rest (tests/test_ray_private_apis.py)
from ray.train.torch.config import TorchConfig, _set_torch_distributed_env_vars, _setup_torch_process_group, _TorchBackend

_hosted_store = None  # rank 0's store server: kept referenced, or the listening socket closes


def host_store(timeout_s: float) -> tuple[str, int]:
    """On rank 0: a TCPStore server listening on this node's Ray address only; returns (address, port)."""
    global _hosted_store
    address = ray.util.get_node_ip_address()
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.bind((address, 0))
    listener.listen()
    port = listener.getsockname()[1]
    # libuv backend: it takes the bound socket (the classic backend's daemon aborts on a handed-in fd).
    _hosted_store = dist.TCPStore(address, port, None, True, datetime.timedelta(seconds=timeout_s),
                                  wait_for_workers=False, master_listen_fd=listener.detach(), use_libuv=True)
    return address, port


def join_store(address: str, port: int) -> None:
    """On every rank: `init_process_group(init_method="env://")` dials (address, port) as a client."""
    os.environ.update(MASTER_ADDR=address, MASTER_PORT=str(port), TORCHELASTIC_USE_AGENT_STORE="True")


class _Backend(_TorchBackend):
    def on_start(self, worker_group, backend_config: TorchConfig) -> None:
        gpus = worker_group.get_resources_per_worker().get("GPU", 0)
        backend = backend_config.backend or ("nccl" if gpus > 0 else "gloo")
        address, port = worker_group.execute_single(0, host_store, timeout_s=backend_config.timeout_s)
        worker_group.execute(join_store, address=address, port=port)
        # torchrun's variables (RANK, LOCAL_RANK, ...) before init_process_group: Ray Train V2, the only mode
        # the platform runs in (docs/architecture.md, "Ray Train V2"), sets them nowhere else
        worker_group.execute(_set_torch_distributed_env_vars)
        ray.get([worker_group.execute_single_async(rank, _setup_torch_process_group, backend=backend,
                                                   world_rank=rank, world_size=len(worker_group),
                                                   init_method="env://", timeout_s=backend_config.timeout_s)
                 for rank in range(len(worker_group))])


@dataclass
class NodeAddressTorchConfig(TorchConfig):
    """Ray's TorchConfig (gloo on CPU, nccl on GPU) with the rendezvous store on the node's Ray address."""

    @property
    def backend_cls(self):
        return _Backend
