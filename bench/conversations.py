"""Conversation benchmark: do follow-ups stay with turn 1's expert, and do new topics leave it?

Conversations are built from the held-out MMLU-Pro test questions and served through
Conclave with the open pool as replay experts (``configs/replay-mmlu-pro.yaml``), over HTTP
with the stock ``openai`` client, one session each (``x-session-id``), at
``conclave:k=1,guard=false`` (the strategy's own top expert, as bench/replay.py):

- follow-up conversations: a question, then "Why?", "Explain step by step.", "Are you sure?
  Check again.";
- topic-change conversations: a question, "Why?", then a question from another domain whose
  own expert (routed alone, a fresh single-turn request) is not turn 1's, then a follow-up.

Figures (``--json``): ``follow_up_same_expert`` (follow-up turns answered by turn 1's
expert), ``topic_change_switched`` (changed-topic turns answered by the expert the question
gets alone), ``errors``; the baseline (today's routing, the last message alone:
``/v1/route`` of that message) as ``baseline_follow_up_same_expert`` and
``baseline_topic_change_switched``; the routed conversation without sessions as
``no_session_*``; and ``margin_sweep``: both figures for other session margins, the
keep-or-switch rule (routing/sessions.py) applied to each turn's fresh ranking.

With ``--ttft``: ``ttft_p50_later_turns_ms`` with and without replica affinity, on the
real model (bench/conversation_ttft.py).

    .venv/bin/python bench/conversations.py [--conversations 60] [--ttft] [--json FILE]
"""

from __future__ import annotations

import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click
import httpx

FOLLOW_UPS = ["Why?", "Explain step by step.", "Are you sure? Check again."]
MODEL = "conclave:k=1,guard=false"
MARGINS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2)


def route(http: httpx.Client, **body) -> dict:
    resp = http.post("/v1/route", json={"model": MODEL, **body})
    resp.raise_for_status()
    return resp.json()["decision"]


def top(decision: dict) -> str:
    return decision["experts"][0]


def build(http: httpx.Client, questions: list[tuple[str, str]], n: int, seed: int) -> list:
    """``n`` follow-up then ``n`` topic-change conversations: (kind, turns, new topic's
    expert alone or None)."""
    rng = random.Random(seed)
    order = rng.sample(range(len(questions)), len(questions))
    alone: dict[int, str] = {}
    used: set[int] = set()

    def expert(i: int) -> str:
        if i not in alone:
            alone[i] = top(route(http, query=questions[i][0]))
        return alone[i]

    convs = [("follow_up", [questions[i][0], *FOLLOW_UPS], None) for i in order[:n]]
    pool = order[n:]
    for first in pool[:n]:
        other = next(j for j in pool[n:] if j not in used
                     and questions[j][1] != questions[first][1] and expert(j) != expert(first))
        used.add(other)
        convs.append(("topic_change", [questions[first][0], FOLLOW_UPS[0],
                                       questions[other][0], FOLLOW_UPS[1]], expert(other)))
    return convs


def play(url: str, conversation_config, conv, index: int) -> dict:
    """Serve one conversation turn by turn; per turn the expert, the session outcome, the
    last-message and the no-session routings, and the fresh ranking (for the sweep)."""
    import openai

    from routing.sessions import routed_text

    kind, turns, fresh = conv
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    messages, out = [], {"kind": kind, "fresh": fresh, "turns": [], "errors": 0}
    with httpx.Client(base_url=url, timeout=120) as http:
        for turn in turns:
            messages.append({"role": "user", "content": turn})
            try:
                reply = client.chat.completions.create(
                    model=MODEL, messages=messages, max_tokens=8,
                    extra_headers={"x-session-id": f"bench-{os.getpid()}-{index}"})
            except openai.OpenAIError:
                out["errors"] += 1
                break
            info = reply.model_extra["conclave"]
            nosession = route(http, messages=messages)
            out["turns"].append({"expert": info["experts"][0]["id"],
                                 "outcome": info["session"]["outcome"],
                                 "last_only": top(route(http, query=turn)),
                                 "no_session": top(nosession), "ranked": nosession["ranked"],
                                 "standalone": routed_text([m["content"] for m in messages
                                                            if m["role"] == "user"],
                                                           conversation_config).standalone})
            messages.append({"role": "assistant", "content": reply.choices[0].message.content})
    return out


def figures(runs: list[dict], key: str) -> tuple[float, float]:
    """(follow_up_same_expert, topic_change_switched) for the expert in ``key``."""
    same, switched = [], []
    for run in runs:
        turns = run["turns"]
        if run["kind"] == "follow_up":
            same += [t[key] == turns[0]["expert"] for t in turns[1:]]
        elif len(turns) > 2:
            switched.append(turns[2][key] == run["fresh"])
    return sum(same) / max(len(same), 1), sum(switched) / max(len(switched), 1)


def sweep(runs: list[dict], question_margin: float) -> dict:
    """Both figures had the session margin been each of MARGINS (the rule applied to each
    turn's fresh conversation ranking, the session's experts carried along; a question of
    its own keeps ``question_margin``)."""
    from routing.selection import Decision
    from routing.sessions import SessionRecord, keep_or_switch

    result = {}
    for margin in MARGINS:
        replayed = []
        for run in runs:
            kept, turns = None, []
            for turn in run["turns"]:
                ranked = [(name, float("nan") if s is None else s) for name, s in turn["ranked"]]
                fresh = Decision("", [ranked[0][0]], [1.0], "knn", ranked, {})
                held = question_margin if turn["standalone"] else margin
                chosen = fresh if kept is None else keep_or_switch(kept, fresh, "o", held)[0]
                kept = SessionRecord(chosen.experts, chosen.weights, "o")
                turns.append({"expert": chosen.experts[0]})
            replayed.append({**run, "turns": turns})
        result[str(margin)] = dict(zip(("follow_up_same_expert", "topic_change_switched"),
                                       figures(replayed, "expert"), strict=True))
    return result


