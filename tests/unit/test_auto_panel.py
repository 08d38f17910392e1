"""k=auto: calibrated panel sizes (one expert for a confident query, a panel for an
ambiguous one), the temperature fit, the option parsing, the router and the offline panel."""

from __future__ import annotations

import numpy as np
import pytest

from routing.calibration import distribution, fit_temperature, panel_sizes
from routing.errors import RoutingError
from routing.eval.panel import auto_panel, panel_hits
from routing.options import RouteOptions
from routing.selection import select
from routing.strategies.base import Scores

AUTO = RouteOptions(k="auto", k_mass=0.8, k_max=3)


def _scores(rows) -> Scores:
    values = np.asarray(rows, dtype=np.float64)
    return Scores(experts=["a", "b", "c", "d"], values=values,
                  explanations=[{} for _ in values])


def test_a_confident_query_gets_one_expert_an_ambiguous_one_a_panel():
    scores = _scores([[0.95, 0.10, 0.05, 0.05], [0.52, 0.50, 0.49, 0.10]])
    confident, ambiguous = select(["sure", "unsure"], scores, AUTO, "knn", temperature=0.1)
    assert confident.experts == ["a"] and confident.weights == [1.0]
    assert ambiguous.experts == ["a", "b", "c"]
    assert sum(ambiguous.weights) == pytest.approx(1.0)
    assert ambiguous.explanation["selection"]["k"]["auto"] == 3
    # k_max caps the panel; a fixed k is untouched by the calibration.
    capped = select(["unsure"], _scores([[0.52, 0.50, 0.49, 0.10]]),
                    RouteOptions(k="auto", k_max=2), "knn", temperature=0.1)[0]
    assert capped.experts == ["a", "b"]
    fixed = select(["sure"], _scores([[0.95, 0.10, 0.05, 0.05]]), RouteOptions(k=2), "knn")[0]
    assert fixed.experts == ["a", "b"]


def test_panel_sizes_and_distribution():
    probabilities = distribution(np.array([[2.0, 0.0, np.nan], [1.0, 1.0, 1.0]]), 1.0)
    assert probabilities[0, 2] == 0.0 and probabilities.sum(axis=1) == pytest.approx([1, 1])
    assert panel_sizes(probabilities, 0.8, 3).tolist() == [1, 3]
    assert panel_sizes(probabilities, 0.5, 3).tolist() == [1, 2]


def test_temperature_is_fitted_to_which_experts_are_right():
    rng = np.random.default_rng(0)
    outcomes = rng.integers(0, 2, size=(400, 4)).astype(float)
    informative = outcomes + 0.1 * rng.standard_normal(outcomes.shape)
    noise = rng.random(outcomes.shape)
    # Scores that track the outcomes earn a sharper distribution than pure noise.
    assert fit_temperature(informative, outcomes) < fit_temperature(noise, outcomes)


def test_model_string_and_options_parse_k_auto():
    parsed = RouteOptions.parse_model_string("conclave:k=auto,k_mass=0.6,k_max=4")
    assert (parsed.k, parsed.k_mass, parsed.k_max) == ("auto", 0.6, 4)
    for bad, words in [("conclave:k=automatic", "k.*should be 'auto'"),
                       ("conclave:k=auto,k_mass=1.5", "k_mass"),
                       ("conclave:k=auto,k_max=0", "k_max")]:
        with pytest.raises(RoutingError, match=words):
            RouteOptions.parse_model_string(bad)


def test_config_accepts_k_auto():
    from cluster.config import ConclaveConfig, ConfigError, parse_config

    cfg = parse_config({"routing": {"k": "auto", "k_mass": 0.7, "k_max": 4}})
    assert isinstance(cfg, ConclaveConfig) and cfg.routing.k == "auto"
    with pytest.raises(ConfigError, match="routing.k"):
        parse_config({"routing": {"k": "many"}})


def test_router_serves_k_auto_with_a_fitted_temperature():
    from routing.router import Router
    from routing.strategies.knn import KNNStrategy
    from tests.unit.strategy_tables import queries, two_cluster_table

    class TableEncoder:  # the table's own embeddings for its texts and the queries
        def __init__(self, mapping):
            self.mapping = mapping

        def encode(self, texts):
            return np.stack([self.mapping[t] for t in texts])

    table, emb = two_cluster_table(20)
    texts, q = queries()
    encoder = TableEncoder({**dict(zip(table.texts, emb, strict=True)),
                            **dict(zip(texts, q, strict=True))})
    router = Router(encoder, {"knn": KNNStrategy(k=5)}, default_strategy="knn")
    router.fit(table)
    decision = router.route(texts[:1], AUTO)[0]
    assert router.temperatures["knn"] > 0
    assert decision.experts[0] == "alpha" and 1 <= len(decision.experts) <= 3


def test_offline_panel_votes_and_reports_a_curve():
    outcomes = np.array([[0, 1, 1], [1, 0, 0]], dtype=float)
    predictions = np.array([["A", "B", "B"], ["C", "D", "E"]], dtype=object)
    probabilities = np.array([[0.4, 0.35, 0.25], [0.9, 0.05, 0.05]])
    hits = panel_hits(probabilities, outcomes, predictions, np.array([3, 1]))
    assert hits.tolist() == [1.0, 1.0]  # B (0.6) outvotes A (0.4); row 1 alone
    assert panel_hits(probabilities, outcomes, None, np.array([3, 1])).tolist() == [0.0, 1.0]
    result = auto_panel(probabilities * 10, outcomes, probabilities * 10, outcomes, predictions)
    assert {"accuracy", "mean_experts", "curve"} <= set(result)
    masses = [point[0] for point in result["curve"]]
    experts = [point[2] for point in result["curve"]]
    assert masses == sorted(masses) and experts == sorted(experts)
