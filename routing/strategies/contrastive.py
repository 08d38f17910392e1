"""Contrastive: a learned router in the style of RouterDC (Chen et al., NeurIPS 2024), a
trained head over the frozen sentence embeddings plus one learned vector per expert
(:mod:`routing.strategies.contrastive_model` has the model, the losses and the schedule);
with ``encoder_layers: N`` the encoder's top N layers are fine-tuned instead of a head
(:mod:`routing.strategies.contrastive_encoder`), and queries are embedded by that copy.

An expert's score is ``sigmoid(a · cos(h(x), e_j) / τ + b)``: a calibrated chance that it
answers the query well (``a, b`` learned with the rest), so ranking is by cosine.

- ``fit`` trains head and vectors on the outcome table (a fixed schedule, early-stopped on a
  held-out part of it), or, with ``weights``, loads a file made by ``conclave router train``
  (refused if it holds experts the table lacks; table experts it lacks are added).
- ``add_expert`` fits only the new expert's vector, everything else frozen, so no other
  expert's score changes: by cross-entropy on its outcomes where it has right *and* wrong
  answers, else (example questions only: all right) as the mean of their ``h(x)``.
- ``remove_expert`` drops its vector.
- ``save`` / ``load``: safetensors, with the experts and the encoder in its metadata; a file
  for other experts or another encoder is refused, naming the difference.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from routing.errors import RoutingError
from routing.outcomes import OutcomeTable
from routing.strategies.base import RoutingStrategy, Scores, check_fit_inputs, check_queries

MIN_TRAIN_QUESTIONS = 20  # questions to train the head on
MIN_EXPERT_QUESTIONS = 20  # outcomes to fit one added expert's vector
MIN_EXAMPLES = 3  # example questions for an example-only expert


class ContrastiveStrategy(RoutingStrategy):
    """RouterDC-style dual-contrastive router over frozen embeddings."""

    name = "contrastive"
    needs = ("encoder",)
    trains = True  # fit() trains for minutes unless given weights (routing.trained_router)

    def __init__(self, encoder=None, weights: str | None = None, explain: int = 3, **schedule):
        from routing.strategies.contrastive_model import TrainSchedule

        try:
            self.schedule = TrainSchedule(**schedule)
        except TypeError as err:
            raise RoutingError(f"contrastive: bad options: {err}") from None
        self.encoder = encoder  # the fine-tuned mode builds on it (never changes it)
        self.encoder_name = str(getattr(encoder, "name", "") or "all-MiniLM-L6-v2")
        self.weights, self.explain = weights, explain
        self.train_log = None  # the TrainLog of the last fit that trained
        self._model = None
        self._experts: list[str] = []
        self._vectors = None  # torch (experts, dim), unit rows

    def fit(self, outcomes: OutcomeTable, embeddings: np.ndarray, progress=None) -> None:
        check_fit_inputs(outcomes, embeddings)
        if self.weights:
            self._fit_from_file(outcomes, embeddings)
            return
        if len(outcomes) < MIN_TRAIN_QUESTIONS or len(outcomes.experts) < 2:
            raise RoutingError(
                f"contrastive: training needs at least {MIN_TRAIN_QUESTIONS} questions and 2 "
                f"experts; got {len(outcomes)} questions, {len(outcomes.experts)} expert(s)")
        if self.schedule.encoder_layers:
            from routing.strategies.contrastive_encoder import train_encoder

            self._model, self.train_log = train_encoder(self.encoder, outcomes.texts,
                                                        outcomes.scores, self.schedule, progress)
        else:
            from routing.strategies.contrastive_model import train_head

            self._model, self.train_log = train_head(embeddings, outcomes.scores,
                                                     self.schedule, progress)
        self._experts = list(outcomes.experts)
        self._vectors = self._model.experts.detach().clone()

    def _fit_from_file(self, outcomes: OutcomeTable, embeddings: np.ndarray) -> None:
        # Every expert of the file must be in the table; the table's experts the file does
        # not know are added from their own columns (no retraining).
        self.load(self.weights)
        unknown = sorted(set(self._experts) - set(outcomes.experts))
        if unknown:
            raise RoutingError(f"{self.weights}: trained for other experts: {unknown} are not "
                               f"in this pool; retrain (conclave router train)")
        for name in outcomes.experts:
            if name not in self._experts:
                self.add_expert(name, outcomes.with_experts([name]), embeddings)

    def score(self, texts: list[str], embeddings: np.ndarray) -> Scores:
        check_queries(texts, embeddings, self._model is not None and bool(self._experts),
                      "contrastive")
        values = self.probabilities(self._embed(texts, embeddings))
        order = np.argsort(-values, axis=1)[:, : self.explain]
        explanations = [{"top": [{"expert": self._experts[j], "p": float(row[j])}
                                 for j in top]} for row, top in zip(values, order, strict=True)]
        return Scores(experts=self.experts, values=values, explanations=explanations)

    def _embed(self, texts: list[str], embeddings: np.ndarray):
        """The queries' ``h``, by the model (the head reads the shared embeddings, the
        fine-tuned encoder the texts)."""
        return self._model.embed_queries(texts, np.asarray(embeddings, dtype=np.float32))

    def probabilities(self, h) -> np.ndarray:
        """sigmoid(a·s + b) per (query, expert) of the queries' ``h``, float32."""
        import torch

        with torch.no_grad():
            # Column by column (no matmul), so one expert's score never depends on which
            # other experts there are: adding one leaves the others' scores bit-identical.
            e = torch.nn.functional.normalize(self._vectors, dim=-1)
            s = (h[:, None, :] * e[None, :, :]).sum(-1) / self._model.temperature
            return torch.sigmoid(self._model.scale * s + self._model.shift).numpy()

    def add_expert(self, expert: str, outcomes: OutcomeTable, embeddings: np.ndarray) -> None:
        check_fit_inputs(outcomes, embeddings, one_expert=expert)
        if self._model is None:
            raise RoutingError("contrastive: add_expert needs a trained router; call fit() "
                               "(or load weights from `conclave router train`) first")
        import torch

        from routing.strategies.contrastive_model import fit_expert_vector

        column = outcomes.with_experts([expert]).scores[:, 0]
        known = ~np.isnan(column)
        count, y = int(known.sum()), torch.from_numpy(column[known].astype(np.float32))
        graded = bool(count) and bool((y < 1).any())  # else example questions (all right)
        if graded and count < MIN_EXPERT_QUESTIONS:
            raise RoutingError(f"contrastive: expert {expert!r} has outcomes on {count} "
                               f"questions; its embedding needs at least {MIN_EXPERT_QUESTIONS}")
        if not graded and count < MIN_EXAMPLES:
            raise RoutingError(f"contrastive: expert {expert!r} has {count} example "
                               f"question(s); its embedding needs at least {MIN_EXAMPLES}")
        h = self._embed([t for t, k in zip(outcomes.texts, known, strict=True) if k],
                        np.asarray(embeddings, dtype=np.float32)[known])
        if graded:
            vector = fit_expert_vector(self._model, h, y)
        else:  # example questions only: their mean direction
            vector = torch.nn.functional.normalize(h.mean(0), dim=0)
        self._set_vector(expert, vector)

    def remove_expert(self, expert: str) -> None:
        if expert not in self._experts:
            raise RoutingError(f"contrastive: unknown expert {expert!r}; known: {self._experts}")
        column = self._experts.index(expert)
        del self._experts[column]
        keep = [j for j in range(len(self._vectors)) if j != column]
        self._vectors = self._vectors[keep]

    def _set_vector(self, expert: str, vector) -> None:
        import torch

        vector = torch.nn.functional.normalize(vector.detach().reshape(1, -1), dim=1)
        if expert in self._experts:
            self._vectors[self._experts.index(expert)] = vector[0]
            return
        self._experts.append(expert)
        self._vectors = torch.cat([self._vectors, vector])

    def save(self, path: str | Path) -> Path:
        """Write the trained router (safetensors) to ``path``."""
        from safetensors.torch import save_file

        if self._model is None:
            raise RoutingError("contrastive: nothing to save; fit() first")
        tensors = {f"head.{k}": v.contiguous() for k, v in self._model.state_dict().items()
                   if k != "experts"}
        tensors["experts"] = self._vectors.contiguous()
        meta = {"experts": json.dumps(self._experts), "encoder": self.encoder_name,
                "in_dim": str(getattr(self._model, "in_dim", 0)),
                "schedule": json.dumps(self.schedule.to_dict()), "format": "conclave-router-1"}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path), metadata=meta)
        return path

    def load(self, path: str | Path, experts: list[str] | None = None) -> None:
        """Read a file written by :meth:`save`; refuse one made for another encoder or, when
        ``experts`` is given, for another set of experts."""
        from routing.strategies.contrastive_model import TrainSchedule

        tensors, meta = _read(path)
        if meta.get("encoder") != self.encoder_name:
            raise RoutingError(f"{path}: trained on encoder {meta.get('encoder')!r}, but this "
                               f"router embeds with {self.encoder_name!r}; retrain it")
        names = json.loads(meta["experts"])
        if experts is not None and set(names) != set(experts):
            missing, extra = sorted(set(experts) - set(names)), sorted(set(names) - set(experts))
            raise RoutingError(f"{path}: trained for other experts: missing {missing}, "
                               f"unknown here {extra}; retrain (conclave router train)")
        schedule = TrainSchedule(**json.loads(meta["schedule"]))
        model = self._new_model(int(meta["in_dim"]), len(names), schedule)
        state = {k.removeprefix("head."): v for k, v in tensors.items() if k.startswith("head.")}
        model.load_state_dict({**state, "experts": tensors["experts"]})
        model.eval()
        self.schedule, self._model, self._experts = schedule, model, names
        self._vectors = tensors["experts"].clone()

    def _new_model(self, in_dim: int, experts: int, schedule):
        if schedule.encoder_layers:
            from routing.strategies.contrastive_encoder import EncoderRouter

            if self.encoder is None:
                raise RoutingError("contrastive: a fine-tuned-encoder router needs its encoder")
            return EncoderRouter(self.encoder, experts, schedule)
        from routing.strategies.contrastive_model import RouterHead

        return RouterHead(in_dim, experts, schedule)


def _read(path: str | Path) -> tuple[dict, dict]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file, safe_open

    path = Path(path)
    if path.is_dir():
        path = path / "router.safetensors"
    if not path.exists():
        raise RoutingError(f"{path}: no trained router file (make one: conclave router train)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = dict(handle.metadata() or {})
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise RoutingError(f"{path}: not a safetensors file: {err}") from None
    if meta.get("format") != "conclave-router-1" or "experts" not in tensors:
        raise RoutingError(f"{path}: not a trained router (conclave router train makes them)")
    return tensors, meta
