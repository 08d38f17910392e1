"""MixtureEngine: N LoRA experts on one base, answering as one model that picks experts per token.

Each adapted module of the base becomes a :class:`experts.mixture.MixtureLoraLinear`; the
experts' PHATGOOSE gates (:mod:`experts.gates`) are the local routing keys, and each row's
instruction embedding ``q`` against the experts' ``g_i`` adds GLIDER's global term
``α·cos(q, g_i)``. Tokenisation, chat templates, padding, stop strings and seeds are
:class:`experts.hf_engine.HFEngine`'s: this engine wraps one and swaps modules in its model.

Experts come and go with :meth:`MixtureEngine.add_expert` / :meth:`remove_expert`; each brings
its own trained gates, so the others need no retraining.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from experts.engine import Generation, GenerationEngine, GenerationParams, Prompt, TextSink
from experts.errors import ExpertError, ExpertExistsError, UnknownExpertError
from experts.mixture import RoutingState, install_mixture_layers

DEFAULT_ALPHA = 3.0
DEFAULT_TOP_K = 2


@dataclass
class MixtureMember:
    """One LoRA expert of a mixture.

    ``gates``: a ``{module: v}`` dict, a ``gates.safetensors`` path, or None for the file next
    to the adapter. ``embedding``: the expert's instruction embedding ``g_i`` (needed only
    when rows bring a ``q``).
    """

    name: str
    adapter_path: str | Path
    gates: dict | str | Path | None = None
    embedding: object = None


@dataclass
class _Loaded:
    lora: object  # LoraWeights
    gates: dict
    embedding: object  # torch.Tensor [dim] or None


class MixtureEngine(GenerationEngine):
    """A base model plus a token-level mixture of LoRA experts (GLIDER local + global)."""

    def __init__(
        self,
        base_path: str | Path,
        experts: Sequence[MixtureMember | tuple],
        *,
        alpha: float = DEFAULT_ALPHA,
        top_k: int = DEFAULT_TOP_K,
        dtype: str | None = None,
        device: str | None = None,
        trust_remote_code: bool = False,
    ):
        from experts.hf_engine import HFEngine

        if not alpha >= 0 or alpha == float("inf"):
            raise ExpertError(f"alpha must be a finite number >= 0, got {alpha}")
        if top_k < 1:
            raise ExpertError(f"top_k must be >= 1, got {top_k}")
        members = [m if isinstance(m, MixtureMember) else MixtureMember(*m) for m in experts]
        _check_top_k(top_k, len(members))
        self.alpha, self.top_k, self.base_path = float(alpha), top_k, str(base_path)
        self._engine = HFEngine(
            self.base_path, dtype=dtype, device=device, trust_remote_code=trust_remote_code
        )
        self._state = RoutingState()
        self._members: dict[str, _Loaded] = {}
        self._layers: dict = {}
        self._steps: list | None = None  # per forward call while generating with a trace
        self._lock = threading.RLock()
        self._engine.model.register_forward_hook(self._after_forward)
        for member in members:
            self._load(member)
        self._install()

    # -- experts --------------------------------------------------------------------------

    @property
    def expert_names(self) -> list[str]:
        """The experts, in routing index order."""
        return list(self._members)

    def add_expert(self, name, adapter_path, gates=None, embedding=None) -> None:
        """Add a LoRA expert with its trained gates; the others are untouched."""
        with self._lock:
            self._load(MixtureMember(name, adapter_path, gates, embedding))
            self._install()

    def remove_expert(self, name: str) -> None:
        """Drop expert ``name``; at least ``top_k`` experts must remain."""
        with self._lock:
            if name not in self._members:
                raise UnknownExpertError(name, list(self._members))
            _check_top_k(self.top_k, len(self._members) - 1)
            del self._members[name]
            self._install()

    def _load(self, member: MixtureMember) -> None:
        from experts.adapters import check_adapter_base
        from experts.gates import check_gates, load_gates
        from experts.lora_weights import linear_modules, load_lora

        if member.name in self._members:
            raise ExpertExistsError(f"mixture already has an expert named {member.name!r}")
        path = _adapter_dir(member.adapter_path)
        check_adapter_base(str(path), self.base_path)
        lora = load_lora(path)
        linear_modules(self._engine.model, lora)  # raises when shapes do not fit the base
        gates = member.gates
        if gates is None or isinstance(gates, str | Path):
            gates = load_gates(gates or path, lora)
        check_gates(gates, lora)
        self._members[member.name] = _Loaded(lora, gates, _vector(member.embedding, member.name))

    def _install(self) -> None:
        """(Re)stack every mixture layer's experts from ``self._members``."""
        names = sorted({module for m in self._members.values() for module in m.lora.modules})
        new = [name for name in names if name not in self._layers]
        self._layers.update(
            install_mixture_layers(self._engine.model, new, self._state, self.top_k)
        )
        self._state.n_experts = len(self._members)
        members = list(self._members.values())
        for name, layer in self._layers.items():
            index = [i for i, m in enumerate(members) if name in m.lora.modules]
            layer.set_experts(
                index,
                [members[i].lora.modules[name] for i in index],
                [members[i].gates[name] for i in index],
            )

    # -- routing --------------------------------------------------------------------------

    def global_bias(self, embeddings, rows: int):
        """``α·cos(q, g_i)`` as ``[rows, N]``, or None without embeddings or with α = 0."""
        import torch
        from torch.nn import functional as F

        if embeddings is None or self.alpha == 0:
            return None
        q = _matrix(embeddings)
        if q.shape[0] != rows:
            raise ExpertError(f"{q.shape[0]} embeddings for {rows} prompts")
        missing = [name for name, m in self._members.items() if m.embedding is None]
        if missing:
            raise ExpertError(f"experts without an instruction embedding: {', '.join(missing)}")
        g = torch.stack([m.embedding for m in self._members.values()])
        if g.shape[1] != q.shape[1]:
            raise ExpertError(f"embeddings have dim {q.shape[1]}, the experts' have {g.shape[1]}")
        cosine = F.normalize(q, dim=-1) @ F.normalize(g, dim=-1).T
        return (self.alpha * cosine).to(self._engine.device)

    def route(self, texts: Sequence[str], embeddings=None) -> list[list[dict]]:
        """Teacher-forced routing of ``texts`` (no chat template): per token, the experts'
        mean weight over layers (``weights``), how many layers picked each (``picked``), the
        heaviest (``top``) and the token's text (``token``)."""
        import torch

        tokenizer = self._engine.tokenizer
        batch = tokenizer(list(texts), return_tensors="pt", padding=True)
        batch = batch.to(self._engine.device)
        with self._lock, torch.inference_mode():
            self._begin(embeddings, len(texts), per_call=False)
            try:
                self._engine.model(**batch)
                weights, picks = self._state.weight_sum, self._state.pick_sum
                layers = self._state.layers
            finally:
                self._end()
        routes = []
        for row, mask in enumerate(batch["attention_mask"].bool()):
            ids = batch["input_ids"][row][mask].tolist()
            steps = zip(weights[row][mask] / layers, picks[row][mask], strict=True)
            entries = [self._trace_entry(w, p, layers) for w, p in steps]
            for entry, token in zip(entries, ids, strict=True):
                entry["token"] = tokenizer.decode([token])
            routes.append(entries)
        return routes

    def _begin(self, embeddings, rows: int, per_call: bool) -> None:
        # per_call: generating, so keep each forward call's last position (see below).
        self._state.bias = self.global_bias(embeddings, rows)
        self._state.recording = True
        self._state.clear()
        self._steps = [] if per_call else None

    def _end(self) -> None:
        self._state.bias, self._state.recording = None, False
        self._state.clear()
        self._steps = None

    def _after_forward(self, module, args, output) -> None:
        # While generating, one forward call per generated token: keep its last position's
        # routing (the position whose logits chose that token).
        state = self._state
        if self._steps is not None and state.layers:
            self._steps.append(
                (state.weight_sum[:, -1] / state.layers, state.pick_sum[:, -1], state.layers)
            )
            state.clear()

    def _trace_entry(self, weights, picks, layers: int) -> dict:
        names = list(self._members)
        return {
            "weights": {name: round(float(w), 4) for name, w in zip(names, weights, strict=True)},
            "picked": {name: int(p) for name, p in zip(names, picks, strict=True)},
            "layers": layers,
            "top": names[int(weights.argmax())],
        }

    # -- generation -----------------------------------------------------------------------

    def generate(
        self,
        prompts: Sequence[Prompt],
        params: GenerationParams | None = None,
        adapters: Sequence[str | None] | None = None,
        embeddings=None,
        trace: bool = False,
    ) -> list[Generation]:
        """Like every engine; ``embeddings`` is the per-row ``q`` ``[rows, dim]``; with
        ``trace``, each Generation's ``trace`` lists, per generated token, the routing
        (same fields as :meth:`route`, without ``token``)."""
        return self._run(prompts, params, adapters, embeddings, trace, None)

    def generate_streaming(
        self,
        prompts: Sequence[Prompt],
        params: GenerationParams | None = None,
        adapters: Sequence[str | None] | None = None,
        on_text: TextSink | None = None,
        embeddings=None,
    ) -> list[Generation]:
        """:meth:`generate` with each row's text going to ``on_text`` as it is generated
        (the wrapped HF engine streams; the mixing is the same)."""
        return self._run(prompts, params, adapters, embeddings, False, on_text)

    def _run(self, prompts, params, adapters, embeddings, trace: bool,
             on_text: TextSink | None) -> list[Generation]:
        if adapters is not None and any(name is not None for name in adapters):
            raise ExpertError("a mixture picks its own experts: per-row adapters must be None")
        if not prompts:
            return []
        with self._lock:
            self._begin(embeddings, len(prompts), per_call=trace)
            self._state.recording = trace
            try:
                outputs = self._engine.generate_streaming(prompts, params, on_text=on_text)
                steps = self._steps
            finally:
                self._end()
        if trace:
            for row, output in enumerate(outputs):
                used = steps[: output.completion_tokens]
                output.token_trace = [self._trace_entry(w[row], p[row], n) for w, p, n in used]
        return outputs

    def memory_bytes(self) -> int:
        """Bytes of the base weights plus the stacked expert matrices and keys."""
        return self._engine.memory_bytes()

    def close(self) -> None:
        """Release the model. Idempotent."""
        with self._lock:
            self._layers.clear()
            self._members.clear()
            self._engine.close()