@click.command()
@click.option("--data", "data_dir", default=None, help="Shared data root (holding mmlu-pro/).")
@click.option("--conversations", default=60, show_default=True, help="Of each kind.")
@click.option("--margin", default=None, type=float, help="routing.sessions.margin to serve.")
@click.option("--max-words", default=None, type=int, help="routing.conversation.max_words.")
@click.option("--standalone-words", default=None, type=int,
              help="routing.conversation.standalone_words.")
@click.option("--concurrency", default=8, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--routing/--no-routing", default=True, show_default=True,
              help="The routing figures (the replay pool).")
@click.option("--ttft/--no-ttft", default=False, show_default=True,
              help="Also the later turns' TTFT with and without affinity (the real model).")
@click.option("--ttft-conversations", default=8, show_default=True)
@click.option("--doc-words", default=300, show_default=True, help="TTFT: shared prefix size.")
@click.option("--pool-replicas", default=2, show_default=True, help="TTFT: pool replicas.")
@click.option("--json", "json_path", default=None, type=click.Path(), help="Write figures.")
def main(data_dir, conversations, margin, max_words, standalone_words, concurrency, seed,
         routing, ttft, ttft_conversations, doc_words, pool_replicas, json_path):
    from cluster.cli.demo import _free_port
    from cluster.cli.replay_demo import find_data, held_out, replay_config
    from cluster.deploy.local import offline_defaults, start_app, stop_app

    offline_defaults()
    root = find_data(data_dir)
    if root is None:
        raise click.ClickException("no MMLU-Pro predictions under the data root: pass --data")
    config = replay_config(root, namespace=f"conv-bench-{os.getpid()}")
    options = config.routing.model_copy(update={
        "conversation": config.routing.conversation.model_copy(
            update={k: v for k, v in (("max_words", max_words),
                                      ("standalone_words", standalone_words)) if v is not None}),
        "sessions": config.routing.sessions.model_copy(
            update={"margin": margin} if margin is not None else {})})
    config = config.model_copy(update={"routing": options})
    held = held_out(config)
    questions = list(zip(held.test.texts, held.test.domains, strict=True))
    port, result = _free_port(), {}
    try:
        if routing:
            url = start_app(config, port=port, name="conv-bench", route_prefix="/")
            with httpx.Client(base_url=url, timeout=120) as http:
                convs = build(http, questions, conversations, seed)
            with ThreadPoolExecutor(concurrency) as pool:
                runs = list(pool.map(play, [url] * len(convs),
                                     [config.routing.conversation] * len(convs), convs,
                                     range(len(convs))))
            stop_app("conv-bench", shutdown=False)
            result = report(runs, config)
        if ttft:
            from conversation_ttft import measure  # bench/ is on sys.path (run as a script)

            result.update(measure(held.test.texts, ttft_conversations, doc_words,
                                  pool_replicas, port))
            click.echo(f"TTFT p50 of later turns (ms): {result['ttft_p50_later_turns_ms']}  "
                       f"reduction {result['ttft_later_turns_reduction']:.2f}")
    finally:
        _shutdown(config)
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2) + "\n")


def report(runs: list[dict], config) -> dict:
    served = figures(runs, "expert")
    baseline = figures(runs, "last_only")
    nosession = figures(runs, "no_session")
    outcomes = [t["outcome"] for r in runs for t in r["turns"]]
    result = {
        "follow_up_same_expert": served[0], "topic_change_switched": served[1],
        "baseline_follow_up_same_expert": baseline[0],
        "baseline_topic_change_switched": baseline[1],
        "no_session_follow_up_same_expert": nosession[0],
        "no_session_topic_change_switched": nosession[1],
        "errors": sum(r["errors"] for r in runs),
        "conversations": len(runs), "turns": len(outcomes),
        "outcomes": {o: outcomes.count(o) for o in sorted(set(outcomes))},
        "margin": config.routing.sessions.margin,
        "max_words": config.routing.conversation.max_words,
        "question_margin": config.routing.sessions.question_margin,
        "standalone_words": config.routing.conversation.standalone_words,
        "margin_sweep": sweep(runs, config.routing.sessions.question_margin),
    }
    click.echo(f"{'routing':<34} {'follow-up same':>14} {'topic switched':>14}")
    for label, (same, switched) in (("last message only (baseline)", baseline),
                                    ("conversation, no session", nosession),
                                    ("conversation + session (served)", served)):
        click.echo(f"{label:<34} {same:>14.3f} {switched:>14.3f}")
    click.echo(f"errors {result['errors']}  outcomes {result['outcomes']}")
    for m, f in result["margin_sweep"].items():
        click.echo(f"  margin {m:>6}: {f['follow_up_same_expert']:.3f} "
                   f"{f['topic_change_switched']:.3f}")
    return result


def _shutdown(config) -> None:
    import ray
    from ray import serve

    from experts.redis_conn import connect, resolve_url

    if ray.is_initialized():
        serve.shutdown()
        ray.shutdown()
    client = connect(resolve_url(config.redis.url))
    for key in client.scan_iter(match=f"{config.redis.namespace}:*", count=1000):
        client.delete(key)


if __name__ == "__main__":
    main()
