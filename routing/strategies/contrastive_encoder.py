"""RouterDC with the sentence encoder itself fine-tuned: its top ``encoder_layers``
transformer layers are trained with the router's losses (as the paper fine-tunes its whole
encoder), the layers below and the token embeddings stay frozen and shared.

``h(x)`` is the mean-pooled, normalised output of the fine-tuned top layers (no head over
it). Training runs the frozen lower layers once per question and keeps their output
(:meth:`EncoderRouter.lower`), so a step costs only the top layers' forward and backward:
about 1 s for 64 questions and 2 layers on 2 CPU cores.

The encoder must be BERT-shaped (``embeddings`` and ``encoder.layer``: MiniLM, BERT,
RoBERTa); the top layers are copied, so the shared encoder every other strategy embeds
with is never changed.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from routing.errors import RoutingError
from routing.strategies.contrastive_model import ExpertScorer, TrainSchedule

SUB_BATCH = 16  # questions per padded forward, grouped by length (little padding)


class EncoderRouter(ExpertScorer):
    """The encoder's top layers (trainable copies) over its frozen lower part."""

    def __init__(self, encoder, experts: int, schedule: TrainSchedule):
        bert = _bert_of(encoder)
        layers = bert.encoder.layer
        if not 0 < schedule.encoder_layers <= len(layers):
            raise RoutingError(f"contrastive: encoder_layers must be 1..{len(layers)} for "
                               f"{encoder.name!r}; got {schedule.encoder_layers}")
        super().__init__(bert.config.hidden_size, experts, schedule)
        # Kept out of the module tree: the shared encoder is neither trained nor saved here.
        self._frozen = (bert, encoder.model.tokenizer)
        self._cut = len(layers) - schedule.encoder_layers
        self.max_tokens = schedule.max_tokens
        self.top = copy.deepcopy(nn.ModuleList(layers[self._cut:]))
        self.top.requires_grad_(True)

    def lower(self, texts: Sequence[str], batch: int = 64) -> list[torch.Tensor]:
        """The frozen part's output per text, (tokens, hidden) each, truncated to
        ``max_tokens``; texts are run in batches of similar length."""
        bert, tokenizer = self._frozen
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out: list[torch.Tensor | None] = [None] * len(texts)
        with torch.no_grad():
            for start in range(0, len(order), batch):
                rows = order[start:start + batch]
                tokens = tokenizer([texts[i] for i in rows], padding=True,
                                   truncation=True, max_length=self.max_tokens,
                                   return_tensors="pt")
                mask = tokens["attention_mask"]
                h = bert.embeddings(input_ids=tokens["input_ids"],
                                    token_type_ids=tokens.get("token_type_ids"))
                h = _run(bert.encoder.layer[:self._cut], h, mask)
                for r, i in enumerate(rows):
                    out[i] = h[r, : int(mask[r].sum())].clone()
        return out

    def embed(self, states: Sequence[torch.Tensor]) -> torch.Tensor:
        """``h`` per question from its :meth:`lower` output: the top layers, mean-pooled,
        normalised. Questions go through in length-sorted groups of :data:`SUB_BATCH`."""
        order = sorted(range(len(states)), key=lambda i: states[i].shape[0])
        rows: list[torch.Tensor | None] = [None] * len(states)
        for start in range(0, len(order), SUB_BATCH):
            group = order[start:start + SUB_BATCH]
            for i, h in zip(group, self._pooled([states[i] for i in group]), strict=True):
                rows[i] = h
        return nn.functional.normalize(torch.stack(rows), dim=-1)

    def embed_texts(self, texts: Sequence[str]) -> torch.Tensor:
        with torch.no_grad():
            return self.embed(self.lower(texts))

    def embed_queries(self, texts: Sequence[str], embeddings=None) -> torch.Tensor:
        """``h`` of queries from their texts (the shared embeddings are not used)."""
        return self.embed_texts(texts)

    def _pooled(self, states: list[torch.Tensor]) -> torch.Tensor:
        width = max(s.shape[0] for s in states)
        h = states[0].new_zeros(len(states), width, states[0].shape[1])
        mask = torch.zeros(len(states), width, dtype=torch.long)
        for r, s in enumerate(states):
            h[r, : s.shape[0]], mask[r, : s.shape[0]] = s, 1
        h = _run(self.top, h, mask)
        return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)

    def param_groups(self, schedule: TrainSchedule) -> list[dict]:
        tuned = {id(p) for p in self.top.parameters()}
        rest = [p for p in self.parameters() if id(p) not in tuned]
        return [{"params": list(self.top.parameters()), "lr": schedule.encoder_lr},
                {"params": rest, "lr": schedule.lr}]


def _run(layers, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``h`` through BERT layers with padding masked (the additive mask BERT layers take)."""
    additive = (1.0 - mask[:, None, None, :].to(h.dtype)) * torch.finfo(h.dtype).min
    for layer in layers:
        out = layer(h, attention_mask=additive)
        h = out[0] if isinstance(out, tuple) else out
    return h


def _bert_of(encoder):
    """The transformers model inside a sentence-transformers encoder, if BERT-shaped."""
    model = getattr(encoder, "model", None)
    try:
        bert = model[0].auto_model
        bert.embeddings, bert.encoder.layer  # noqa: B018 (the shape this module needs)
    except (AttributeError, TypeError, IndexError):
        name = getattr(encoder, "name", type(encoder).__name__)
        raise RoutingError(f"contrastive: encoder_layers needs a BERT-style "
                           f"sentence-transformers encoder; {name!r} is not one") from None
    return bert


def train_encoder(encoder, texts: Sequence[str], y, schedule: TrainSchedule,
                  progress=None) -> tuple[EncoderRouter, object]:
    """An :class:`EncoderRouter` trained on ``texts`` and outcomes ``y`` (n, m; NaN = no
    result) with the schedule's losses; the frozen part runs once per text."""
    from routing.strategies.contrastive_model import train_model

    torch.manual_seed(schedule.seed)
    model = EncoderRouter(encoder, y.shape[1], schedule)
    states = model.lower(list(texts))
    log = train_model(model, lambda rows: [states[i] for i in rows], y, schedule,
                      schedule.encoder_batch_size, progress)
    return model, log