def load_mixture(
    spec,
    lookup: Callable[[str], object],
    embed: Callable[[list[str]], object] | None = None,
    *,
    alpha: float | None = None,
    top_k: int | None = None,
    dtype: str | None = None,
    device: str | None = None,
) -> MixtureEngine:
    """A :class:`MixtureEngine` for the ``mixture`` expert ``spec``, mixing with the spec's
    ``mixture`` options (``alpha``/``top_k`` given here win; else α = 3, top-2).

    ``lookup(id)`` returns a registered ExpertSpec (e.g. ``ExpertRegistry.get``; unknown ids
    raise :class:`UnknownExpertError`). ``embed(texts)`` gives the members' instruction
    embeddings ``g_i`` (``[n, dim]``); the experts layer does not embed text itself, so
    without it rows cannot bring a global ``q`` and routing is purely local.
    """
    base, members = _resolve_specs(spec, lookup)
    options = getattr(spec, "mixture", None)
    if alpha is None:
        alpha = options.alpha if options is not None else DEFAULT_ALPHA
    if top_k is None:
        top_k = options.top_k if options is not None else DEFAULT_TOP_K
    vectors = embed([m.task_instruction for m in members]) if embed else [None] * len(members)
    experts = [
        MixtureMember(m.id, m.adapter, None, vector)
        for m, vector in zip(members, vectors, strict=True)
    ]
    return MixtureEngine(
        base.model,
        experts,
        alpha=alpha,
        top_k=top_k,
        dtype=dtype,
        device=device,
        trust_remote_code=base.trust_remote_code,
    )


