"""``conclave router train``: train the contrastive router on an outcome folder and write
``DIR/router.safetensors`` (the weights the router deployment loads), ``DIR/train.json``
(the schedule, the loss curve, the held-out and test figures) and ``DIR/loss_curve.png``.

By default it trains on the train split that ``conclave eval`` uses, so the test figure it
prints is comparable with the eval's; ``all_questions`` trains on every question instead
(for deployment, once the schedule is trusted). Early stopping always uses a held-out part
of the training questions, never the test split.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

WEIGHTS_FILE = "router.safetensors"


def train_router(data_dir: str | Path, out_dir: str | Path, pool: str | None = None,
                 seed: int = 0, all_questions: bool = False, encoder=None,
                 progress: bool = True, **schedule) -> dict:
    """Train, save and report (the dict written to ``train.json``)."""
    from routing.eval.plots import loss_curve
    from routing.eval.run import load_eval_table, strategy_row
    from routing.eval.split import make_split
    from routing.strategies.contrastive import ContrastiveStrategy

    if encoder is None:
        from routing.encoder import SentenceEncoder

        encoder = SentenceEncoder()
    table = load_eval_table(data_dir, pool)
    train_rows, test_rows = make_split(data_dir, table, seed=seed)
    if all_questions:
        train_rows, test_rows = np.arange(len(table)), np.zeros(0, dtype=int)
    embeddings = encoder.encode(table.texts)
    strategy = ContrastiveStrategy(encoder=encoder, seed=seed, **schedule)
    started = time.perf_counter()
    with _StepBar(strategy.schedule, progress) as bar:
        strategy.fit(table.subset(train_rows), embeddings[train_rows], progress=bar.update)
    out = Path(out_dir)
    weights = strategy.save(out / WEIGHTS_FILE)
    log = strategy.train_log
    report = {"data": str(data_dir), "experts": strategy.experts, "encoder": encoder.name,
              "train": len(train_rows), "test": len(test_rows),
              "seconds": round(time.perf_counter() - started, 1),
              "schedule": strategy.schedule.to_dict(), "best_step": log.best_step,
              "best_holdout_top1": log.best_holdout,
              "curve": [{"step": s, "loss": loss, "holdout_top1": top1}
                        for s, loss, top1 in log.curve],
              "weights": str(weights)}
    if len(test_rows):
        test = table.subset(test_rows)
        row = strategy_row(strategy.score(test.texts, embeddings[test_rows]), test)
        report.update(test_top1=row["top1"], test_top1_macro=row["top1_macro"])
    (out / "train.json").write_text(json.dumps(report, indent=1))
    report["plot"] = str(loss_curve(report["curve"], out / "loss_curve.png"))
    return report


class _StepBar:
    """A tqdm bar over training steps, advanced at each held-out evaluation."""

    def __init__(self, schedule, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=schedule.max_steps, desc="training", unit="step",
                        disable=not enabled)
        self.done = 0

    def update(self, step: int, loss: float, holdout: float) -> None:
        self.bar.update(step - self.done)
        self.done = step
        self.bar.set_postfix(loss=f"{loss:.3f}", holdout_top1=f"{holdout:.4f}")

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()
