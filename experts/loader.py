"""From expert specs to loaded engines, for a :class:`~experts.pool.ModelPool`.

LoRA experts share their base's engine: the pool key of a ``lora`` expert is its base's
id (:func:`engine_key`), and :meth:`ExpertLoader.prepare` loads the adapter into that engine
under the expert's own id (:func:`adapter_of`). Generating for a batch that mixes several
LoRA experts on one base is then one call with ``adapters=[adapter_of(spec) per row]``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from experts.adapters import check_adapter_base, check_adapter_rank
from experts.engine import GenerationEngine
from experts.errors import ExpertError
from experts.spec import ExpertSpec, is_local_path, require_local_path


def engine_key(spec: ExpertSpec) -> str:
    """The pool key of the engine that serves ``spec``: the base for LoRA, else its id."""
    return spec.base if spec.kind == "lora" and spec.base else spec.id


def adapter_of(spec: ExpertSpec) -> str | None:
    """The adapter name a row for ``spec`` uses in a batch; None for the base model."""
    return spec.id if spec.kind == "lora" else None


@dataclass(frozen=True)
class EngineChoice:
    """How a pool's model experts are served: the engine (``auto`` is vllm where vLLM is
    installed, else hf), its arguments, and vLLM's LoRA slots and largest rank. An expert's
    own ``engine``/``engine_args`` win over these."""

    engine: str = "auto"
    engine_args: dict = field(default_factory=dict)
    max_loras: int = 8
    max_lora_rank: int = 16
    num_cpus: float = 0.0

    def engine_of(self, spec: ExpertSpec) -> str:
        """The engine that serves model expert ``spec``."""
        return resolve_engine(spec.engine or self.engine)


def resolve_engine(name: str) -> str:
    """An engine name with ``auto`` resolved: vllm where vLLM is installed, else hf."""
    if name != "auto":
        return name
    from experts.vllm_engine import vllm_available

    return "vllm" if vllm_available() else "hf"


class ExpertLoader:
    """Loads the engine for a pool key; ``lookup(id)`` gives an expert's spec.

    ``allowed_roots``: when given, local model and adapter paths must lie under one of
    them (an admin API must not load arbitrary files). ``builders`` maps a spec kind to the
    function that builds its engine; another kind plugs in by adding an entry. ``embed``
    (texts → ``[n, dim]`` array) gives mixture experts their members' instruction
    embeddings; without it a mixture routes on its learned gates alone."""

    def __init__(
        self,
        lookup: Callable[[str], ExpertSpec],
        allowed_roots: list[str] | None = None,
        *,
        device: str | None = None,
        dtype: str | None = None,
        embed: Callable[[list[str]], object] | None = None,
        engines: EngineChoice | dict[str, EngineChoice] | None = None,
    ):
        self.lookup = lookup
        # one choice for every expert, or one per pool name (the default for other pools)
        self._choices = engines if isinstance(engines, dict) else {}
        self.choice = engines if isinstance(engines, EngineChoice) else EngineChoice()
        self.embed = embed
        self.allowed_roots = (
            None if allowed_roots is None else [_resolve(root) for root in allowed_roots]
        )
        self.device = device
        self.dtype = dtype
        self.builders: dict[str, Callable[[ExpertSpec], GenerationEngine]] = {
            "model": self._load_model,
            "mixture": self._load_mixture,
        }
        # engine name → builder of a model expert's engine
        self.engines: dict[str, Callable[[ExpertSpec], GenerationEngine]] = {
            "hf": self._load_hf,
            "vllm": self._load_vllm,
            "replay": self._load_replay,
        }

    def __call__(self, key: str) -> GenerationEngine:
        return self.load(key)

    def load(self, key: str) -> GenerationEngine:
        """The engine for pool key ``key`` (a model expert's id, or any expert's id)."""
        spec = self.lookup(key)
        if spec.kind == "lora":
            spec = self.lookup(engine_key(spec))
        builder = self.builders.get(spec.kind)
        if builder is None:
            raise ExpertError(f"expert {spec.id!r}: kind {spec.kind!r} cannot be loaded here")
        return builder(spec)

    def prepare(self, engine: GenerationEngine, spec: ExpertSpec) -> str | None:
        """Make ``engine`` ready to serve ``spec`` (load its adapter; a no-op when loaded).

        Returns the adapter name to pass per row (None for the base model)."""
        if spec.kind != "lora":
            return None
        if not hasattr(engine, "load_adapter"):
            raise ExpertError(f"expert {spec.id!r}: engine of {spec.base!r} cannot load adapters")
        if spec.id not in getattr(engine, "adapters", {}):  # loaded: its path was checked then
            self.check_path(spec, spec.adapter)
            engine.load_adapter(spec.id, spec.adapter)
        return spec.id

    def check_adapter(self, spec: ExpertSpec) -> None:
        """Refuse, at registration, a local LoRA adapter made for another base than its
        base expert's model, or (on vLLM) above the pool's ``max_lora_rank``."""
        if spec.kind != "lora" or not spec.adapter or not is_local_path(spec.adapter):
            return
        if not Path(spec.adapter).expanduser().exists():  # checked on the node that loads it
            return
        base = self.lookup(spec.base)
        if base.model:
            check_adapter_base(spec.adapter, base.model)
        choice = self.choice_of(base)
        if choice.engine_of(base) == "vllm":
            check_adapter_rank(spec.adapter, choice.max_lora_rank)

    def check_path(self, spec: ExpertSpec, ref: str | None) -> None:
        """Refuse a local path outside ``allowed_roots``, or missing on this node."""
        if not ref or not is_local_path(ref):
            return
        require_local_path(spec.id, ref)
        if self.allowed_roots is None:
            return
        path = _resolve(ref)
        if not any(path == root or root in path.parents for root in self.allowed_roots):
            roots = ", ".join(str(root) for root in self.allowed_roots) or "none"
            raise ExpertError(
                f"expert {spec.id!r}: path {ref!r} is outside the allowed roots ({roots})"
            )

    def choice_of(self, spec: ExpertSpec) -> EngineChoice:
        """The engine settings of ``spec``'s pool."""
        return self._choices.get(spec.pool, self.choice)

    def _load_model(self, spec: ExpertSpec) -> GenerationEngine:
        name = self.choice_of(spec).engine_of(spec)
        builder = self.engines.get(name)
        if builder is None:
            raise ExpertError(f"expert {spec.id!r}: engine {name!r} is not available here "
                              f"(available: {', '.join(sorted(self.engines))})")
        self.check_path(spec, spec.model)
        return builder(spec)

    def _load_vllm(self, spec: ExpertSpec) -> GenerationEngine:
        from experts.vllm_engine import VLLMEngine

        choice = self.choice_of(spec)
        return VLLMEngine(spec.model, max_loras=choice.max_loras,
                          max_lora_rank=choice.max_lora_rank,
                          engine_args={**choice.engine_args, **spec.engine_args},
                          trust_remote_code=spec.trust_remote_code, num_cpus=choice.num_cpus,
                          tool_parser=spec.tool_parser)

    def _load_hf(self, spec: ExpertSpec) -> GenerationEngine:
        from experts.hf_engine import HFEngine

        if spec.engine_args or self.choice_of(spec).engine_args:
            raise ExpertError(f"expert {spec.id!r}: engine_args are vLLM arguments; the hf "
                              "engine takes none")

        return HFEngine(
            spec.model,
            dtype=self.dtype,
            device=self.device,
            trust_remote_code=spec.trust_remote_code,
        )

    def _load_replay(self, spec: ExpertSpec) -> GenerationEngine:
        from experts.replay_engine import ReplayEngine

        # Always a local folder, however it is spelled: checked against the allowed roots.
        self.check_path(spec, str(_resolve(spec.replay.data)))
        return ReplayEngine.from_spec(spec)

    def _load_mixture(self, spec: ExpertSpec) -> GenerationEngine:
        from experts.mixture_engine import load_mixture

        for member in [self.lookup(spec.base), *map(self.lookup, spec.experts)]:
            self.check_path(member, member.model or member.adapter)
        return load_mixture(spec, self.lookup, self.embed, dtype=self.dtype, device=self.device)


def _resolve(path: str) -> Path:
    return Path(path).expanduser().resolve()
