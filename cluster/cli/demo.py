"""``conclave demo``: the whole main job, offline, on one machine.

Starts local Ray + Serve + the embedded Redis with the real pool (``configs/demo.yaml``:
SmolLM2-135M-Instruct and its LoRA skill experts), sends skill and general questions through
HTTP with the stock ``openai`` client, prints who answered, why, the answer and whether it
is right, streams one answer, adds a skill expert live through the admin API (its skill's
accuracy before and after), removes it, and ends with the short replay part.
"""

from __future__ import annotations

import os
import secrets
import socket
import tempfile
import time
from pathlib import Path

import click

from cluster.cli import main
from cluster.cli.common import fail, read_config
from cluster.cli.replay_demo import find_data, replay_section
from cluster.config import ConclaveConfig, ConfigError

DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"
GENERAL = ["What is the capital of France?", "Name the three primary colors."]
SYNTHESIS_QUESTION = "Why do leaves change color in autumn?"  # asked of a k=2 panel
STREAM_QUESTION = "Explain how a vaccine trains the immune system."
LIVE_ITEMS = 8  # held-out items of the live skill asked before and after its expert is added


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
@click.option("--out", "out_dir", default=None, type=click.Path(file_okay=False),
              help="Folder for the files the demo writes (the replay part's per-domain "
              "accuracy plot); default: a new temporary folder.")
