"""Real experts benchmark: a shuffled stream of held-out items of every skill
(:func:`experts.skills.mixed_stream`), served over HTTP by the real pool
(``configs/demo.yaml``: SmolLM2-135M-Instruct and its LoRA skill experts) with the stock
``openai`` client, greedy, exact match.

1. The live skill's expert (``experts.real_pool.LIVE_SKILL``) starts unregistered: its items
   routed ``conclave:k=1`` give ``added_expert_before``; it is added through the admin API
   (no redeploy) and the same items give ``added_expert_after``.
2. Every expert asked directly on the whole stream: ``per_skill`` (the base's and the
   skill's own adapter's exact match on that skill's items), ``best_single_accuracy`` (the
   one expert best on the whole stream) and ``oracle_accuracy`` (each item to its own
   skill's adapter).
3. The stream routed (``conclave:k=1``): ``routed_accuracy``, ``routing_accuracy`` (share
   routed to the item's own skill expert), ``tok_per_s`` (completion tokens over the wall
   time of this run), ``errors`` (failed requests over the whole benchmark).

    .venv/bin/python bench/real_experts.py [--per-skill 40] [--concurrency 16] [--json FILE]
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parents[1]


class Asker:
    """Asks items over HTTP and counts errors; a failed request is a wrong answer."""

    def __init__(self, url: str, concurrency: int):
        import openai

        self.client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0,
                                    timeout=300)
        self.concurrency, self.errors, self.first_error = concurrency, 0, None

    def ask(self, model: str, items) -> list[dict]:
        with ThreadPoolExecutor(self.concurrency) as threads:
            return list(threads.map(lambda item: self._one(model, item), items))

    def _one(self, model: str, item) -> dict:
        from experts.skills import is_correct

        try:
            resp = self.client.chat.completions.create(
                model=model, max_tokens=48, temperature=0.0,
                messages=[{"role": "user", "content": item.question}])
        except Exception as err:  # noqa: BLE001 - counted, and the run goes on
            self.errors += 1
            self.first_error = self.first_error or repr(err)[:300]
            return {"right": False, "expert": None, "tokens": 0, "error": repr(err)}
        info = resp.model_extra.get("conclave") or {}
        text = resp.choices[0].message.content or ""
        return {"right": is_correct(item.skill, text, item.answer),
                "lenient": contains_answer(item.skill, text, item.answer),
                "expert": (info.get("experts") or [{}])[0].get("id"),
                "tokens": resp.usage.completion_tokens}


def contains_answer(skill: str, reply: str, answer: str) -> bool:
    """A lenient check, to show how far exact match is from "the answer is in there": the
    answer anywhere in the reply as a whole word (the first JSON object, for extract)."""
    from experts.skills import is_correct

    if skill == "extract":
        found = re.search(r"\{.*?\}", reply, re.S)
        return bool(found) and is_correct(skill, found.group(0), answer)
    return re.search(rf"(?<![\w-]){re.escape(answer)}(?![\w-])", reply, re.I) is not None


def share(rows: list[dict], key: str = "right") -> float:
    return sum(bool(row[key]) for row in rows) / max(len(rows), 1)


def live_add(asker: Asker, url: str, token: str, items) -> dict:
    """Routed accuracy on the live skill's items before and after its expert is added."""
    import httpx

    from cluster.cli.demo import wait_routed
    from experts.real_pool import LIVE_SKILL, build_real_pool

    before = share(asker.ask("conclave:k=1", items))
    spec = next(s for s in build_real_pool(live=True) if s.id == LIVE_SKILL)
    resp = httpx.post(url + "/v1/experts", json=spec.model_dump(mode="json"), timeout=120,
                      headers={"Authorization": f"Bearer {token}"})
    resp.raise_for_status()
    wait_routed(url, items[0].question, LIVE_SKILL, True)
    return {"added_expert_before": before,
            "added_expert_after": share(asker.ask("conclave:k=1", items))}


