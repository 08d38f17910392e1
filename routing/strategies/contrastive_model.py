"""The RouterDC model and its training (Chen et al., NeurIPS 2024, "Query-Based Router by
Dual Contrastive Learning"), over frozen sentence embeddings.

Model: a residual MLP head ``h(x) = normalise(x + MLP(x))`` over the encoder's (cached)
embedding ``x``, and one learned vector ``e_j`` per expert. Score: ``s_j = cos(h(x), e_j) / τ``.

Losses, summed (``TrainSchedule`` holds the weights):

- sample-LLM (the paper's eq. 3): each query is pulled towards each of its ``top_k`` best
  experts and away from its ``bottom_k`` worst ones,
  ``−Σ_{k∈top} log(e^{s_k} / (e^{s_k} + Σ_{j∈bottom} e^{s_j}))``. Ties between equally
  scored experts (common with 0/1 outcomes) are broken at random at every step; with
  fractional outcomes the ranking uses the fractions.
- sample-sample (eq. 4): the queries are grouped by k-means on their embeddings; a query is
  pulled towards another query of its cluster and away from ``bottom_k`` of other clusters
  (InfoNCE on ``h``), which keeps the head from collapsing.
- calibration (ours): ``sigmoid(a·s_j + b)`` fitted to the outcome by cross-entropy, with
  ``a, b`` learned. It makes a score a probability of a right answer, so an expert added
  later (only its own outcomes, nobody else's) can be fitted on the same scale, and k=auto's
  mass means something.

Training: Adam, batches of ``batch_size`` queries, evaluated every ``eval_every`` steps on a
held-out part of the training table (top-1 score of the routed expert); stops after
``patience`` evaluations without a gain (or at once when the held-out part is routed as
well as its oracle) and restores the best weights.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn


@dataclass(frozen=True)
class TrainSchedule:
    """RouterDC's hyper-parameters and our fixed schedule (found once on the MMLU-Pro open
    pool's train split, by its own held-out part; see README "Learned router")."""

    dim: int = 384  # width of h(x) and of each expert vector
    hidden: int = 512  # MLP hidden width
    temperature: float = 0.1  # τ of the score
    top_k: int = 3  # positives per query (sample-LLM loss)
    bottom_k: int = 3  # negatives per query (both losses)
    clusters: int = 14  # k-means clusters of the sample-sample loss
    sample_weight: float = 1.0  # λ of the sample-sample loss
    calibration_weight: float = 1.0  # weight of the calibration loss
    lr: float = 1e-3
    weight_decay: float = 1e-4
    dropout: float = 0.1
    batch_size: int = 256
    max_steps: int = 3000
    eval_every: int = 100
    patience: int = 5
    holdout: float = 0.1  # part of the training table held out for early stopping
    seed: int = 0
    # 0: the head above over frozen embeddings. N > 0: no head; the encoder's top N layers
    # are fine-tuned instead (routing.strategies.contrastive_encoder), at encoder_lr, in
    # batches of encoder_batch_size questions cut to max_tokens tokens.
    encoder_layers: int = 0
    encoder_lr: float = 1e-5
    encoder_batch_size: int = 64
    max_tokens: int = 128

    def to_dict(self) -> dict:
        return asdict(self)


class ExpertScorer(nn.Module):
    """One learned vector per expert, the score ``s = cos(h, e_j) / τ`` and the calibration
    ``a, b``; subclasses say how a query becomes ``h`` (``embed``)."""

    def __init__(self, dim: int, experts: int, schedule: TrainSchedule):
        super().__init__()
        self.temperature = schedule.temperature
        self.experts = nn.Parameter(torch.randn(experts, dim) * 0.01)
        self.scale = nn.Parameter(torch.tensor(1.0))  # a of the calibration
        self.shift = nn.Parameter(torch.tensor(-1.0))  # b of the calibration

    def score(self, h: torch.Tensor, experts: torch.Tensor | None = None) -> torch.Tensor:
        e = nn.functional.normalize(self.experts if experts is None else experts, dim=-1)
        return h @ e.T / self.temperature

    def param_groups(self, schedule: TrainSchedule) -> list[dict]:
        return [{"params": list(self.parameters()), "lr": schedule.lr}]


