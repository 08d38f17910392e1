"""Cost at equal accuracy (routing/eval/cost.py) on small tables whose answers are worked out
by hand."""

from __future__ import annotations

import numpy as np
import pytest

from routing.eval.cost import at_best_single, cost_figures, pareto_front
from routing.eval.metrics import cost_sweep


def test_cheapest_point_reaching_the_best_single():
    points = [{"lambda": 0.0, "top1": 0.80, "mean_cost": 10.0},
              {"lambda": 0.5, "top1": 0.75, "mean_cost": 4.0},
              {"lambda": 1.0, "top1": 0.70, "mean_cost": 2.0}]
    got = at_best_single(points, target=0.75, single_cost=10.0)
    assert got["cost_at_best_single"] == 4.0 and got["lambda_at_best_single"] == 0.5
    assert got["saving_at_best_single"] == pytest.approx(0.6)
    assert at_best_single(points, target=0.9, single_cost=10.0)["cost_at_best_single"] is None


def test_sweep_then_figures_on_a_hand_table():
    # "big" (cost 10) right on all 4 questions, "small" (cost 1) on the first 3, "bad"
    # (cost 0) on none. Scores: big 0.9, small 0.8 on the first three and 0.1 on the last.
    values = np.array([[0.9, 0.8, 0.0]] * 3 + [[0.9, 0.1, 0.0]])
    outcomes = np.array([[1.0, 1.0, 0.0]] * 3 + [[1.0, 0.0, 0.0]])
    cost = np.array([10.0, 1.0, 0.0])
    # λ = 0: big everywhere (1.0, cost 10). λ = 0.5, spread 0.9, scaled costs 1 and 0.1:
    # rows 0-2: big 0.9 − 0.45 = 0.45 < small 0.8 − 0.045 = 0.755 → small; row 3: big 0.45
    # > small 0.1 − 0.045 → big. Accuracy 1.0 at (3·1 + 10) / 4 = 3.25.
    points = cost_sweep(values, outcomes, cost, [0.0, 0.5], domains=["a"] * 4)
    assert [(p["top1"], p["mean_cost"]) for p in points] == [(1.0, 10.0), (1.0, 3.25)]
    rows = {"s": {"cost_sweep": points}}
    fronts = cost_figures(rows, {"best_single": 1.0}, {"best_single": 1.0}, single_cost=10.0)
    assert rows["s"]["saving_at_best_single"] == pytest.approx(0.675)  # 1 − 3.25 / 10
    assert rows["s"]["lambda_at_best_single"] == 0.5
    assert [p["lambda"] for p in fronts["pareto"]] == [0.5]  # λ = 0 costs more, same accuracy


def test_pareto_front_drops_dominated_points():
    rows = {"a": {"cost_sweep": [{"lambda": 0.0, "top1": 0.6, "mean_cost": 5.0},
                                 {"lambda": 1.0, "top1": 0.5, "mean_cost": 1.0}]},
            "b": {"cost_sweep": [{"lambda": 0.0, "top1": 0.55, "mean_cost": 6.0},
                                 {"lambda": 1.0, "top1": 0.58, "mean_cost": 2.0}]}}
    front = pareto_front(rows)
    assert [(p["strategy"], p["lambda"]) for p in front] == [("a", 1.0), ("b", 1.0), ("a", 0.0)]