def direct(asker: Asker, stream, experts: list[str]) -> dict:
    """Every expert on the whole stream: per-skill base/adapter, best single, oracle."""
    from experts.real_pool import BASE_ID
    from experts.skills import SKILLS

    answers = {expert: asker.ask(expert, stream) for expert in experts}
    per_skill = {}
    for skill in SKILLS:
        rows = [i for i, item in enumerate(stream) if item.skill == skill]
        per_skill[skill] = {who: share([answers[expert][i] for i in rows])
                            for who, expert in (("base", BASE_ID), ("adapter", skill))}
        per_skill[skill]["base_contains"] = share([answers[BASE_ID][i] for i in rows],
                                                  "lenient")
    whole = {expert: share(rows) for expert, rows in answers.items()}
    best = max(whole, key=whole.get)
    oracle = [answers[item.skill][i] for i, item in enumerate(stream)]
    return {"per_skill": per_skill, "per_expert": whole, "best_single": best,
            "best_single_accuracy": whole[best], "oracle_accuracy": share(oracle)}


def routed(asker: Asker, stream) -> dict:
    started = time.perf_counter()
    rows = asker.ask("conclave:k=1", stream)
    wall = time.perf_counter() - started
    for row, item in zip(rows, stream, strict=True):
        row["own"] = row["expert"] == item.skill
    return {"routed_accuracy": share(rows), "routing_accuracy": share(rows, "own"),
            "tok_per_s": sum(row["tokens"] for row in rows) / wall, "routed_wall_s": wall}


def table(f: dict) -> str:
    lines = [f"{'skill':<9} {'base':>6} {'adapter':>8} {'base, answer anywhere':>22}"]
    lines += [f"{skill:<9} {v['base']:>6.3f} {v['adapter']:>8.3f} {v['base_contains']:>22.3f}"
              for skill, v in f["per_skill"].items()]
    lines.append("")
    for key in ("routed_accuracy", "oracle_accuracy", "best_single_accuracy",
                "routing_accuracy", "added_expert_before", "added_expert_after", "tok_per_s",
                "errors"):
        lines.append(f"{key:<22} {f[key]:>8.3f}" if isinstance(f[key], float)
                     else f"{key:<22} {f[key]:>8}")
    if f["first_error"]:
        lines.append(f"first error: {f['first_error']}")
    lines.append(f"best single expert: {f['best_single']}; routed/oracle "
                 f"{f['routed_accuracy'] / max(f['oracle_accuracy'], 1e-9):.3f}, routed/best "
                 f"{f['routed_accuracy'] / max(f['best_single_accuracy'], 1e-9):.2f}")
    return "\n".join(lines)


@click.command()
@click.option("--per-skill", default=40, show_default=True, help="Held-out items per skill.")
@click.option("--concurrency", default=16, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "json_path", default=None, type=click.Path(), help="Write figures.")
def main(per_skill: int, concurrency: int, seed: int, json_path: str | None) -> None:
    from cluster.cli.demo import _free_port
    from cluster.config import load_config
    from cluster.deploy.local import offline_defaults, start_app, stop_app
    from experts.real_pool import LIVE_SKILL
    from experts.skills import SKILLS, mixed_stream

    offline_defaults()
    config = load_config(ROOT / "configs" / "demo.yaml")
    config.redis.namespace = f"real-bench-{os.getpid()}"
    config.routing.cache.enabled = False  # every routed item decided afresh
    token = os.environ.setdefault(config.serving.admin_token_env, secrets.token_urlsafe(16))
    stream = mixed_stream(per_skill, seed=seed)
    url = start_app(config, port=_free_port())
    try:
        asker = Asker(url, concurrency)
        figures = live_add(asker, url, token, [i for i in stream if i.skill == LIVE_SKILL])
        figures.update(direct(asker, stream, ["smollm2", *SKILLS]))
        figures.update(routed(asker, stream))
        figures["errors"], figures["first_error"] = asker.errors, asker.first_error
    finally:
        stop_app()
    figures.update(items=len(stream), per_skill_items=per_skill, seed=seed)
    click.echo(table(figures))
    if json_path:
        Path(json_path).write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
