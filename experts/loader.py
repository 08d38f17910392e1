"""From expert specs to loaded engines, for a :class:`~experts.pool.ModelPool`.

LoRA experts share their base's engine: the pool key of a ``lora`` expert is its base's
id (:func:`engine_key`), and :meth:`ExpertLoader.prepare` loads the adapter into that engine
under the expert's own id (:func:`adapter_of`). Generating for a batch that mixes several
LoRA experts on one base is then one call with ``adapters=[adapter_of(spec) per row]``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from experts.engine import GenerationEngine
from experts.errors import ExpertError
from experts.spec import ExpertSpec, is_local_path, require_local_path


def engine_key(spec: ExpertSpec) -> str:
    """The pool key of the engine that serves ``spec``: the base for LoRA, else its id."""
    return spec.base if spec.kind == "lora" and spec.base else spec.id


def adapter_of(spec: ExpertSpec) -> str | None:
    """The adapter name a row for ``spec`` uses in a batch; None for the base model."""
    return spec.id if spec.kind == "lora" else None


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
    ):
        self.lookup = lookup
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
        self.check_path(spec, spec.adapter)
        engine.load_adapter(spec.id, spec.adapter)
        return spec.id

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

    def _load_model(self, spec: ExpertSpec) -> GenerationEngine:
        from experts.hf_engine import HFEngine

        self.check_path(spec, spec.model)
        return HFEngine(
            spec.model,
            dtype=self.dtype,
            device=self.device,
            trust_remote_code=spec.trust_remote_code,
        )

    def _load_mixture(self, spec: ExpertSpec) -> GenerationEngine:
        from experts.mixture_engine import load_mixture

        for member in [self.lookup(spec.base), *map(self.lookup, spec.experts)]:
            self.check_path(member, member.model or member.adapter)
        return load_mixture(spec, self.lookup, self.embed, dtype=self.dtype, device=self.device)


def _resolve(path: str) -> Path:
    return Path(path).expanduser().resolve()
