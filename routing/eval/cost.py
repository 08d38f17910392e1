"""Cost at equal accuracy: from each strategy's accuracy–cost curves (the λ sweep, with the
router's own cost penalty, with and without the guard), the cheapest point whose accuracy
reaches the best single model's, and the Pareto front over every strategy, λ and guard.

``cost_at_best_single``: the mean cost per query there; ``saving_at_best_single``: the share
of the best single model's cost it saves (1 − cost / that model's cost); ``lambda_at_best_single``
and ``guard_at_best_single``: how to serve it (``conclave:cost=λ,guard=...``). None where no
point reaches it.
"""

from __future__ import annotations

TOLERANCE = 1e-9  # accuracies are means of the same questions: equal is reached


def at_best_single(points: list[dict], target: float, single_cost: float,
                   key: str = "top1") -> dict:
    """The cheapest of ``points`` (``{"lambda", key, "mean_cost"}``) reaching ``target``."""
    reach = [p for p in points if p[key] >= target - TOLERANCE]
    if not reach:
        return {"cost_at_best_single": None, "saving_at_best_single": None,
                "lambda_at_best_single": None, "guard_at_best_single": None}
    best = min(reach, key=lambda p: (p["mean_cost"], -p[key], not p.get("guard", True)))
    saving = 1.0 - best["mean_cost"] / single_cost if single_cost > 0 else None
    return {"cost_at_best_single": best["mean_cost"], "saving_at_best_single": saving,
            "lambda_at_best_single": best["lambda"],
            "guard_at_best_single": best.get("guard", True)}


def sweeps(row: dict) -> list[dict]:
    """A strategy's λ points, each marked with whether the guard was on."""
    return ([{**p, "guard": True} for p in row.get("cost_sweep") or []]
            + [{**p, "guard": False} for p in row.get("cost_sweep_unguarded") or []])


def pareto_front(rows: dict[str, dict], key: str = "top1") -> list[dict]:
    """The (strategy, λ, guard) points no other point beats on both accuracy and cost,
    cheapest first: ``[{"strategy", "lambda", "guard", key, "mean_cost"}, ...]``."""
    points = [{"strategy": name, "lambda": p["lambda"], "guard": p["guard"], key: p[key],
               "mean_cost": p["mean_cost"]} for name, row in rows.items() for p in sweeps(row)]
    points.sort(key=lambda p: (p["mean_cost"], -p[key]))
    front: list[dict] = []
    for point in points:
        if not front or point[key] > front[-1][key] + TOLERANCE:
            front.append(point)
    return front


def cost_figures(rows: dict[str, dict], reference: dict, reference_macro: dict,
                 single_cost: float) -> dict:
    """Per strategy its figures at the best single's accuracy (micro, and ``_macro``), set
    into ``rows``; returns the Pareto fronts ``{"pareto", "pareto_macro"}``."""
    for row in rows.values():
        if not row.get("cost_sweep"):
            continue
        row.update(at_best_single(sweeps(row), reference["best_single"], single_cost))
        macro = at_best_single(sweeps(row), reference_macro["best_single"], single_cost,
                               key="top1_macro")
        row.update({f"{name}_macro": value for name, value in macro.items()})
    return {"pareto": pareto_front(rows), "pareto_macro": pareto_front(rows, "top1_macro")}
