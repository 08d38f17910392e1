"""An expert joins without retraining: validate it, store its outcomes in the real
embedded Redis, rebuild and route with them; remove deletes them."""

from __future__ import annotations

import json

import pytest
from test_skills import ScriptedEngine
from text_tables import QUERIES, text_table

from experts.redis_conn import connect
from experts.spec import ExpertSpec
from routing.onboard import load_validation, render_question, validate_expert
from routing.options import RouteOptions
from routing.outcomes import OutcomeError
from routing.profile_store import ProfileStore, merge_columns
from routing.router import Router
from routing.strategies.glider import GliderStrategy
from routing.strategies.skills import SkillsStrategy

SPEC = ExpertSpec(id="judge", model="org/tiny", domain="law", cost=0.5)


def _val_rows() -> list[dict]:
    table = text_table()
    rows = [{"id": qid, "text": text, "domain": domain, "answer": "B", "options": ["x", "y"]}
            for qid, text, domain in zip(table.ids, table.texts, table.domains, strict=True)]
    return rows


def _judge_engine() -> ScriptedEngine:
    # Right (B) on contract questions, wrong (A) on everything else.
    return ScriptedEngine({"contract": ["The answer is (B)."], "": ["A."]})


def test_validate_expert_scores_its_answers(tmp_path):
    path = tmp_path / "val.jsonl"
    path.write_text("\n".join(json.dumps(row) for row in _val_rows()) + "\n")
    rows = load_validation(path)
    table = validate_expert(_judge_engine(), SPEC, rows, batch_size=5)
    assert table.experts == ["judge"] and len(table) == len(rows)
    law = [i for i, d in enumerate(table.domains) if d == "law"]
    assert table.scores[law, 0].tolist() == [1.0] * len(law)
    assert table.scores[:, 0].sum() == len(law)
    assert table.predictions[0, 0] == "A." and table.cost == {"judge": 0.5}
    assert "Options:\nA. x\nB. y" in render_question(rows[0])


def test_bad_validation_files(tmp_path):
    with pytest.raises(OutcomeError, match="not found"):
        load_validation(tmp_path / "missing.jsonl")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "1", "text": "q"}\n')
    with pytest.raises(OutcomeError, match=r"bad.jsonl: question\(s\) \[.1.\] have no .answer."):
        load_validation(bad)


def test_profile_store_round_trip_and_merge(redis_url):
    store = ProfileStore(connect(redis_url), namespace="t")
    judge = validate_expert(_judge_engine(), SPEC, _val_rows())
    store.save("judge", judge)
    store.save("mathy", text_table(["mathy"]))
    assert store.experts() == ["judge", "mathy"]
    back = store.load("judge")
    assert back.ids == judge.ids and (back.scores == judge.scores).all()
    assert back.cost == {"judge": 0.5}
    merged = store.load_all()
    assert merged.experts == ["judge", "mathy"] and len(merged) == len(judge)
    assert store.remove("judge") and not store.remove("judge")
    assert store.experts() == ["mathy"]
    with pytest.raises(OutcomeError, match="no stored outcomes for expert 'judge'"):
        store.load("judge")
    with pytest.raises(OutcomeError, match="two outcome tables"):
        merge_columns([back, back])


def test_validated_expert_joins_the_router(redis_url, minilm):
    router = Router(minilm, {"skills": SkillsStrategy(minilm), "glider": GliderStrategy(minilm)},
                    default_strategy="skills", costs={"mathy": 1.0, "lawyer": 5.0, "medic": 2.0})
    router.fit(text_table())
    store = ProfileStore(connect(redis_url), namespace="t")
    store.save("judge", validate_expert(_judge_engine(), SPEC, _val_rows()))
    # A replica rebuilding from the store sees the same expert.
    router.add_expert("judge", store.load("judge"), cost=0.5)
    options = RouteOptions(k=1, cost_weight=0.5)
    assert router.route([QUERIES["lawyer"]], options)[0].experts == ["judge"]
    assert router.route([QUERIES["mathy"]], options)[0].experts == ["mathy"]


