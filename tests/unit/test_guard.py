"""The guard (routing/guard.py): on outcomes shuffled against the texts it holds every query
on the default expert (routed accuracy = the default's); on real evidence it routes, and beats
the default; per-domain defaults only where backed; the served router's decisions say when it
held back; a default expert outside the pool is an error naming it."""

from __future__ import annotations

import numpy as np
import pytest

from routing.errors import RoutingError
from routing.eval.tuning import out_of_fold
from routing.guard import columns, fit_defaults, guarded, tune_margin
from routing.options import RouteOptions
from routing.outcomes import OutcomeTable
from routing.router import Router
from routing.strategies.knn import KNNStrategy

EXPERTS = ["general", "coder", "weak"]


def _world(n: int, seed: int, shuffled: bool = False):
    """Three kinds of question (clusters in embedding space). ``general`` is right on 70 %
    of every kind; ``coder`` on 95 % of kind 1 and 20 % of the others; ``weak`` on 40 %."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(size=(3, 16))
    kinds = rng.integers(0, 3, n)
    emb = centres[kinds] + 0.3 * rng.normal(size=(n, 16))
    emb = (emb / np.linalg.norm(emb, axis=1, keepdims=True)).astype(np.float32)
    p = np.stack([np.full(n, 0.7), np.where(kinds == 1, 0.95, 0.2), np.full(n, 0.4)], axis=1)
    scores = (rng.random((n, 3)) < p).astype(np.float32)
    if shuffled:  # the outcomes no longer belong to their texts
        scores = scores[rng.permutation(n)]
    table = OutcomeTable(ids=[f"{seed}-{i}" for i in range(n)],
                         texts=[f"q{seed}-{i}" for i in range(n)],
                         domains=[f"kind{k}" for k in kinds], experts=list(EXPERTS),
                         scores=scores)
    return table, emb


def _routed(shuffled: bool, per_domain: bool = False):
    train, train_emb = _world(900, 1, shuffled)
    test, test_emb = _world(600, 2)
    if not per_domain:
        train.domains = ["all"] * len(train)
    make = lambda: KNNStrategy(k=30)  # noqa: E731
    oof = out_of_fold(make, train, train_emb, 3, 0)
    defaults = fit_defaults(train, train_emb)
    margin = tune_margin(oof, np.nan_to_num(train.scores),
                         columns(defaults.names(defaults.domains(train_emb, np.arange(len(train)))),
                                 EXPERTS))
    knn = make()
    knn.fit(train, train_emb)
    test_defaults = columns(defaults.names(defaults.domains(test_emb)), EXPERTS)
    values, _ = guarded(knn.score(test.texts, test_emb).values, test_defaults, margin)
    picked = values.argmax(axis=1)
    rows = np.arange(len(test))
    routed = test.scores[rows, picked].mean()
    default = test.scores[rows, test_defaults].mean()
    return routed, default, margin, defaults, picked


def test_holds_back_on_shuffled_outcomes():
    routed, default, margin, defaults, picked = _routed(shuffled=True)
    assert defaults.single == "general"
    assert np.isinf(margin)
    assert routed == default
    assert (picked == 0).all()


def test_routes_when_the_evidence_is_real():
    routed, default, margin, _, picked = _routed(shuffled=False)
    assert np.isfinite(margin)
    assert (picked == 1).mean() > 0.2  # the coder's kind goes to the coder
    assert routed > default + 0.05


def test_per_domain_default_only_where_backed():
    _, _, _, defaults, _ = _routed(shuffled=False, per_domain=True)
    assert defaults.by_domain == {"kind1": "coder"}  # kinds 0 and 2 keep the best single
    _, _, _, noise, _ = _routed(shuffled=True, per_domain=True)
    assert noise.by_domain == {}


def test_guarded_promotes_the_default_unless_the_lead_passes_the_margin():
    values = np.array([[0.9, 0.5], [0.52, 0.5], [np.nan, 0.1]])
    out, held = guarded(values, np.array([1, 1, 0]), margin=0.1)
    assert list(np.nanargmax(out, axis=1)) == [0, 1, 1]  # row 2: the default has no score
    assert list(held) == [False, True, False]


def test_default_outside_the_pool_is_an_error_naming_it():
    train, emb = _world(50, 1)
    with pytest.raises(RoutingError, match="'gpt-9'"):
        fit_defaults(train, emb, default_expert="gpt-9")


class _Embeddings:
    """The router's encoder, over a fixed text → vector table."""

    def __init__(self, tables):
        self.vectors = {t: v for table, emb in tables for t, v in zip(table.texts, emb,
                                                                        strict=True)}

    def encode(self, texts):
        return np.stack([self.vectors[t] for t in texts])


