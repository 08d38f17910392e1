"""ExpertSpec: what one expert is, validated before anything is loaded.

An expert is one of
- ``model``: a causal LM, from a Hugging Face id or a local path;
- ``lora``: a peft adapter on top of a ``model`` expert named by ``base``;
- ``mixture``: a base plus several ``lora`` experts, mixed token by token (GLIDER local).

A ``model`` expert with ``engine: replay`` needs no ``model``: it answers with a real
model's recorded answers (``replay: {data, model}``, :mod:`experts.replay_engine`).
"""

from __future__ import annotations

import re
import socket
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from experts.engine import GenerationParams

# Validation context: the spec came from where it may name paths of another node (the shared
# registry, the app config a replica receives), so local paths are not checked here but by
# the node that loads them (:func:`require_local_path`).
PATHS_ON_LOAD = {"paths_on_load": True}
SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
# What generates an expert's tokens: vLLM (the default where it is installed), transformers
# (mixtures, and a fallback), or recorded answers (replay).
EngineName = Literal["vllm", "hf", "replay"]


class Resources(BaseModel):
    """What one loaded copy of the expert needs."""

    model_config = ConfigDict(extra="forbid")

    gpus: float = Field(0.0, ge=0.0, description="GPUs per replica serving this expert.")
    memory_gb: float = Field(0.0, ge=0.0, description="Approximate memory of the loaded weights.")


class MixtureOptions(BaseModel):
    """How a ``mixture`` expert mixes its LoRA experts per token (GLIDER)."""

    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(
        3.0, ge=0.0, allow_inf_nan=False,
        description="Weight of the global term α·cos(q, g_i) against the learned per-token "
        "gates: 0 routes on the gates alone; large values (100+) follow the query's nearest "
        "expert everywhere. The paper uses 3 to 1000.",
    )
    top_k: int = Field(2, ge=1, description="Experts mixed per token (at most `experts`).")


class ReplayOptions(BaseModel):
    """A replay expert's recorded answers (``engine: replay``, :mod:`experts.replay_engine`)
    and its latency model."""

    model_config = ConfigDict(extra="forbid")

    data: str = Field(description="Outcome folder with questions.jsonl and predictions.csv "
                      "(the shared data format); relative paths are from the working dir.")
    model: str = Field(description="The predictions.csv column this expert replays.")
    latency: bool = Field(False, description="Simulate generation time: first tokens after "
                          "ttft_s, the rest at tokens_per_s over the recorded output length. "
                          "Off: answers come at once.")
    ttft_s: float | None = Field(None, ge=0.0, allow_inf_nan=False, description="Seconds to "
                                 "the first token; default from the model's size in "
                                 "models.json.")
    tokens_per_s: float | None = Field(None, gt=0.0, allow_inf_nan=False, description="Decode "
                                       "speed; default from the model's size.")
    time_scale: float = Field(1.0, gt=0.0, allow_inf_nan=False, description="Multiplies every "
                              "simulated delay (0.1: ten times faster than modelled).")


def is_local_path(value: str) -> bool:
    """A model reference is a local path when it is spelled like one.

    Hugging Face ids look like ``org/name``; paths start with ``/``, ``.`` or ``~``.
    """
    return value.startswith(("/", ".", "~"))