def test_cli_add_validate_on_stores_outcomes_and_remove_deletes_them(redis_url, tiny_lm, tmp_path):
    from click.testing import CliRunner

    from cluster.cli import main

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(f"id: tiny\nmodel: {tiny_lm}\ngeneration: {{max_tokens: 4}}\n")
    val = tmp_path / "val.jsonl"
    val.write_text("\n".join(json.dumps(row) for row in _val_rows()[:3]) + "\n")
    runner = CliRunner()
    result = runner.invoke(main, ["experts", "add", str(spec_file), "--validate-on", str(val),
                                  "--redis", redis_url])
    assert result.exit_code == 0, result.output
    assert "validated tiny" in result.output and "on 3 questions" in result.output
    store = ProfileStore(connect(redis_url))
    assert store.experts() == ["tiny"] and len(store.load("tiny")) == 3
    result = runner.invoke(main, ["experts", "remove", "tiny", "--redis", redis_url])
    assert result.exit_code == 0, result.output
    assert store.experts() == []
    bad = runner.invoke(main, ["experts", "add", str(spec_file), "--validate-on",
                               str(tmp_path / "none.jsonl"), "--redis", redis_url])
    assert bad.exit_code != 0 and "validation file not found" in bad.output


def test_a_replica_starts_from_stored_profiles(redis_url, minilm):
    from text_tables import QUESTIONS

    from cluster.config import ConclaveConfig
    from routing.router import build_router

    store = ProfileStore(connect(redis_url), namespace="t")
    store.save("judge", validate_expert(_judge_engine(), SPEC, _val_rows()))
    specs = [SPEC, ExpertSpec(id="mathy", model="org/tiny", examples=QUESTIONS["math"])]
    router = build_router(ConclaveConfig(), specs, None, encoder=minilm, profiles=store)
    assert router.experts == ["judge", "mathy"]
    decisions = router.route([QUERIES["lawyer"], QUERIES["mathy"]], RouteOptions(k=1))
    assert [d.experts[0] for d in decisions] == ["judge", "mathy"]


def test_startup_merges_config_outcomes_stored_profiles_and_examples(redis_url, minilm):
    """A router (re)start: the config's outcome data, the stored validation outcomes of an
    onboarded expert (which also replace a config column) and example-only experts."""
    from cluster.config import ConclaveConfig
    from routing.router import build_router, startup_outcomes

    base = text_table(["mathy", "medic"])  # the config's routing.outcomes
    store = ProfileStore(connect(redis_url), namespace="t")
    store.save("judge", validate_expert(_judge_engine(), SPEC, _val_rows()))
    newer = text_table(["medic"])
    newer.scores[:] = 1.0 - newer.scores  # re-validated: now right everywhere but medicine
    store.save("medic", newer)
    store.save("gone", text_table(["gone"]))  # stored, but no spec any more: ignored
    poems = ["Write a sonnet about the sea.", "Compose a haiku about autumn leaves.",
             "Which rhyme scheme does a limerick use?"]
    specs = [ExpertSpec(id=name, model="org/tiny") for name in ("mathy", "medic")]
    specs += [SPEC, ExpertSpec(id="poet", model="org/tiny", examples=poems)]
    table = startup_outcomes(specs, base, store)
    assert sorted(table.experts) == ["judge", "mathy", "medic", "poet"]
    medic = table.scores[:, table.experts.index("medic")]
    law_rows = [i for i, qid in enumerate(table.ids) if qid.startswith("law")]
    assert medic[law_rows].tolist() == [1.0] * len(law_rows)  # the stored column won
    store.remove("medic")
    router = build_router(ConclaveConfig(), specs, base, encoder=minilm, profiles=store)
    assert router.experts == ["judge", "mathy", "medic", "poet"]
    queries = [QUERIES["lawyer"], QUERIES["mathy"], QUERIES["medic"],
               "Write a short poem with a rhyme about the moon."]
    decisions = router.route(queries, RouteOptions(k=1))
    assert [d.experts[0] for d in decisions] == ["judge", "mathy", "medic", "poet"]
