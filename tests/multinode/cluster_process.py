"""A :class:`~cluster.local_cluster.LocalCluster` driven from a child process.

Why a child: a process holds one Ray connection, and the pytest process already holds the
session's (tests/serving_fixtures.py starts a local Ray for tests/integration, e2e and
reliability, in whatever order they run). The child is spawned fresh (no Ray state
inherited), starts the multi-node cluster and a TCP Redis, becomes the cluster's driver,
and runs the functions below on request; the tests send HTTP load from the pytest process
and call these to deploy, add and remove nodes, and look at replicas. Closing (or the test
process dying: the pipe breaks) shuts the cluster down.
"""

from __future__ import annotations

import multiprocessing
import threading
import traceback


class ClusterCallError(RuntimeError):
    """A function run in the cluster process raised; the message is its error."""


class ClusterProcess:
    """``call(fn, *args)`` runs ``fn(state, *args)`` in the child and returns its result."""

    def __init__(self):
        ctx = multiprocessing.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._process = ctx.Process(target=_serve, args=(child,), name="multinode-driver")
        self._process.start()
        self._lock = threading.Lock()  # a fault thread and the test may both call

    def call(self, fn, *args, timeout_s: float = 300.0):
        with self._lock:
            self._conn.send((fn, args))
            if not self._conn.poll(timeout_s):
                raise TimeoutError(f"{fn.__name__} did not return in {timeout_s:g}s")
            ok, value = self._conn.recv()
        if not ok:
            raise ClusterCallError(value)
        return value

    def close(self) -> None:
        try:
            self.call(shutdown, timeout_s=120)
            self._conn.send(None)
        except (OSError, EOFError, TimeoutError, ClusterCallError):
            pass
        self._process.join(60)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(10)


def _serve(conn) -> None:
    """The child's loop: run each requested function, send back (ok, result or error)."""
    state: dict = {}
    try:
        while True:
            try:
                request = conn.recv()
            except EOFError:  # the test process is gone
                break
            if request is None:
                break
            fn, args = request
            try:
                conn.send((True, fn(state, *args)))
            except Exception as err:  # reported to the caller, which raises it
                detail = traceback.format_exc(limit=4)
                conn.send((False, f"{type(err).__name__}: {err}\n{detail}"))
    finally:
        shutdown(state)


# Functions run in the child: ``state`` holds the cluster, the Redis and the app.

def start(state: dict, head, workers, folder: str) -> dict:
    """Start the TCP Redis and the cluster (head + ``workers``, NodeSpecs)."""
    from local_cluster import LocalCluster, TcpRedis

    state["redis"] = TcpRedis(folder).start()
    state["cluster"] = cluster = LocalCluster(head).start()
    for spec in workers:
        cluster.add(spec)
    return {"redis_url": state["redis"].url, "nodes": cluster.node_ids()}


def build(state: dict, args: dict) -> None:
    """``build_app(args)`` only (its deploy-time checks), deploying nothing."""
    from cluster.serve.app import build_app

    build_app(args)


def deploy(state: dict, args: dict, name: str) -> str:
    """Start Serve (one HTTP proxy, on the head) and deploy the app; returns its URL."""
    from local_cluster import free_port
    from ray import serve

    from cluster.serve.app import build_app

    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app(args), name=name, route_prefix="/")
    state["app"] = name
    return f"http://127.0.0.1:{port}"


def add_node(state: dict, spec) -> str:
    return state["cluster"].add(spec)


def node_names(state: dict) -> list[str]:
    return sorted(state["cluster"].node_ids())


def remove_node(state: dict, name: str) -> str:
    return state["cluster"].remove(name)


def replica_nodes(state: dict, deployment: str) -> list[str]:
    return state["cluster"].replica_nodes(state["app"], deployment)


def wait_replica_nodes(state: dict, deployment: str, expected: list[str],
                       timeout_s: float) -> list[str]:
    return state["cluster"].wait_replica_nodes(state["app"], deployment, expected, timeout_s)


def pool_stats(state: dict, deployment: str) -> dict[str, dict]:
    """``stats()`` of the pool's replicas, by node name."""
    return state["cluster"].pool_stats(state["app"], deployment)


def shutdown(state: dict) -> None:
    cluster, redis = state.pop("cluster", None), state.pop("redis", None)
    if cluster is not None:
        cluster.shutdown()
    if redis is not None:
        redis.stop()