def _resolve_specs(spec, lookup: Callable[[str], object]) -> tuple:
    """The mixture's base spec and member specs, checked: a model base, lora members on it."""
    from experts.errors import IncompatibleAdapterError

    if spec.kind != "mixture":
        raise ExpertError(f"expert {spec.id!r} is a {spec.kind!r} expert, not a mixture")
    base = lookup(spec.base)
    if base.kind != "model":
        raise ExpertError(f"mixture {spec.id!r}: base {spec.base!r} is not a model expert")
    members = [lookup(expert_id) for expert_id in spec.experts]
    for member in members:
        if member.kind != "lora":
            raise ExpertError(f"mixture {spec.id!r}: {member.id!r} is not a lora expert")
        if member.base != spec.base:
            raise IncompatibleAdapterError(
                f"mixture {spec.id!r}: {member.id!r} sits on {member.base!r}, not {spec.base!r}"
            )
    return base, members


def _check_top_k(top_k: int, n_experts: int) -> None:
    if top_k > n_experts:
        raise ExpertError(
            f"top_k={top_k} needs at least {top_k} experts, the mixture has {n_experts}"
        )


def _adapter_dir(ref: str | Path) -> Path:
    """A local folder for an adapter given as a path or a Hugging Face id (from the cache)."""
    from experts.spec import is_local_path

    if isinstance(ref, Path) or is_local_path(ref):
        return Path(ref).expanduser()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(ref))
    except Exception as err:  # noqa: BLE001 - hub errors are many; all mean "not available"
        raise ExpertError(f"adapter {ref!r} is not available locally: {err}") from None


def _matrix(values):
    import numpy as np
    import torch

    matrix = torch.as_tensor(np.asarray(values, dtype=np.float32))
    if matrix.ndim != 2:
        raise ExpertError(f"embeddings must be [rows, dim], got shape {tuple(matrix.shape)}")
    return matrix


def _vector(values, name: str):
    import numpy as np
    import torch

    if values is None:
        return None
    vector = torch.as_tensor(np.asarray(values, dtype=np.float32))
    if vector.ndim != 1:
        raise ExpertError(f"expert {name!r}: instruction embedding must be one vector")
    return vector
