"""A pool's config: its engine, its replicas and their resources, and the Serve options
passed through as Serve's own (``autoscaling:`` is Serve's ``AutoscalingConfig``,
``deployment:`` further ``DeploymentSchema`` fields, each validated by Serve's model)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from experts.loader import EngineChoice, resolve_engine

# Ray sets these from num_cpus / num_gpus / memory_gb; as custom resources they are refused.
_RAY_BUILTIN = {"CPU", "GPU", "memory", "object_store_memory"}


def _custom_resources(value: dict[str, float]) -> dict[str, float]:
    for name in value:
        if name in _RAY_BUILTIN or name.startswith("accelerator_type:"):
            raise ValueError(f"resource {name!r} is set by num_cpus / num_gpus / memory_gb / "
                             "accelerator_type, not under resources")
    return value


NodeResources = Annotated[dict[str, Annotated[float, Field(gt=0)]],
                          AfterValidator(_custom_resources)]
RESOURCES_HELP = ("Custom Ray resources each replica needs, e.g. {expert-node: 1}: it runs "
                  "only on nodes started with them (`ray start --resources`, a KubeRay worker "
                  "group's rayStartParams). See README, Running on a cluster.")


# Options Conclave sets on a pool's deployment itself, from the pool's own fields.
OWN_DEPLOYMENT_OPTIONS = {"name": "name", "num_replicas": "num_replicas",
                          "autoscaling_config": "autoscaling",
                          "max_ongoing_requests": "max_ongoing_requests",
                          "ray_actor_options": "num_cpus, num_gpus, memory_gb, resources"}


def serve_validated(model: type, value: dict, what: str) -> dict:
    """``value`` checked by Serve's own pydantic ``model`` (which ignores unknown keys, so
    those are refused here first); returned as given."""
    known = set(model.model_fields) | {f.alias for f in model.model_fields.values() if f.alias}
    unknown = sorted(set(value) - known)
    if unknown:
        raise ValueError(f"{what}: unknown Serve option(s) {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(known))}")
    model.model_validate(value)
    return value


def pool_deployment(pool: str) -> str:
    """The Serve deployment name of the pool named ``pool``."""
    return f"pool-{pool}"


class PoolConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Pool deployment name; experts join it by their `pool` field.")
    engine: Literal["auto", "vllm", "hf"] = Field(
        "auto", description="Engine for the pool's model experts (an expert's `engine` wins): "
        "auto is vllm where vLLM is installed, else hf.")
    engine_args: dict[str, Any] = Field(
        default_factory=dict, description="Engine arguments for every model expert of the pool "
        "(for vllm: AsyncEngineArgs fields, e.g. max_model_len, enable_prefix_caching).")
    max_loras: int = Field(8, ge=1, description="vLLM: LoRA adapters in one running batch.")
    max_lora_rank: int = Field(
        16, ge=1, description="vLLM: largest LoRA rank served; a LoRA expert above it is "
        "refused when registered.")
    num_replicas: int = Field(1, ge=1, description="Replicas when autoscaling is off.")
    num_cpus: float = Field(0.0, ge=0.0, description="CPUs reserved per replica.")
    num_gpus: float = Field(0.0, ge=0.0, description="GPUs reserved per replica.")
    memory_gb: float = Field(0.0, ge=0.0, description="Memory reserved per replica (0: none).")
    resources: NodeResources = Field(default_factory=dict, description=RESOURCES_HELP)
    accelerator_type: str | None = Field(
        None, description="Ray accelerator type each replica needs (e.g. A100, L4): only "
        "nodes with that GPU model; needs num_gpus > 0.")
    max_resident_models: int = Field(4, ge=1, description="Models kept loaded per replica (LRU).")
    preload: bool = Field(
        True, description="Load the pool's first max_resident_models engines when a replica "
        "starts, before it takes traffic (else on first use); lets Serve spread a model's "
        "traffic over replicas.")
    max_batch_size: int = Field(16, ge=1, description="Requests generated together per expert.")
    batch_wait_timeout_s: float = Field(0.02, ge=0.0, description="Wait to fill a batch.")
    max_ongoing_requests: int = Field(64, ge=1, description="Per replica, before queueing.")
    autoscaling: dict[str, Any] | None = Field(
        None, description="Serve's autoscaling_config (ray.serve.config.AutoscalingConfig "
        "fields); target_ongoing_requests defaults to 1 here: the gateway sends a "
        "transformers pool batches, at most one per replica (of max_replicas) per engine at "
        "once, so 1 means every replica busy. A vLLM pool takes up to max_ongoing_requests "
        "calls per replica: set its target higher (configs/k8s.yaml uses 16).")
    deployment: dict[str, Any] = Field(
        default_factory=dict, description="Further Serve deployment options for the pool "
        "(ray.serve.schema.DeploymentSchema fields, e.g. health_check_period_s, "
        "graceful_shutdown_timeout_s, max_queued_requests), passed to Serve as given.")

    @field_validator("autoscaling")
    @classmethod
    def _serve_autoscaling(cls, value: dict | None) -> dict | None:
        if value is None:
            return None
        from ray.serve.config import AutoscalingConfig

        return serve_validated(AutoscalingConfig, {"target_ongoing_requests": 1, **value},
                               "autoscaling")

    @field_validator("deployment")
    @classmethod
    def _serve_deployment(cls, value: dict) -> dict:
        from ray.serve.schema import DeploymentSchema

        for option, field in OWN_DEPLOYMENT_OPTIONS.items():
            if option in value:
                raise ValueError(f"deployment: {option} is set from the pool's {field}")
        serve_validated(DeploymentSchema, {"name": "pool", **value}, "deployment")
        return value

    @field_validator("engine_args")
    @classmethod
    def _known_engine_args(cls, value: dict) -> dict:
        from experts.vllm_engine import check_engine_args

        check_engine_args(value)
        return value

    def engine_choice(self) -> EngineChoice:
        """The pool's engine settings, for an :class:`~experts.loader.ExpertLoader`."""
        return EngineChoice(engine=self.engine, engine_args=dict(self.engine_args),
                            max_loras=self.max_loras, max_lora_rank=self.max_lora_rank,
                            num_cpus=self.num_cpus)

    def resolved_engine(self) -> str:
        """The pool's engine with ``auto`` resolved (vllm where vLLM is installed)."""
        return resolve_engine(self.engine)

    @model_validator(mode="after")
    def _accelerator_needs_gpus(self) -> PoolConfig:
        if self.accelerator_type and not self.num_gpus:
            raise ValueError(f"pool {self.name!r}: accelerator_type needs num_gpus > 0")
        return self

    @property
    def deployment_name(self) -> str:
        """The pool's Serve deployment name."""
        return pool_deployment(self.name)

    @property
    def most_replicas(self) -> int:
        """Replicas there can be at once (the autoscaling ceiling when it is on)."""
        if self.autoscaling is None:
            return self.num_replicas
        from ray.serve.config import AutoscalingConfig

        return AutoscalingConfig.model_validate(self.autoscaling).max_replicas
