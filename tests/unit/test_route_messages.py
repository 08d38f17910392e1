"""The gateway → router messages survive the Ray hop (pickle) unchanged, and the router's
batch answers each query with its own result: a decision, or its own RoutingError."""

from __future__ import annotations

import pickle

import numpy as np
import pytest

from cluster.serve.messages import RouteQuery, RouteResult
from cluster.serve.router import route_batch
from routing.errors import RoutingError
from routing.options import RouteOptions
from routing.selection import Decision

DECISION = Decision(query="q", experts=["a", "b"], weights=[0.75, 0.25], strategy="knn",
                    ranked=[("a", 0.9), ("b", np.float64(0.3))],
                    explanation={"vec": np.arange(2)}, aggregator="a", cached=True)


def test_every_message_round_trips_through_pickle():
    query = RouteQuery("q", RouteOptions(k=2, strategy="skills", sample=True, seed=3,
                                         aggregation="vote"))
    back = pickle.loads(pickle.dumps(query))
    assert back == query and back.options.given() == query.options.given()
    assert hash(back.options) == hash(query.options)
    result = RouteResult(DECISION, "hit", routing_ms=1.5, batch_size=4)
    back = pickle.loads(pickle.dumps(result))
    assert back.decision.to_dict() == DECISION.to_dict()
    assert (back.cache, back.routing_ms, back.batch_size, back.error) == ("hit", 1.5, 4, None)
    failed = pickle.loads(pickle.dumps(RouteResult.failed(RoutingError("unknown expert"))))
    assert isinstance(failed.error, RoutingError) and str(failed.error) == "unknown expert"
    with pytest.raises(RoutingError, match="unknown expert"):
        failed.raise_error()
    assert back.raise_error() is back


def test_a_result_is_a_decision_or_an_error():
    with pytest.raises(ValueError, match="not both or none"):
        RouteResult()
    with pytest.raises(ValueError, match="not both or none"):
        RouteResult(DECISION, error=RoutingError("x"))


class ScriptedRouter:
    """Router-like: k experts named after the query; "boom" fails its whole group."""

    cache = None
    phases: dict = {}  # no timings to trace

    def __init__(self):
        self.calls: list[tuple[list[str], RouteOptions]] = []

    def route(self, queries, options):
        self.calls.append((list(queries), options))
        if any("boom" in q for q in queries):
            raise RoutingError("boom cannot be routed")
        return [Decision(query=q, experts=[q] * options.k, weights=[1 / options.k] * options.k,
                         strategy=options.strategy or "knn", ranked=[], explanation={})
                for q in queries]


def test_the_batch_groups_by_decision_options_and_keeps_errors_per_group():
    router = ScriptedRouter()
    queries = [RouteQuery("x", RouteOptions(k=1)), RouteQuery("  ", RouteOptions(k=1)),
               RouteQuery("y", RouteOptions(k=1, aggregation="vote")),  # same decision key
               RouteQuery("boom", RouteOptions(k=2)), RouteQuery("z", RouteOptions(k=3))]
    results = route_batch(router, queries)
    assert [len(call[0]) for call in router.calls] == [2, 1, 1]  # x and y routed together
    assert results[0].decision.experts == ["x"] and results[0].cache == "off"
    assert results[2].decision.experts == ["y"] and results[4].decision.experts == ["z"] * 3
    assert "empty" in str(results[1].error) and "boom" in str(results[3].error)
    assert {r.batch_size for r in results if r.error is None} == {5}
