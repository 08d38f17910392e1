"""``conclave demo``: the whole main job, offline, on one machine.

Starts local Ray + Serve + the embedded Redis with the demo pool (``configs/demo.yaml``),
sends mixed-domain questions through HTTP with the stock ``openai`` client, prints who
answered and why, adds and removes an expert live through the admin API, and shuts down.
The demo models are tiny and untrained: answers are noise; every code path is real.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from pathlib import Path

import click

from cluster.cli import main
from cluster.cli.common import fail, read_config
from cluster.cli.replay_demo import find_data, replay_section
from cluster.config import ConclaveConfig, ConfigError

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
QUESTIONS = [
    ("What is the derivative of x cubed?", "math"),
    ("Write a Python function that checks whether a number is prime.", "code"),
    ("The patient has a fever and a dry cough; what should be ruled out?", "medicine"),
    ("Is a verbal contract legally binding?", "law"),
    ("Why is the sky blue?", "science"),
    ("What is the capital of Canada?", "general"),
    ("Which is prime?\nA) 21\nB) 23\nC) 25", "math"),
    ("What is the derivative of x cubed?", "math"),  # asked again: a pattern-cache hit
]
STREAM_QUESTION = "Explain how a vaccine trains the immune system."
LIVE_EXPERT = "geology"
LIVE_EXAMPLES = ["Which rocks are igneous: basalt or sandstone?",
                 "How do sedimentary rocks form?", "What causes earthquakes along faults?",
                 "Which mineral is hardest on the Mohs scale?"]
LIVE_QUESTION = "Is granite an igneous or a sedimentary rock?"


@main.command()
@click.option("--config", "config_path", default=None, type=click.Path(),
              help="Demo config (default: configs/demo.yaml).")
@click.option("--port", default=None, type=int, help="HTTP port (default: a free one).")
@click.option("--replay", is_flag=True, help="Only the replay demo, in full: real recorded "
              "MMLU-Pro answers of 26 open models, routed and served.")
@click.option("--questions", default=None, type=int, help="Held-out test questions the replay "
              "part asks (default: 300 with --replay, 40 in the short part of the plain demo).")
@click.option("--data", "data_dir", default=None, type=click.Path(), help="Shared data root "
              "holding mmlu-pro/ (default: $CONCLAVE_SHARED_DATA, else ../shared/data).")
@click.option("--plot", "plot_path", default="replay_per_domain.png", type=click.Path(),
              help="Where the replay part writes its per-domain accuracy plot.")
def demo(config_path: str | None, port: int | None, replay: bool, questions: int | None,
         data_dir: str | None, plot_path: str) -> None:
    """Serve the demo pool, route mixed questions, add/remove an expert live; then a short
    replay demo (real recorded answers). --replay: the replay demo alone, in full."""
    from cluster.local_serve import start_app, stop_app

    data = find_data(data_dir)
    port = port or _free_port()
    if replay:
        if data is None:
            fail("no MMLU-Pro predictions under the shared data root: pass --data DIR")
        _replay_only(data, questions or 300, port, Path(plot_path))
        return
    try:
        config = _config(config_path)
    except ConfigError as err:
        fail(str(err))
    os.environ.setdefault(config.serving.admin_token_env, secrets.token_urlsafe(16))
    click.echo("starting Ray, Serve, embedded Redis and the demo pool…")
    started = time.perf_counter()
    try:
        url = start_app(config, port=port)
        click.echo(f"serving at {url} ({time.perf_counter() - started:.0f}s to start)\n")
        _run(url, os.environ[config.serving.admin_token_env])
        stop_app(shutdown=False)
        if data is None:
            click.echo("\nreplay: skipped (no shared data; see conclave demo --replay --help)")
        else:
            replay_section(data, questions or 40, port, True, Path(plot_path))
    except (ConfigError, ValueError, TimeoutError) as err:
        fail(str(err))
    finally:
        stop_app()
    click.echo("\nshut down cleanly. (tiny untrained demo models: answers are noise)")


def _replay_only(data: Path, questions: int, port: int, plot_path: Path) -> None:
    from cluster.local_serve import stop_app

    click.echo("starting Ray, Serve, embedded Redis and 26 replay experts…")
    try:
        replay_section(data, questions, port, False, plot_path)
    except (ConfigError, ValueError, TimeoutError) as err:
        fail(str(err))
    finally:
        stop_app("replay")
    click.echo("\nshut down cleanly. (answers were replayed from recorded model outputs)")


def _config(path: str | None) -> ConclaveConfig:
    config = read_config(path or str(DEMO_CONFIG))
    if not config.demo_pool:
        raise ConfigError("the demo needs a config with demo_pool: true")
    return config


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(url: str, token: str) -> None:
    import httpx
    import openai

    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
    models = [m.id for m in client.models.list()]
    click.echo(f"models: {', '.join(models)}\n")
    _table([_ask(client, url, q, domain) for q, domain in QUESTIONS])
    _stream(client)
    with httpx.Client(base_url=url, timeout=60,
                      headers={"Authorization": f"Bearer {token}"}) as admin:
        _live_change(client, url, admin)


def _ask(client, url: str, question: str, domain: str, model: str = "conclave") -> dict:
    import httpx

    started = time.perf_counter()
    resp = client.chat.completions.create(
        model=model, max_tokens=16, messages=[{"role": "user", "content": question}])
    elapsed_ms = (time.perf_counter() - started) * 1000
    # The dry run comes after the answer, so the answer's cache status is its own.
    why = httpx.post(url + "/v1/route", json={"query": question, "model": model},
                     timeout=60).json()["decision"]
    return {"question": question, "domain": domain, "info": resp.model_extra["conclave"],
            "why": why, "ms": elapsed_ms}


def _table(rows: list[dict]) -> None:
    click.echo(f"{'QUESTION':<44} {'DOMAIN':<9} {'EXPERTS (weight)':<30} {'WHY (top scores)':<34} "
               f"{'AGG':<9} {'CACHE':<5} {'MS':>6}")
    for row in rows:
        info, why = row["info"], row["why"]
        experts = ", ".join(f"{e['id']} {e['weight']:.2f}" for e in info["experts"])
        top = ", ".join(f"{n} {s:.2f}" for n, s in why["ranked"][:3] if s is not None)
        click.echo(f"{_clip(row['question'], 44):<44} {row['domain']:<9} {_clip(experts, 30):<30} "
                   f"{why['strategy'] + ': ' + _clip(top, 28):<34} {info['aggregation']:<9} "
                   f"{info['cache']:<5} {row['ms']:>6.0f}")
        for failover in info["failovers"]:
            click.echo(f"{'':<44} failover: {failover['expert']} → {failover['replacement']}")


def _stream(client) -> None:
    """One answer streamed (``stream: true``): its tokens leave the pool as they are
    generated, so the first arrive well before the last."""
    started, first, chunks, info = time.perf_counter(), None, 0, {}
    stream = client.chat.completions.create(
        model="conclave:k=1", max_tokens=48, stream=True,
        messages=[{"role": "user", "content": STREAM_QUESTION}])
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            chunks += 1
            first = first or time.perf_counter()
        info = (chunk.model_extra or {}).get("conclave") or info
    last = time.perf_counter()
    who = info["experts"][0]["id"] if info.get("experts") else "?"
    click.echo(f"\nstreamed {STREAM_QUESTION!r} from {who}: {chunks} chunks, first after "
               f"{((first or last) - started) * 1000:.0f} ms, last after "
               f"{(last - started) * 1000:.0f} ms")


def _live_change(client, url: str, admin) -> None:
    science = next(s for s in admin.get("/v1/experts").json()["data"] if s["id"] == "science")
    spec = {"id": LIVE_EXPERT, "kind": "lora", "base": science["base"],
            "adapter": science["adapter"], "domain": "geology",
            "description": "Geology: rocks, minerals, earthquakes.", "examples": LIVE_EXAMPLES}
    click.echo(f"\nbefore: {_who(client, url)}")
    resp = admin.post("/v1/experts", json=spec)
    if resp.status_code != 200:
        raise ValueError(f"adding {LIVE_EXPERT} failed: {resp.json()['error']['message']}")
    click.echo(f"added {LIVE_EXPERT} (registry version {resp.json()['version']}), no redeploy")
    _wait_routed(url, True)
    click.echo(f"after add: {_who(client, url)}")
    resp = admin.delete(f"/v1/experts/{LIVE_EXPERT}")
    click.echo(f"removed {LIVE_EXPERT} (registry version {resp.json()['version']})")
    click.echo(f"after remove: {_who(client, url)}")


def _who(client, url: str) -> str:
    row = _ask(client, url, LIVE_QUESTION, "geology", model="conclave:k=1")
    return f"{LIVE_QUESTION!r} → {row['info']['experts'][0]['id']} ({row['ms']:.0f} ms)"


def _wait_routed(url: str, present: bool, deadline_s: float = 30.0) -> None:
    """The router learns of registry changes by notification: wait until it has."""
    import httpx

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        decision = httpx.post(url + "/v1/route", timeout=60, json={
            "query": LIVE_QUESTION, "model": "conclave:k=1"}).json()["decision"]
        if (LIVE_EXPERT in decision["experts"]) == present:
            return
        time.sleep(0.3)


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