class RouterHead(ExpertScorer):
    """``h(x) = normalise(x + MLP(x))`` over the frozen embedding ``x``."""

    def __init__(self, in_dim: int, experts: int, schedule: TrainSchedule):
        super().__init__(schedule.dim, experts, schedule)
        self.in_dim = in_dim
        self.mlp = nn.Sequential(nn.Linear(in_dim, schedule.hidden), nn.GELU(),
                                 nn.Dropout(schedule.dropout),
                                 nn.Linear(schedule.hidden, schedule.dim))
        self.skip = nn.Identity() if in_dim == schedule.dim else nn.Linear(in_dim, schedule.dim)
        nn.init.zeros_(self.mlp[-1].weight)  # starts as the identity: h(x) = x
        nn.init.zeros_(self.mlp[-1].bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.normalize(self.skip(x) + self.mlp(x), dim=-1)

    def embed_queries(self, texts, embeddings: np.ndarray) -> torch.Tensor:
        """``h`` of queries from their shared embeddings (the texts are not needed)."""
        with torch.no_grad():
            return self.embed(torch.from_numpy(embeddings))


def sample_llm_loss(s: torch.Tensor, y: torch.Tensor, known: torch.Tensor, top_k: int,
                    bottom_k: int, generator: torch.Generator) -> torch.Tensor:
    """RouterDC's sample-LLM contrastive loss; ``known`` masks missing outcomes."""
    noise = torch.rand(y.shape, generator=generator) * 1e-3  # random tie-breaking
    ranking = torch.where(known, y + noise, torch.full_like(y, -1.0))
    top = ranking.topk(min(top_k, y.shape[1]), dim=1).indices
    low = torch.where(known, y + noise, torch.full_like(y, 2.0))
    bottom = (-low).topk(min(bottom_k, y.shape[1]), dim=1).indices
    s_top, s_bottom = s.gather(1, top), s.gather(1, bottom)
    negatives = torch.logsumexp(s_bottom, dim=1, keepdim=True)
    # Only pairs where the positive really beats the negatives teach anything.
    useful = (y.gather(1, top) > y.gather(1, bottom).max(dim=1, keepdim=True).values).float()
    loss = -(s_top - torch.logaddexp(s_top, negatives)) * useful
    return loss.sum() / useful.sum().clamp(min=1.0)


def sample_sample_loss(h: torch.Tensor, clusters: torch.Tensor, bottom_k: int,
                       temperature: float, generator: torch.Generator) -> torch.Tensor:
    """RouterDC's sample-sample loss: one in-batch positive of the same cluster against
    ``bottom_k`` in-batch negatives of other clusters."""
    same = clusters[:, None] == clusters[None, :]
    eye = torch.eye(len(h), dtype=torch.bool)
    noise = torch.rand(same.shape, generator=generator)
    pos_mask, neg_mask = same & ~eye, ~same
    has = pos_mask.any(dim=1) & (neg_mask.sum(dim=1) >= 1)
    if not has.any():
        return h.sum() * 0.0
    pos = torch.where(pos_mask, noise, -1.0).argmax(dim=1)
    neg = torch.where(neg_mask, noise, -1.0).topk(min(bottom_k, len(h) - 1), dim=1).indices
    sim = h @ h.T / temperature
    s_pos = sim.gather(1, pos[:, None])
    s_neg = sim.gather(1, neg).masked_fill(~neg_mask.gather(1, neg), -1e9)
    loss = -(s_pos[:, 0] - torch.logsumexp(torch.cat([s_pos, s_neg], dim=1), dim=1))
    return loss[has].mean()


def calibration_loss(model: RouterHead, s: torch.Tensor, y: torch.Tensor,
                     known: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of ``sigmoid(a·s + b)`` against the (possibly fractional) outcomes."""
    logits = model.scale * s + model.shift
    loss = nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="none")
    return (loss * known).sum() / known.sum().clamp(min=1.0)


def kmeans_labels(x: np.ndarray, count: int, seed: int) -> np.ndarray:
    """Cluster label per row (faiss k-means; ``count`` capped by the rows)."""
    import faiss

    count = max(1, min(count, len(x) // 2))
    km = faiss.Kmeans(x.shape[1], count, niter=20, seed=seed, verbose=False,
                      min_points_per_centroid=1)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return km.index.search(np.ascontiguousarray(x, dtype=np.float32), 1)[1][:, 0]


@dataclass
class TrainLog:
    """What a training run did: per evaluation (step, train loss, held-out top-1)."""

    curve: list[tuple[int, float, float]]
    best_step: int
    best_holdout: float
    seconds: float


def train_head(x: np.ndarray, y: np.ndarray, schedule: TrainSchedule,
               progress: Callable[[int, float, float], None] | None = None
               ) -> tuple[RouterHead, TrainLog]:
    """A :class:`RouterHead` trained on embeddings ``x`` (n, d) and outcomes ``y`` (n, m;
    NaN = no result) with the schedule's losses, early-stopped on its held-out part."""
    torch.manual_seed(schedule.seed)
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    model = RouterHead(x.shape[1], y.shape[1], schedule)
    log = train_model(model, lambda rows: xt[torch.from_numpy(rows)], y, schedule,
                      schedule.batch_size, progress)
    return model, log


def train_model(model: ExpertScorer, take: Callable[[np.ndarray], object], y: np.ndarray,
                schedule: TrainSchedule, batch_size: int,
                progress: Callable[[int, float, float], None] | None = None) -> TrainLog:
    """Train ``model`` in place on outcomes ``y`` (n, m; NaN = no result); ``take(rows)``
    gives its ``embed`` input for those rows. Holds out part of the rows for early stopping
    and ends with the best weights."""
    started = time.perf_counter()
    rng = np.random.default_rng(schedule.seed)
    order = rng.permutation(len(y))
    cut = max(1, int(round(len(y) * schedule.holdout)))
    held, fit = order[:cut], order[cut:]
    yt = torch.from_numpy(np.nan_to_num(y, nan=0.0).astype(np.float32))
    kt = torch.from_numpy(~np.isnan(y))
    with torch.no_grad():
        model.eval()
        h = model.embed(take(fit))
    labels = torch.from_numpy(kmeans_labels(h.numpy(), schedule.clusters, schedule.seed))
    init_experts(model, h, yt[fit], kt[fit])

    def batches():
        while True:
            pick = rng.choice(len(fit), size=min(batch_size, len(fit)), replace=False)
            rows = fit[pick]
            yield take(rows), yt[rows], kt[rows], labels[torch.from_numpy(pick)]

    curve, best = _fit_loop(model, batches(), (take(held), yt[held]), schedule, progress)
    model.load_state_dict(best[2])
    model.eval()
    return TrainLog(curve, best[1], best[0], time.perf_counter() - started)


def _fit_loop(model, batches, held, schedule, progress):
    """Adam steps over ``batches`` with held-out evaluation and early stopping; (the curve,
    (best held-out top-1, its step, its weights))."""
    optimiser = torch.optim.AdamW(model.param_groups(schedule),
                                  weight_decay=schedule.weight_decay)
    generator = torch.Generator().manual_seed(schedule.seed)
    best = (-1.0, 0, _state(model))
    ceiling = float(held[1].max(dim=1).values.mean())  # the held-out oracle
    curve, losses, stale = [], [], 0
    for step in range(1, schedule.max_steps + 1):
        model.train()
        loss = _step_loss(model, *next(batches), schedule, generator)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        if step % schedule.eval_every and step != schedule.max_steps:
            continue
        score = holdout_top1(model, *held)
        curve.append((step, float(np.mean(losses)), score))
        losses = []
        if progress is not None:
            progress(step, curve[-1][1], score)
        if score > best[0] + 1e-6:
            best, stale = (score, step, _state(model)), 0
        elif (stale := stale + 1) >= schedule.patience:
            break
        if score >= ceiling - 1e-6:  # the held-out part is routed perfectly: done
            break
    return curve, best


def _step_loss(model, x, y, known, labels, schedule, generator) -> torch.Tensor:
    h = model.embed(x)
    s = model.score(h)
    loss = sample_llm_loss(s, y, known, schedule.top_k, schedule.bottom_k, generator)
    if schedule.sample_weight:
        loss = loss + schedule.sample_weight * sample_sample_loss(
            h, labels, schedule.bottom_k, schedule.temperature, generator)
    if schedule.calibration_weight:
        loss = loss + schedule.calibration_weight * calibration_loss(model, s, y, known)
    return loss


def init_experts(model: ExpertScorer, h: torch.Tensor, y: torch.Tensor,
                 known: torch.Tensor) -> None:
    """Start each expert vector at the mean ``h`` of its right answers minus the mean of
    its wrong ones (a useful direction before the first step)."""
    with torch.no_grad():
        right = (y * known).T @ h / (y * known).sum(0).clamp(min=1e-6)[:, None]
        wrong = ((1 - y) * known).T @ h / ((1 - y) * known).sum(0).clamp(min=1e-6)[:, None]
        model.experts.copy_(nn.functional.normalize(right - wrong + 1e-6, dim=-1))


def holdout_top1(model: ExpertScorer, x, y: torch.Tensor) -> float:
    """Mean outcome of the top-scored expert on held-out rows (NaN-free ``y``)."""
    model.eval()
    with torch.no_grad():
        best = model.score(model.embed(x)).argmax(dim=1)
    return float(y[torch.arange(len(y)), best].mean())


def _state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fit_expert_vector(model: ExpertScorer, h: torch.Tensor, y: torch.Tensor,
                      steps: int = 300) -> torch.Tensor:
    """One new expert's vector: the model, the calibration and every other vector frozen,
    fitted by the calibration loss on its own outcomes ``y`` (fractions allowed) at the
    queries' ``h``."""
    with torch.no_grad():
        init = (h * y[:, None]).mean(0) - (h * (1 - y)[:, None]).mean(0)
    vector = nn.Parameter(nn.functional.normalize(init + 1e-6, dim=0).clone())
    optimiser = torch.optim.Adam([vector], lr=0.05)
    scale, shift = model.scale.detach(), model.shift.detach()
    for _ in range(steps):
        logits = scale * model.score(h, vector[None, :])[:, 0] + shift
        loss = nn.functional.binary_cross_entropy_with_logits(logits, y)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return vector.detach()