class ExpertSpec(BaseModel):
    """One expert of the panel."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Slug: lowercase letters, digits, '-' and '_'.")
    kind: Literal["model", "lora", "mixture"] = Field("model", description="What is loaded.")
    model: str | None = Field(
        None, description="HF id or local path of the causal LM (kind=model), or "
        "`local:smollm2-135m-instruct` for the prepared real model (`conclave models prepare`)."
    )
    base: str | None = Field(
        None, description="Id of the `model` expert this adapter or mixture sits on."
    )
    adapter: str | None = Field(None, description="HF id or local path of the peft adapter.")
    experts: list[str] = Field(
        default_factory=list, description="LoRA expert ids mixed by a `mixture` expert."
    )
    mixture: MixtureOptions | None = Field(
        None, description="Mixing options of a `mixture` expert (default: α = 3, top-2)."
    )
    description: str = Field("", description="What the expert is good at, in a sentence.")
    instruction: str | None = Field(
        None, description="Task instruction for GLIDER's global router; defaults to description."
    )
    domain: str | None = Field(None, description="Main domain label, if any.")
    skills: list[str] = Field(default_factory=list, description="Skill keywords it covers.")
    examples: list[str] = Field(
        default_factory=list, description="Example (pilot) questions it answers well."
    )
    generation: GenerationParams = Field(
        default_factory=GenerationParams, description="Sampling defaults."
    )
    resources: Resources = Field(default_factory=Resources, description="Per-copy resources.")
    cost: float = Field(0.0, ge=0.0, description="USD per million generated tokens (0: free).")
    pool: str = Field("default", description="Name of the expert pool deployment serving it.")
    trust_remote_code: bool = Field(
        False, description="Allow the model repo's own Python code. Off unless you trust it."
    )
    engine: EngineName | None = Field(
        None, description="Engine serving a `model` expert (and its LoRA experts): vllm, hf or "
        "replay; default: its pool's. Mixtures always run on hf.",
    )
    engine_args: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra engine arguments for a `model` expert (for vllm: AsyncEngineArgs "
        "fields), over its pool's `engine_args`.",
    )

    replay: ReplayOptions | None = Field(
        None, description="Recorded answers of a `model` expert with engine: replay (it then "
        "needs no `model`).",
    )

    tool_parser: str | None = Field(
        None, description="vLLM tool parser of a `model` expert's model family (hermes, "
        "llama3_json, mistral, ...): requests may then use tool_choice 'auto' (its LoRA "
        "experts share it). Without one, 'auto' is refused with a 400.",
    )

    @field_validator("engine_args")
    @classmethod
    def _known_engine_args(cls, value: dict) -> dict:
        from experts.vllm_engine import check_engine_args

        check_engine_args(value)
        return value

    @field_validator("tool_parser")
    @classmethod
    def _known_tool_parser(cls, value: str | None) -> str | None:
        from experts.vllm_engine import vllm_available
        from experts.vllm_tools import check_tool_parser

        return check_tool_parser(value) if value is not None and vllm_available() else value

    @field_validator("model")
    @classmethod
    def _model_alias(cls, value: str | None, info: ValidationInfo) -> str | None:
        """``local:NAME`` (a prepared model, :mod:`experts.real_model`) → its folder here."""
        from experts.real_model import resolve_alias

        if value is None:
            return None
        on_load = bool((info.context or {}).get("paths_on_load"))
        return resolve_alias(value, must_exist=not on_load)

    @field_validator("id")
    @classmethod
    def _slug(cls, value: str) -> str:
        if not SLUG.match(value):
            raise ValueError(f"expert id {value!r} is not a slug (a-z, 0-9, '-', '_')")
        return value

    @model_validator(mode="after")
    def _kind_fields(self, info: ValidationInfo) -> ExpertSpec:
        if self.kind == "model" and not self.model and self.engine != "replay":
            raise ValueError(f"expert {self.id!r}: kind 'model' needs `model`")
        if (self.engine == "replay") != (self.replay is not None):
            raise ValueError(f"expert {self.id!r}: engine 'replay' and `replay: {{data, "
                             "model}` go together")
        if self.replay is not None:
            from experts.replay_data import check_replay_source

            try:
                check_replay_source(self.replay.data, self.replay.model)
            except ValueError as err:
                raise ValueError(f"expert {self.id!r}: {err}") from None
        if self.kind in ("lora", "mixture") and not self.base:
            raise ValueError(f"expert {self.id!r}: kind {self.kind!r} needs `base`")
        if self.kind == "lora" and not self.adapter:
            raise ValueError(f"expert {self.id!r}: kind 'lora' needs `adapter`")
        if self.kind == "mixture" and not self.experts:
            raise ValueError(f"expert {self.id!r}: kind 'mixture' needs `experts`")
        if (self.engine is not None or self.engine_args) and self.kind != "model":
            raise ValueError(f"expert {self.id!r}: `engine` and `engine_args` are set on the "
                             "model expert; LoRA experts and mixtures use their base's")
        if self.mixture is not None and self.kind != "mixture":
            raise ValueError(f"expert {self.id!r}: `mixture` options need kind 'mixture'")
        if self.mixture is not None and self.mixture.top_k > len(self.experts):
            raise ValueError(f"expert {self.id!r}: mixture top_k={self.mixture.top_k} is more "
                             f"than its {len(self.experts)} experts")
        if not (info.context or {}).get("paths_on_load"):
            for ref in (self.model, self.adapter):
                if missing_local_path(ref):
                    raise ValueError(f"expert {self.id!r}: path {ref!r} does not exist")
        return self

    @property
    def task_instruction(self) -> str:
        """The sentence GLIDER's global router embeds for this expert."""
        return self.instruction or self.description or self.id


def missing_local_path(ref: str | None) -> bool:
    """``ref`` is spelled as a local path that does not exist here."""
    return bool(ref) and is_local_path(ref) and not Path(ref).expanduser().exists()


def require_local_path(expert_id: str, ref: str | None) -> None:
    """Raise :class:`~experts.errors.ExpertError` when ``ref`` is a local path missing on
    this node: paths are read by the node that loads them, which may not be the one that
    validated the spec."""
    from experts.errors import ExpertError

    if missing_local_path(ref):
        raise ExpertError(f"expert {expert_id!r}: local path {ref!r} does not exist on this "
                          f"node ({socket.gethostname()}); local paths are read where the "
                          "expert is loaded, so every node serving it needs them")


def check_references(specs: list[ExpertSpec]) -> None:
    """Cross-expert rules: unique ids, a lora/mixture base is a known `model` expert,
    a mixture's experts are lora experts on that same base."""
    by_id: dict[str, ExpertSpec] = {}
    for spec in specs:
        if spec.id in by_id:
            raise ValueError(f"duplicate expert id {spec.id!r}")
        by_id[spec.id] = spec
    for spec in specs:
        if spec.kind == "model":
            continue
        base = by_id.get(spec.base or "")
        if base is None or base.kind != "model":
            raise ValueError(f"expert {spec.id!r}: base {spec.base!r} is not a known model expert")
        for member in spec.experts:
            other = by_id.get(member)
            if other is None or other.kind != "lora":
                raise ValueError(f"expert {spec.id!r}: {member!r} is not a known lora expert")
            if other.base != spec.base:
                raise ValueError(
                    f"expert {spec.id!r}: {member!r} sits on {other.base!r}, not {spec.base!r}"
                )
