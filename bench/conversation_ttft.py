"""Time to first token of later conversation turns, with and without replica affinity
(cluster/serve/affinity.py), on the real model (``configs/demo.yaml``: SmolLM2-135M-Instruct
on vLLM, prefix caching on) with several pool replicas.

Each conversation opens with a long document (MMLU-Pro questions joined, ``doc_words``
words) and a question, then follow-ups; the base expert is asked directly and streamed, so
the time to the first content chunk is the pool's prefill plus the path. With affinity a
later turn finds its history in the prefix cache of the replica that served the previous
turn; without it, Serve's power of two choices may send it to a replica that never saw it.
Conversations run one at a time (no queueing in the figures). Used by bench/conversations.py
(``--ttft``).
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLLOW_UPS = ["Why?", "Explain step by step.", "Are you sure? Check again."]


def ttft_config(affinity: bool, replicas: int, namespace: str):
    """configs/demo.yaml with ``replicas`` pool replicas and affinity on or off."""
    from cluster.config import load_config

    config = load_config(ROOT / "configs" / "demo.yaml")
    pools = [pool.model_copy(update={"num_replicas": replicas}) for pool in config.pools]
    routing = config.routing.model_copy(update={"sessions": config.routing.sessions.model_copy(
        update={"affinity": affinity})})
    serving = config.serving.model_copy(update={"request_timeout_s": 300.0,
                                                "expert_timeout_s": 240.0})
    redis = config.redis.model_copy(update={"namespace": namespace})
    return config.model_copy(update={"pools": pools, "routing": routing, "serving": serving,
                                     "redis": redis})


def documents(texts: list[str], count: int, words: int) -> list[str]:
    """``count`` documents of about ``words`` words, each from its own questions."""
    docs, at = [], 0
    for _ in range(count):
        doc: list[str] = []
        while len(doc) < words:
            doc += texts[at].split()
            at += 1
        docs.append(" ".join(doc[:words]))
    return docs


def first_token_ms(client, model: str, messages: list[dict], session: str) -> tuple[float, str]:
    """(ms to the first content chunk, the whole reply) of one streamed turn."""
    started, first, text = time.perf_counter(), None, []
    stream = client.chat.completions.create(model=model, messages=messages, max_tokens=16,
                                            temperature=0.0, stream=True,
                                            extra_headers={"x-session-id": session})
    for chunk in stream:
        delta = chunk.choices[0].delta.content if chunk.choices else None
        if delta:
            first = first or time.perf_counter()
            text.append(delta)
    return ((first or time.perf_counter()) - started) * 1000, "".join(text)


def run_mode(affinity: bool, docs: list[str], replicas: int, port: int) -> dict:
    """Deploy with affinity on or off, play every conversation; TTFT per turn index."""
    import openai

    from cluster.deploy.local import start_app, stop_app, wait_for_expert
    from experts.real_pool import BASE_ID

    name = f"conv-ttft-{'on' if affinity else 'off'}"
    url = start_app(ttft_config(affinity, replicas, name), port=port, name=name)
    try:
        wait_for_expert(url, BASE_ID)
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        first_ttft(client, BASE_ID, replicas)  # every replica's engine compiled and warm
        turns: dict[int, list[float]] = {}
        for n, doc in enumerate(docs):
            messages = [{"role": "user", "content": f"Read this:\n{doc}\n\nWhat is the first "
                                                    "question about?"}]
            for index, follow_up in enumerate([None, *FOLLOW_UPS]):
                if follow_up:
                    messages.append({"role": "user", "content": follow_up})
                ms, reply = first_token_ms(client, BASE_ID, messages, f"{name}-{n}")
                turns.setdefault(index, []).append(ms)
                messages.append({"role": "assistant", "content": reply})
    finally:
        stop_app(name, shutdown=False)
    later = [ms for index, values in turns.items() if index > 0 for ms in values]
    return {"ttft_p50_first_turn_ms": statistics.median(turns[0]),
            "ttft_p50_later_turns_ms": statistics.median(later),
            "ttft_mean_later_turns_ms": statistics.fmean(later)}


def first_ttft(client, model: str, replicas: int) -> None:
    for n in range(4 * replicas):
        first_token_ms(client, model, [{"role": "user", "content": f"warm up {n}"}], f"w{n}")


def measure(texts: list[str], conversations: int, doc_words: int, replicas: int,
            port: int) -> dict:
    """Both modes' figures and the reduction of the later turns' median with affinity."""
    docs = documents(texts, conversations, doc_words)
    off = run_mode(False, docs, replicas, port)
    on = run_mode(True, docs, replicas, port)
    p50 = {"affinity": on["ttft_p50_later_turns_ms"],
           "no_affinity": off["ttft_p50_later_turns_ms"]}
    return {"ttft_p50_later_turns_ms": p50,
            "ttft_later_turns_reduction": 1 - p50["affinity"] / p50["no_affinity"],
            "ttft_detail": {"affinity": on, "no_affinity": off},
            "ttft_setup": {"conversations": conversations, "turns": 1 + len(FOLLOW_UPS),
                           "doc_words": doc_words, "pool_replicas": replicas,
                           "model": "SmolLM2-135M-Instruct (vLLM, prefix caching)"}}
