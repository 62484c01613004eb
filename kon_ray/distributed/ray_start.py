"""Starting Ray: joining a cluster, or a new local Ray on this machine's loopback only.

A local Ray's worker processes each run ``setup_local_worker`` first (``LOCAL_SETUP_HOOK``): it
quiets Ray Train's warnings without a State API and keeps torch's rendezvous store on loopback.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from typing import Any

from kon_ray import console

# A local Ray and its workers' gloo groups on loopback only.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "GLOO_SOCKET_IFNAME": "lo"}
# Every worker process of a Ray on this machine's loopback runs ``setup_local_worker`` first.
LOCAL_SETUP_HOOK = "kon_ray.distributed.ray_start.setup_local_worker"


def start_ray(address: str | None, **local: Any) -> None:
    """Join ``address`` (e.g. 'auto' on a cluster) or start a new local Ray bound to 127.0.0.1, never
    one already running here; ``local`` are further ``ray.init`` arguments for it (``num_cpus``).

    Ray reads the loopback switch when it is first imported, so this runs before any import of ray.
    """
    if address is None:
        os.environ.update(LOOPBACK_ENV)
    import ray

    if ray.is_initialized():
        return
    console.capture_ray_logging()
    if address is None:
        ray.init(address="local", _node_ip_address="127.0.0.1", runtime_env=local_runtime_env(), **local)
    elif address.rsplit(":", 1)[0] in ("127.0.0.1", "localhost"):  # e.g. a ray.cluster_utils.Cluster
        ray.init(address=address, runtime_env=local_runtime_env())
    else:
        ray.init(address=address)
    console.capture_ray_output()


def local_runtime_env() -> dict[str, Any]:
    """The runtime environment of a Ray on this machine: the worker set-up hook, and a test's
    fault plan (``kon_ray.faults``) when one is named."""
    from kon_ray.faults import FAULTS_ENV

    env = {"worker_process_setup_hook": LOCAL_SETUP_HOOK}
    if FAULTS_ENV in os.environ:
        return {**env, "env_vars": {FAULTS_ENV: os.environ[FAULTS_ENV]}}
    return env


def setup_local_worker() -> None:
    """Run in each worker process of a Ray on this machine's loopback."""
    quiet_without_state_api()
    store_on_master_addr()


def quiet_without_state_api() -> None:
    """Without ``ray[default]`` there is no State API, and Ray Train's placement-group cleaner
    would warn once a second that it cannot reach it."""
    if importlib.util.find_spec("aiohttp") is None:  # ray[default]'s dashboard needs it
        name = "ray.train.v2._internal.execution.controller.placement_group_cleaner"
        logging.getLogger(name).addFilter(lambda record: "Failed to query" not in record.getMessage())


def store_on_master_addr() -> None:
    """Rank 0's torch rendezvous store listens on MASTER_ADDR (127.0.0.1 here) only.

    torch's TCPStore server listens on every interface whatever address its clients are
    given, so a local Ray Train run would open a port on the network.
    """
    import socket

    from torch.distributed import TCPStore

    # The module: ``torch.distributed.rendezvous`` as an attribute is a function of that name.
    rendezvous = importlib.import_module("torch.distributed.rendezvous")
    create = rendezvous._create_c10d_store

    def create_store(hostname: str, port: int, rank: int, world_size: int, timeout: Any, use_libuv: bool = True) -> Any:
        if rank != 0 or rendezvous._torchelastic_use_agent_store():
            return create(hostname, port, rank, world_size, timeout, use_libuv)
        server = socket.create_server((hostname, port))
        return TCPStore(
            hostname, port, world_size, True, timeout,
            multi_tenant=True, master_listen_fd=server.detach(), use_libuv=use_libuv,
        )

    rendezvous._create_c10d_store = create_store
