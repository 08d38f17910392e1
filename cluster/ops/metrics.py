"""Prometheus metrics, kept by the gateway and served at ``GET /metrics``.

Router and pool replicas report what they did with each reply (routing seconds, cache hit,
batch size, model loads), so one scrape of the gateway shows the whole request path.
Each :class:`ConclaveMetrics` owns its registry (no process globals): tests and several
apps in one process do not collide. With several gateway replicas, each exposes its own
share (Serve's proxy picks one per scrape); sum them in Prometheus.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from cluster.serve.messages import ExpertReply

CONTENT_TYPE = CONTENT_TYPE_LATEST
_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_SLOW = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)
# vLLM's buckets, trimmed at both ends
_TTFT = (0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40)
_TPOT = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1, 2.5)


class ConclaveMetrics:
    """The gateway's counters and histograms."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        reg = self.registry
        self.requests = Counter("conclave_requests", "HTTP requests by endpoint and status.",
                                ["endpoint", "status"], registry=reg)
        self.request_seconds = Histogram("conclave_request_seconds", "End-to-end latency.",
                                         ["endpoint"], buckets=_SLOW, registry=reg)
        self.routing_seconds = Histogram("conclave_routing_seconds",
                                         "Router time per query (cache + strategy).",
                                         buckets=_FAST, registry=reg)
        self.decisions = Counter("conclave_decisions", "Experts recruited, by expert.",
                                 ["expert"], registry=reg)
        self.cache = Counter("conclave_pattern_cache", "Pattern-cache lookups by result.",
                             ["result"], registry=reg)
        # Beside Serve's multiplexed counters, which are on each node's metrics port (not this
        # scrape) and time a preloaded engine's hand-over, not its start (docs/engines.md).
        self.model_loads = Counter("conclave_model_loads", "Engines loaded by pool replicas.",
                                   ["pool"], registry=reg)
        self.model_load_seconds = Histogram("conclave_model_load_seconds",
                                            "Seconds per engine load.", buckets=_SLOW,
                                            registry=reg)
        self.batch_size = Histogram("conclave_expert_batch_size",
                                    "Requests generated together per expert batch.",
                                    ["pool"], buckets=_SIZES, registry=reg)
        self.batch_seconds = Histogram("conclave_expert_batch_seconds",
                                       "Seconds per expert batch (checks and generation).",
                                       ["pool"], buckets=_SLOW, registry=reg)
        self.route_batch_size = Histogram("conclave_route_batch_size",
                                          "Queries routed per encoder pass.", buckets=_SIZES,
                                          registry=reg)
        self.tokens = Counter("conclave_generated_tokens", "Completion tokens, by expert.",
                              ["expert"], registry=reg)
        self.failovers = Counter("conclave_failovers", "Expert calls failed over, by expert.",
                                 ["expert"], registry=reg)
        self.replay_no_record = Counter("conclave_replay_no_record",
                                        "Prompts a replay expert had no recorded answer "
                                        "for, by expert.", ["expert"], registry=reg)
        # Labelled by expert: values come from the registry, never from request input.
        self.ttft = Histogram("conclave_time_to_first_token_seconds",
                              "Seconds from an expert call to its first token at the gateway "
                              "(a streamed call sees it as generated; a whole reply brings "
                              "its first token with its last), by expert.", ["expert"],
                              buckets=_TTFT, registry=reg)
        self.tpot = Histogram("conclave_time_per_output_token_seconds",
                              "Seconds per completion token after the first (whole replies: "
                              "call seconds / tokens), by expert.", ["expert"],
                              buckets=_TPOT, registry=reg)
        self.replica_retries = Counter("conclave_replica_retries",
                                       "Calls sent again because the replica died under them, "
                                       "by deployment.", ["deployment"], registry=reg)
        self.expert_up = Gauge("conclave_expert_up", "1 when the expert's last call answered, "
                               "0 when its replica reported an error (e.g. a failed load).",
                               ["expert"], registry=reg)
        # Labelled by API key name (cluster/tenants/: a bounded set, the rest 'other').
        self.key_requests = Counter("conclave_key_requests", "Requests by API key and "
                                    "outcome (admitted, or the limit that refused it).",
                                    ["key", "outcome"], registry=reg)
        self.key_tokens = Counter("conclave_key_tokens", "Tokens by API key and kind (prompt, "
                                  "completion), every panel call included.", ["key", "kind"],
                                  registry=reg)
        self.key_cost = Counter("conclave_key_cost_usd", "Cost by API key, from the experts' "
                                "prices.", ["key"], registry=reg)
        self.sessions = Counter("conclave_sessions", "Session turns by outcome: new, kept, "
                                "switched, stateless (store unreachable).", ["outcome"],
                                registry=reg)
        self.unhealthy: dict[str, str] = {}  # expert -> the error of its last call

    def record_route(self, seconds: float, cache: str, batch_size: int,
                     experts: list[str]) -> None:
        self.routing_seconds.observe(seconds)
        self.cache.labels(cache).inc()
        if batch_size:
            self.route_batch_size.observe(batch_size)
        for expert in experts:
            self.decisions.labels(expert).inc()

    def record_generation(self, pool: str, expert: str, reply: ExpertReply) -> None:
        """Book one pool reply: tokens, the batch/load events it carries, and whether the
        expert is healthy (its last reply was not an error)."""
        self.expert_up.labels(expert).set(0 if reply.error else 1)
        if reply.error:
            self.unhealthy[expert] = str(reply.error)[:300]
        else:
            self.unhealthy.pop(expert, None)
        self.tokens.labels(expert).inc(reply.completion_tokens)
        if reply.no_record:
            self.replay_no_record.labels(expert).inc()
        if reply.stats.batch_size:
            self.batch_size.labels(pool).observe(reply.stats.batch_size)
            self.batch_seconds.labels(pool).observe(reply.stats.seconds)
        for seconds in reply.stats.loads:
            self.model_loads.labels(pool).inc()
            self.model_load_seconds.observe(seconds)

    def record_timing(self, expert: str, seconds: float, tokens: int,
                      first_token_s: float | None = None) -> None:
        """Time to first token and per output token of one answered expert call that
        took ``seconds``; ``first_token_s`` when its first token was seen on the way."""
        if tokens < 1:
            return
        self.ttft.labels(expert).observe(seconds if first_token_s is None else first_token_s)
        if first_token_s is None:
            self.tpot.labels(expert).observe(seconds / tokens)
        elif tokens > 1:
            self.tpot.labels(expert).observe((seconds - first_token_s) / (tokens - 1))

    def render(self) -> bytes:
        return generate_latest(self.registry)