@pytest.mark.parametrize("shuffled", [True, False])
def test_router_decisions_say_when_the_guard_held_back(shuffled):
    train, train_emb = _world(600, 1, shuffled)
    test, test_emb = _world(60, 2)
    make = lambda: KNNStrategy(k=3)  # noqa: E731  (a noisy neighbourhood: it strays often)
    router = Router(_Embeddings([(train, train_emb), (test, test_emb)]), {"knn": make()},
                    default_strategy="knn", factories={"knn": make})
    router.fit(train)
    decisions = router.route(test.texts, RouteOptions(k=1))
    guards = [d.explanation["guard"] for d in decisions]
    # Real evidence: the coder's kind has the coder as its domain default.
    assert {g["default"] for g in guards} == ({"general"} if shuffled else {"general", "coder"})
    held = [g["held_back"] for g in guards]
    if shuffled:
        assert all(d.experts == ["general"] for d in decisions)
        assert any(held) and all("held back" in g["note"] for g, h in zip(guards, held,
                                                                           strict=True) if h)
    else:
        assert any(d.experts == ["coder"] for d in decisions)
    off = router.route(test.texts, RouteOptions(k=1, guard=False))
    assert all("guard" not in d.explanation for d in off)


def test_a_router_on_few_outcomes_says_why_the_guard_is_off():
    train, train_emb = _world(40, 1)
    make = lambda: KNNStrategy(k=3)  # noqa: E731
    router = Router(_Embeddings([(train, train_emb)]), {"knn": make()}, default_strategy="knn",
                    factories={"knn": make})
    router.fit(train)
    why = router.route(train.texts[:2], RouteOptions(k=1))[0].explanation["guard"]
    assert "40 fit questions" in why["off"] and "routing.default_expert" in why["off"]


@pytest.mark.parametrize("guard", [False, True])
def test_the_served_router_takes_the_evals_lambda(guard):
    """``cost=λ`` in a request picks what the eval's λ sweep scores: the penalised scores,
    then the guard with its cost-aware defaults."""
    from routing.selection import penalise

    train, train_emb = _world(600, 1)
    test, test_emb = _world(80, 2)
    train.cost = {"general": 10.0, "coder": 1.0, "weak": 0.5}
    make = lambda: KNNStrategy(k=30)  # noqa: E731
    router = Router(_Embeddings([(train, train_emb), (test, test_emb)]), {"knn": make()},
                    default_strategy="knn", factories={"knn": make})
    router.fit(train)
    picks = {}
    for weight in (0.0, 0.3, 2.0):
        chosen = picks[weight] = [d.experts[0] for d in router.route(
            test.texts, RouteOptions(k=1, cost_weight=weight, guard=guard))]
        cost = np.array([10.0, 1.0, 0.5]) / 10.0
        values = np.stack([penalise(row, cost, weight) for row in
                           router.strategies["knn"].score(test.texts, test_emb).values])
        if guard:
            d = router.defaults
            names = d.names(d.domains(test_emb), cost, weight)
            values = guarded(values, columns(names, EXPERTS), router.margins["knn"])[0]
        assert chosen == [EXPERTS[j] for j in np.argmax(values, axis=1)]
    assert picks[2.0].count("general") < picks[0.0].count("general")  # λ moves the choice
