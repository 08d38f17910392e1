"""Where a system's CPU goes, for ``bench/vs_vllm.py``: the CPU seconds (user + system) of
this process and of every process it started (the vLLM server and its engine, the local
Ray: raylet, Serve's controller and proxy, each deployment's replicas and the engine
processes they start), by role, between two snapshots. Other jobs on the machine are not
counted; on a shared machine they still take cores from the system measured.
"""

from __future__ import annotations

from pathlib import Path

CLIENT = "client"  # this process: the bench's openai client and tokenizer


def role_of(title: list[str], me: bool) -> str:
    """A short role for a process from its command line (Ray and vLLM set readable
    process titles: ``ray::ServeReplica:APP:DEPLOYMENT``, ``VLLM::EngineCore``)."""
    if me:
        return CLIENT
    if not title:
        return "other"
    head = title[0]
    if head.startswith("ray::ServeReplica:"):
        return "serve:" + head.split(":")[-1]
    if head.startswith(("ray::", "VLLM::")):
        return head
    if "-m" in title[:-1]:  # python -m MODULE
        return title[title.index("-m") + 1].rsplit(".", 1)[-1]
    if "-c" in title[:-1]:  # python -c CODE (multiprocessing's helpers)
        return "python -c"
    if Path(head).name.startswith("python"):  # python SCRIPT ...
        return next((Path(a).name for a in title[1:] if not a.startswith("-")), head)
    return Path(head).name


def snapshot() -> dict[int, tuple[str, float]]:
    """pid → (role, CPU seconds so far) for this process and all its descendants."""
    import psutil

    me = psutil.Process()
    out = {}
    for proc in [me, *me.children(recursive=True)]:
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                out[proc.pid] = (role_of(proc.cmdline(), proc.pid == me.pid),
                                 times.user + times.system)
        except psutil.Error:  # gone, or a zombie
            continue
    return out


def cpu_by_role(before: dict[int, tuple[str, float]],
                after: dict[int, tuple[str, float]]) -> dict[str, float]:
    """CPU seconds per role spent between two snapshots (a process started in between
    counts from zero; one that ended in between is lost)."""
    roles: dict[str, float] = {}
    for pid, (role, seconds) in after.items():
        roles[role] = roles.get(role, 0.0) + seconds - before.get(pid, (role, 0.0))[1]
    return roles


def per_token_ms(seconds: dict[str, float], tokens: int) -> dict[str, float]:
    """CPU ms per output token by role, the largest first, with their ``total``."""
    if not tokens:
        return {}
    ms = {role: round(s * 1000 / tokens, 2) for role, s in
          sorted(seconds.items(), key=lambda item: -item[1]) if s * 1000 / tokens >= 0.01}
    return {"total": round(sum(seconds.values()) * 1000 / tokens, 2), **ms}