def demo(config_path: str | None, port: int | None, replay: bool, questions: int | None,
         data_dir: str | None, out_dir: str | None) -> None:
    """Serve the demo pool, route mixed questions, add/remove an expert live; then a short
    replay demo (real recorded answers). --replay: the replay demo alone, in full."""
    from cluster.deploy.local import start_app, stop_app

    data = find_data(data_dir)
    port = port or _free_port()
    out = Path(out_dir or tempfile.mkdtemp(prefix="conclave-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    plot_path = out / "replay_per_domain.png"
    if replay:
        if data is None:
            fail("no MMLU-Pro predictions under the shared data root: pass --data DIR")
        _replay_only(data, questions or 300, port, plot_path)
        return
    try:
        config = _config(config_path)
    except ConfigError as err:
        fail(str(err))
    os.environ.setdefault(config.serving.admin_token_env, secrets.token_urlsafe(16))
    click.echo("starting Ray, Serve, embedded Redis and the real pool (SmolLM2-135M-Instruct "
               "and its LoRA skill experts)…")
    started = time.perf_counter()
    try:
        url = start_app(config, port=port)
        click.echo(f"serving at {url} ({time.perf_counter() - started:.0f}s to start)\n")
        _run(url, os.environ[config.serving.admin_token_env])
        stop_app(shutdown=False)
        if data is None:
            click.echo("\nreplay: skipped (no shared data; see conclave demo --replay --help)")
        else:
            replay_section(data, questions or 40, port, True, plot_path)
    except (ConfigError, ValueError, TimeoutError) as err:
        fail(str(err))
    finally:
        stop_app()
    click.echo("\nshut down cleanly.")


def _replay_only(data: Path, questions: int, port: int, plot_path: Path) -> None:
    from cluster.deploy.local import stop_app

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
    if config.demo_pool == "none":
        raise ConfigError("the demo needs a config with demo_pool: real (or tiny)")
    return config


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(url: str, token: str) -> None:
    import httpx
    import openai

    from experts.real_pool import LIVE_SKILL
    from experts.skills import SKILLS, skill_items

    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
    models = [m.id for m in client.models.list()]
    click.echo(f"models: {', '.join(models)}\n")
    asks = [(item.question, item.skill, item.answer, "conclave")
            for skill in SKILLS if skill != LIVE_SKILL
            for item in skill_items(skill, "test", 1, seed=1)]
    asks += [(q, "general", None, "conclave") for q in GENERAL]
    asks += [(SYNTHESIS_QUESTION, "general", None, "conclave:k=2"), asks[0]]  # then a cache hit
    _table([_ask(client, url, *ask) for ask in asks])
    _stream(client)
    with httpx.Client(base_url=url, timeout=60,
                      headers={"Authorization": f"Bearer {token}"}) as admin:
        _live_change(client, url, admin, skill_items(LIVE_SKILL, "test", LIVE_ITEMS, seed=2))


def _ask(client, url: str, question: str, skill: str, answer: str | None,
         model: str = "conclave") -> dict:
    import httpx

    from experts.skills import is_correct

    started = time.perf_counter()
    resp = client.chat.completions.create(
        model=model, max_tokens=48, messages=[{"role": "user", "content": question}])
    elapsed_ms = (time.perf_counter() - started) * 1000
    text = resp.choices[0].message.content or ""
    # The dry run comes after the answer, so the answer's cache status is its own.
    why = httpx.post(url + "/v1/route", json={"query": question, "model": model},
                     timeout=60).json()["decision"]
    right = "-" if answer is None else ("yes" if is_correct(skill, text, answer) else "no")
    return {"question": question, "skill": skill, "info": resp.model_extra["conclave"],
            "why": why, "ms": elapsed_ms, "answer": text, "right": right}


def _table(rows: list[dict]) -> None:
    click.echo(f"{'QUESTION':<40} {'SKILL':<8} {'EXPERTS (weight)':<22} {'WHY (top scores)':<30} "
               f"{'ANSWER':<34} {'RIGHT':<5} {'AGG':<9} {'CACHE':<5} {'MS':>6}")
    for row in rows:
        info, why = row["info"], row["why"]
        experts = ", ".join(f"{e['id']} {e['weight']:.2f}" for e in info["experts"])
        top = ", ".join(f"{n} {s:.2f}" for n, s in why["ranked"][:2] if s is not None)
        click.echo(f"{_clip(row['question'], 40):<40} {row['skill']:<8} {_clip(experts, 22):<22} "
                   f"{why['strategy'] + ': ' + _clip(top, 24):<30} {_clip(row['answer'], 34):<34} "
                   f"{row['right']:<5} {info['aggregation']:<9} {info['cache']:<5} "
                   f"{row['ms']:>6.0f}")
        for failover in info["failovers"]:
            click.echo(f"{'':<40} failover: {failover['expert']} → {failover['replacement']}")


def _stream(client) -> None:
    """One answer streamed (``stream: true``): its tokens leave the pool as they are
    generated, so the first arrive well before the last."""
    started, first, chunks, info, parts = time.perf_counter(), None, 0, {}, []
    stream = client.chat.completions.create(
        model="conclave:k=1", max_tokens=48, stream=True,
        messages=[{"role": "user", "content": STREAM_QUESTION}])
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            chunks += 1
            parts.append(chunk.choices[0].delta.content)
            first = first or time.perf_counter()
        info = (chunk.model_extra or {}).get("conclave") or info
    last = time.perf_counter()
    who = info["experts"][0]["id"] if info.get("experts") else "?"
    click.echo(f"\nstreamed {STREAM_QUESTION!r} from {who}: {chunks} chunks, first after "
               f"{((first or last) - started) * 1000:.0f} ms, last after "
               f"{(last - started) * 1000:.0f} ms:\n  {_clip(''.join(parts), 160)}")


def _live_change(client, url: str, admin, items: list) -> None:
    """The live skill's held-out items before its expert exists (someone else answers),
    after it is added through the admin API (it answers), and once it is removed."""
    from experts.real_pool import LIVE_SKILL, build_real_pool

    spec = next(s for s in build_real_pool(live=True) if s.id == LIVE_SKILL)
    click.echo(f"\nbefore adding {LIVE_SKILL}: {_skill_accuracy(client, items)}")
    resp = admin.post("/v1/experts", json=spec.model_dump(mode="json"))
    if resp.status_code != 200:
        raise ValueError(f"adding {LIVE_SKILL} failed: {resp.json()['error']['message']}")
    click.echo(f"added {LIVE_SKILL} (registry version {resp.json()['version']}), no redeploy")
    wait_routed(url, items[0].question, LIVE_SKILL, True)
    click.echo(f"after the add: {_skill_accuracy(client, items)}")
    resp = admin.delete(f"/v1/experts/{LIVE_SKILL}")
    click.echo(f"removed {LIVE_SKILL} (registry version {resp.json()['version']})")
    wait_routed(url, items[0].question, LIVE_SKILL, False)
    click.echo(f"after the remove: {_skill_accuracy(client, items[:2])}")


def _skill_accuracy(client, items: list) -> str:
    """``right/asked`` over ``items`` (asked at once, routed k=1) and who answered."""
    from collections import Counter
    from concurrent.futures import ThreadPoolExecutor

    from experts.skills import is_correct

    def ask(item):
        resp = client.chat.completions.create(
            model="conclave:k=1", max_tokens=48,
            messages=[{"role": "user", "content": item.question}])
        return resp.choices[0].message.content or "", resp.model_extra["conclave"]["experts"]

    with ThreadPoolExecutor(len(items)) as threads:
        replies = list(threads.map(ask, items))
    right = sum(is_correct(i.skill, text, i.answer) for i, (text, _) in zip(items, replies, strict=True))
    who = Counter(experts[0]["id"] for _, experts in replies)
    answered = ", ".join(f"{name} ×{count}" for name, count in who.most_common())
    return (f"{right}/{len(items)} right, answered by {answered}; e.g. "
            f"{items[0].question!r} → {_clip(replies[0][0], 40)!r}")


def wait_routed(url: str, question: str, expert: str, present: bool,
                 deadline_s: float = 30.0) -> None:
    """The router learns of registry changes by notification: wait until it has."""
    import httpx

    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        decision = httpx.post(url + "/v1/route", timeout=60, json={
            "query": question, "model": "conclave:k=1"}).json()["decision"]
        if (expert in decision["experts"]) == present:
            return
        time.sleep(0.3)


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"
