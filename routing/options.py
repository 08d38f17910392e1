"""The per-request options that steer routing and answering, defined once.

:class:`RouteOptions` is frozen and hashable; it travels from the HTTP layer (the
``conclave`` body field, or the OpenAI ``model`` string so a stock client can drive it:
``conclave:k=3,strategy=skills,cost=0.2,sample=true,seed=7,aggregation=vote``, or an
adaptive panel ``conclave:k=auto,k_mass=0.8,k_max=3``, or a cascade
``conclave:k=cascade,threshold=-0.4``) through
the router hop to the pattern cache keys. The config's ``routing`` section inherits the
same fields (:class:`RouteOptionFields`) as the defaults a request starts from.

Two keys come from it: :meth:`RouteOptions.decision_key` (the fields that change which
experts are recruited: a stored routing decision is reused only under the same key) and
:meth:`RouteOptions.answer_key` (every field plus the sampling parameters: a stored final
answer is served only to a request that would have made the same one).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from routing.errors import RoutingError

MODEL_PREFIX = "conclave"
Aggregation = Literal["auto", "vote", "synthesis", "best"]
# The fields that change a routing decision (aggregation only changes the answer).
DECISION_FIELDS = ("k", "k_mass", "k_max", "strategy", "cost_weight", "sample", "seed",
                   "guard")
# Model-string key → field (``cost`` is the short name of ``cost_weight``).
_KEYS = {"k": "k", "strategy": "strategy", "cost": "cost_weight", "cost_weight": "cost_weight",
         "sample": "sample", "seed": "seed", "aggregation": "aggregation",
         "k_mass": "k_mass", "k_max": "k_max", "guard": "guard",
         "cascade_threshold": "cascade_threshold", "threshold": "cascade_threshold"}


class RouteOptionFields(BaseModel):
    """Every routing option with its default and checks, defined once: per request
    (:class:`RouteOptions`) and as the config's ``routing`` defaults."""

    model_config = ConfigDict(extra="forbid")

    k: Annotated[int, Field(ge=1, le=16)] | Literal["auto", "cascade"] = Field(
        3, description="Experts recruited for the query (1..16), or 'auto': recruit until "
        "their calibrated mass reaches k_mass, at most k_max (see routing.calibration), or "
        "'cascade': ask the top expert, and the next (at most k_max in all) while the "
        "answer's confidence is below cascade_threshold (cluster/panel/cascade.py).")
    k_mass: float = Field(0.8, gt=0.0, le=1.0, description="k=auto: mass to reach.")
    k_max: int = Field(3, ge=1, le=16, description="k=auto, k=cascade: most experts asked.")
    cascade_threshold: float = Field(
        -0.5, le=0.0, allow_inf_nan=False,
        description="k=cascade: an answer whose mean token log-probability is below this is "
        "escalated to the next expert (tuned on validation items: bench/cascade.py).")
    strategy: str | None = Field(
        None, description="Strategy name (see routing.strategies); None: the router's default.")
    cost_weight: float = Field(
        0.0, ge=0.0, allow_inf_nan=False,
        description="λ in score − λ·cost (costs normalised; model string: `cost`).")
    sample: bool = Field(False, description="Sample k experts by weight instead of top-k.")
    guard: bool = Field(
        True, description="Leave the default expert only where the evidence backs it by a "
        "margin (routing.guard); false: always the strategy's top expert.")
    seed: int | None = Field(
        None, description="Seed for sampling; None: derived from the query text.")
    aggregation: Aggregation = Field(
        "auto", description="How the k answers become one: vote, synthesis, best, or auto "
        "(vote for multiple choice, else synthesis).")

    @field_validator("strategy")
    @classmethod
    def _registered(cls, name: str | None) -> str | None:
        from routing.strategies import STRATEGIES  # the registry's names only: no imports

        if name is not None and name not in STRATEGIES:
            raise ValueError(f"unknown routing strategy {name!r}; valid: "
                             f"{', '.join(sorted(STRATEGIES))}")
        return name


class RouteOptions(RouteOptionFields):
    """One request's options (frozen, hashable). A ``null`` field counts as not given, so
    it falls back to the model string, then the config."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    session: str | None = Field(
        None, exclude=True, description="The session id, when neither the x-session-id header "
        "nor the OpenAI 'user' field gives one (routing/sessions.py); no routing option.")

    @model_validator(mode="before")
    @classmethod
    def _nulls_are_unset(cls, data: Any) -> Any:
        if isinstance(data, Mapping):
            return {key: value for key, value in data.items() if value is not None}
        return data

    def given(self) -> dict[str, Any]:
        """The fields set explicitly (what overrides the defaults)."""
        return {name: getattr(self, name) for name in self.model_fields_set}

    def over(self, defaults: RouteOptionFields) -> RouteOptions:
        """These options' given fields over ``defaults`` (the config or a parsed string)."""
        base = {name: getattr(defaults, name) for name in RouteOptionFields.model_fields}
        return RouteOptions(**{**base, **self.given()})

    def with_strategy(self, name: str) -> RouteOptions:
        """The same options with the strategy resolved to ``name``."""
        return self if self.strategy == name else self.model_copy(update={"strategy": name})

    def decision_fields(self) -> dict[str, Any]:
        """The fields a routing decision depends on; the seed only counts when sampling."""
        fields = {name: getattr(self, name) for name in DECISION_FIELDS}
        if not self.sample:
            fields["seed"] = None
        return fields

    def decision_key(self) -> str:
        """A short digest of :meth:`decision_fields`: stored decisions are reused only
        under the same key."""
        return _digest(self.decision_fields())

    def answer_key(self, params: Mapping[str, Any]) -> str:
        """A short digest of every option and the sampling ``params`` (max tokens,
        temperature, ...): a stored answer is served only under the same key."""
        return _digest({"options": self.model_dump(), "params": dict(params)})

    @classmethod
    def parse_model_string(cls, model: str) -> RouteOptions:
        """Parse ``conclave[:key=value,...]``; bad keys or values raise :class:`RoutingError`
        naming the valid ones. Only the keys given are set (see :meth:`given`)."""
        prefix, _, rest = model.strip().partition(":")
        if prefix != MODEL_PREFIX:
            raise RoutingError(f"model {model!r}: routed models start with {MODEL_PREFIX!r}")
        values: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in rest.split(","))):
            key, eq, raw = item.partition("=")
            key = key.strip().lower()
            if not eq or key not in _KEYS or not raw.strip():
                raise RoutingError(
                    f"model {model!r}: bad option {item!r}; valid keys: {', '.join(sorted(_KEYS))}"
                )
            values[_KEYS[key]] = raw.strip()  # pydantic converts "2", "true", "0.5"
        try:
            return cls(**values)
        except ValidationError as err:
            raise RoutingError(f"model {model!r}: {describe(err)}") from None


def describe(err: ValidationError) -> str:
    """One line naming each bad field and why."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'options'}: "
                     f"{e['msg'].removeprefix('Value error, ')}" for e in err.errors())


def _digest(data: dict) -> str:
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(blob.encode("utf-8")).hexdigest()[:16]


__all__ = ["DECISION_FIELDS", "MODEL_PREFIX", "RouteOptionFields", "RouteOptions"]
