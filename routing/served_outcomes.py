"""The outcome table a served router is fitted on, from the config's ``routing.outcomes``
folder and ``routing.outcomes_subset``:

- ``split: train`` keeps the train part of ``conclave eval``'s split (the questions every
  model answered; the data's own split, else the seeded 80/20 one stratified by domain),
  so the test part is held out and the served router decides as the offline evaluator's;
- a replay expert's column is its ``replay.model`` (expert ids are slugs, model names
  need not be): that column is renamed to the expert's id;
- ``experts_only: true`` drops the columns no expert claims (models of the data that are
  not in this panel) instead of refusing them.
"""

from __future__ import annotations

import dataclasses

from experts.spec import ExpertSpec
from routing.eval.split import make_split
from routing.outcomes import OutcomeTable, load_outcomes


def served_outcomes(data_dir: str, specs: list[ExpertSpec], split: str = "all", seed: int = 0,
                    experts_only: bool = False) -> OutcomeTable:
    """The table of ``data_dir`` as the router should see it (see the module doc)."""
    table = load_outcomes(data_dir)
    if split == "train":
        table = table.subset(table.complete_rows())
        train_rows, _ = make_split(data_dir, table, seed=seed)
        table = table.subset(train_rows)
    table = claim_columns(table, specs)
    if experts_only:
        ids = {spec.id for spec in specs}
        table = table.with_experts([name for name in table.experts if name in ids])
    return table


def claim_columns(table: OutcomeTable, specs: list[ExpertSpec]) -> OutcomeTable:
    """``table`` with each replay expert's ``replay.model`` column named by its id."""
    names = {spec.replay.model: spec.id for spec in specs
             if spec.replay is not None and spec.replay.model in table.experts}
    if not names:
        return table
    return dataclasses.replace(
        table, experts=[names.get(name, name) for name in table.experts],
        cost={names.get(name, name): cost for name, cost in table.cost.items()})
