"""Sessions (routing/sessions.py): the keep-or-switch rule, the id checks, and the Redis
store shared by gateway replicas (real embedded Redis)."""

from __future__ import annotations

import logging

import pytest

from experts.redis_conn import connect
from routing.selection import Decision
from routing.sessions import (
    SessionConfig,
    SessionIdError,
    SessionRecord,
    SessionStore,
    keep_or_switch,
    session_key,
)


def decision(ranked, k=1):
    return Decision(query="q", experts=[n for n, _ in ranked[:k]], weights=[1.0 / k] * k,
                    strategy="knn", ranked=ranked, explanation={})


def test_kept_while_every_kept_expert_is_within_the_margin_of_the_best():
    record = SessionRecord(["math"], [1.0], "opts")
    close = decision([("code", 0.7), ("math", 0.6)])
    held, outcome, why = keep_or_switch(record, close, "opts", margin=0.2)
    assert (held.experts, outcome) == (["math"], "kept")
    assert why["best"] == 0.7 and why["scores"] == {"math": 0.6}
    far = decision([("code", 0.9), ("math", 0.6)])
    held, outcome, _ = keep_or_switch(record, far, "opts", margin=0.2)
    assert (held.experts, outcome) == (["code"], "switched")


def test_a_gone_expert_or_other_options_switch():
    record = SessionRecord(["math"], [1.0], "opts")
    assert keep_or_switch(record, decision([("code", 0.9)]), "opts", 1.0)[1] == "switched"
    same = decision([("math", 0.9)])
    assert keep_or_switch(record, same, "other", 1.0)[1] == "switched"


def test_session_key_order_and_checks():
    assert session_key("h", "u", "b") == "h"
    assert session_key(None, "u", "b") == "u"
    assert session_key(None, None, "b") == "b"
    assert session_key(None, None, None) is None
    with pytest.raises(SessionIdError, match="limit is 128"):
        session_key("x" * 129, None, None)
    with pytest.raises(SessionIdError, match="control characters"):
        session_key(None, "a\nb", None)
    assert session_key("x" * 128, None, None) == "x" * 128


def test_two_stores_on_one_redis_see_one_decision(redis_url):
    outcomes = []
    config = SessionConfig(margin=0.2)
    one = SessionStore(connect(redis_url), "t", config, outcomes.append)
    two = SessionStore(connect(redis_url), "t", config, outcomes.append)
    first = one.decide("s1", decision([("math", 0.9), ("code", 0.1)]), "opts")
    # the other replica routes a follow-up that leans (within the margin) to code
    later = two.decide("s1", decision([("code", 0.8), ("math", 0.7)]), "opts")
    assert (first.outcome, later.outcome, later.decision.experts) == ("new", "kept", ["math"])
    # racing starts: the second replica finds the first one's record (NX)
    dry = two.decide("s1", decision([("code", 0.9), ("math", 0.1)]), "opts", dry_run=True)
    assert dry.outcome == "switched" and outcomes == ["new", "kept"]  # a dry run stores nothing
    assert connect(redis_url).ttl("t:session:s1") > 3000
    # a question of its own is held to question_margin (0): the same scores switch it
    lean = decision([("code", 0.8), ("math", 0.7)])
    assert two.decide("s1", lean, "opts", dry_run=True, standalone=True).outcome == "switched"


def test_redis_down_is_stateless_counted_and_logged_once(caplog, tmp_path):
    outcomes = []
    dead = connect(f"unix://{tmp_path}/no-redis.sock")
    store = SessionStore(dead, "t", SessionConfig(retry_s=0.001), outcomes.append)
    with caplog.at_level(logging.WARNING, logger="routing.sessions"):
        for _ in range(3):
            turn = store.decide("s1", decision([("math", 0.9)]), "opts")
            assert (turn.outcome, turn.decision.experts) == ("stateless", ["math"])
    assert outcomes == ["stateless"] * 3
    assert len([r for r in caplog.records if "unreachable" in r.message]) == 1
