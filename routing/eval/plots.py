"""PNG plots of an evaluation result (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def accuracy_vs_cost(result: dict, path: str | Path) -> Path | None:
    """Top-1 accuracy against mean cost per query as λ sweeps, one curve per strategy, with
    the reference accuracies as horizontal lines. None when the data has no costs."""
    curves = {n: r["cost_sweep"] for n, r in result["strategies"].items() if r.get("cost_sweep")}
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, points in curves.items():
        ax.plot([p["mean_cost"] for p in points], [p["top1"] for p in points], "o-", label=name)
    for ref in ("best_single", "best_per_domain", "oracle"):
        value = result["reference"].get(ref)
        if value is not None:
            ax.axhline(value, linestyle="--", linewidth=0.8, color="grey")
            ax.annotate(ref, (ax.get_xlim()[0], value), fontsize=7, va="bottom")
    ax.set_xlabel("mean cost of the routed expert per query")
    ax.set_ylabel("top-1 accuracy")
    ax.set_title("accuracy vs cost (λ sweep)")
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def per_domain_accuracy(result: dict, path: str | Path) -> Path:
    """Grouped bars: top-1 accuracy per domain, one bar per strategy."""
    plt = _pyplot()
    names = list(result["strategies"])
    domains = sorted({d for r in result["strategies"].values() for d in r["per_domain"]})
    fig, ax = plt.subplots(figsize=(max(7, 0.8 * len(domains)), 4.5))
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(domains))
    for i, name in enumerate(names):
        per = result["strategies"][name]["per_domain"]
        ax.bar(x + i * width, [per.get(d, np.nan) for d in domains], width, label=name)
    ax.set_xticks(x + width * (len(names) - 1) / 2, domains, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("top-1 accuracy")
    ax.set_title("per-domain accuracy")
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def _save(fig, plt, path: str | Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def loss_curve(curve: list[dict], path: str | Path) -> Path:
    """Training loss and held-out top-1 against the step (``conclave router train``)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    steps = [p["step"] for p in curve]
    ax.plot(steps, [p["loss"] for p in curve], "o-", color="tab:blue", label="train loss")
    ax.set_xlabel("step")
    ax.set_ylabel("train loss")
    right = ax.twinx()
    right.plot(steps, [p["holdout_top1"] for p in curve], "s--", color="tab:orange",
               label="held-out top-1")
    right.set_ylabel("held-out top-1")
    ax.set_title("contrastive router training")
    fig.legend(fontsize=8, loc="upper right")
    return _save(fig, plt, path)
