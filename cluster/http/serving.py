"""The OpenAI endpoints' logic, without the web framework (vLLM style): requests in,
response models out. The gateway wires in the router call, the expert call, the live
expert catalog and the aggregator; unit tests pass plain async functions instead.

One request: model → routing options (or one expert asked directly) → router (cache,
then strategy) → panel (experts, failover) → aggregator → response with a ``conclave``
field saying who answered and why. A conversation's turn is routed on its user turns and
its decision kept under its session (:class:`SessionRouting`; the rule and the store:
:mod:`routing.sessions`).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from cluster.catalog import ExpertCatalog
from cluster.config import ConclaveConfig
from cluster.http.errors import ApiError, from_domain
from cluster.http.protocol import (
    ChatChoice,
    ChatChoiceMessage,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    ConclaveInfo,
    ExpertUse,
    ModelCard,
    ModelList,
    RouteRequest,
    SessionInfo,
    Usage,
    tool_calls,
)
from cluster.ops.metrics import ConclaveMetrics
from cluster.ops.tracing import current_request_id, span
from cluster.panel.cascade import run_cascade
from cluster.panel.panel import AnswerCombiner, ExpertCall, ExpertClient, FinalAnswer, Panel
from cluster.panel.sink_stream import DeltaSink
from cluster.serve.messages import RouteResult
from experts.engine import FEATURE_KEYS, GenerationParams
from routing.aggregate import Aggregator
from routing.errors import RoutingError
from routing.options import MODEL_PREFIX, RouteOptions
from routing.selection import Decision
from routing.sessions import RoutedText, SessionIdError, SessionStore, SessionTurn, session_key

if TYPE_CHECKING:
    from cluster.tenants.keys import StoredKey
    from cluster.tenants.tenancy import Tenancy

# query, options → the router's result; raises RoutingError for a query it cannot route
RouteCall = Callable[[str, RouteOptions], Awaitable[RouteResult]]


@dataclass(frozen=True)
class Turn:
    """One request as a turn of a conversation."""

    routed: str  # the text routed (the user turns, routing/sessions.py)
    session: str | None = None  # its session id (header, then ``user``, then body)
    standalone: bool = True  # a question of its own (not joined with earlier turns)


def turn_of(routed: RoutedText, header: str | None, user: str | None,
            options: RouteOptions | None) -> Turn:
    """The turn routed on ``routed``; its session from the ``x-session-id`` header, the
    ``user`` field or ``conclave.session``, in that order (a bad id: HTTP 400)."""
    try:
        session = session_key(header, user, options.session if options else None)
    except SessionIdError as err:
        raise from_domain(err) from None
    return Turn(routed.text, session, routed.standalone)


class SessionRouting:
    """Applies a session's decision to a freshly routed turn (``store`` None: sessions
    are off, every turn is routed alone)."""

    def __init__(self, store: SessionStore | None):
        self._store = store

    async def apply(self, turn: Turn, decision: Decision, options: RouteOptions,
                    dry_run: bool = False) -> tuple[Decision, SessionInfo | None, dict]:
        """The decision to follow for ``turn``, what became of its session, and why."""
        session = turn.session
        if self._store is None or session is None or not self._store.config.enabled:
            return decision, None, {}
        kept: SessionTurn = await asyncio.to_thread(
            self._store.decide, session, decision, options.decision_key(), dry_run,
            turn.standalone)
        return kept.decision, SessionInfo(id=session, outcome=kept.outcome), kept.explanation


def session_headers(info: SessionInfo | None) -> dict[str, str]:
    """``x-conclave-session`` (its id) and ``x-conclave-session-outcome``."""
    if info is None:
        return {}
    # header values are latin-1: an id from the body may hold any character
    value = info.id if info.id.isascii() else quote(info.id)
    return {"x-conclave-session": value, "x-conclave-session-outcome": info.outcome}


@dataclass
class RoutedPrompt:
    """One prompt, routed: who will answer and how their answers combine."""

    query: str
    prompt: object
    params: GenerationParams
    decision: Decision
    cache: str  # "hit", "miss", "off" or "direct"
    routing_ms: float
    mode: str  # the aggregation mode asked for
    caller: StoredKey | None = None  # the API key it is answered for (None: keys off)
    cascade: float | None = None  # k=cascade: the confidence threshold
    session: SessionInfo | None = None  # what became of its session, if it has one


class ConclaveService:
    """Chat, completions, route dry-runs and the model list."""

    def __init__(self, config: ConclaveConfig, route: RouteCall, call: ExpertCall,
                 catalog: ExpertCatalog, metrics: ConclaveMetrics,
                 tenancy: Tenancy | None = None, sessions: SessionRouting | None = None):
        self.config = config
        self._sessions = sessions or SessionRouting(None)
        self._tenancy = tenancy
        self._route = route
        self._catalog = catalog
        self._metrics = metrics
        client = ExpertClient(call, config.serving.expert_timeout_s)
        self._client = client
        self._panel = Panel(client, catalog.is_live)
        self._combiner = AnswerCombiner(client, catalog.is_live)

    def models(self) -> ModelList:
        cards = [ModelCard(id=MODEL_PREFIX, description="the routed panel of experts")]
        cards += [ModelCard(id=s.id, description=s.description) for s in self._catalog.specs()]
        return ModelList(data=cards)

    async def chat(self, req: ChatCompletionRequest, caller: StoredKey | None = None,
                   session_header: str | None = None) -> ChatCompletionResponse:
        plan = await self.plan(req.query(), req.prompt(), req, caller,
                               self.turn(req, session_header))
        out = await self.run(plan)
        if out.tool_calls:  # the model chose to call (auto): the text before is content
            calls, content = out.tool_calls, out.text or None
        else:  # a forced call is the whole text
            calls = tool_calls(plan.params, out.text)
            content = None if calls else out.text
        message = ChatChoiceMessage(content=content, tool_calls=calls)
        choice = ChatChoice(index=0, message=message,
                            finish_reason="tool_calls" if calls else out.finish_reason,
                            logprobs=None if out.logprobs is None else {"content": out.logprobs})
        return ChatCompletionResponse(model=req.model, choices=[choice], usage=out.usage,
                                      conclave=out.info)

    async def completions(self, req: CompletionRequest,
                          caller: StoredKey | None = None) -> CompletionResponse:
        choices, infos, usage = [], [], Usage()
        for index, prompt in enumerate(req.prompts()):
            out = await self.run(await self.plan(prompt, prompt, req, caller))
            text = prompt + out.text if req.echo else out.text
            choices.append(CompletionChoice(index=index, text=text,
                                            finish_reason=out.finish_reason))
            infos.append(out.info)
            usage = add_usage(usage, out.usage)
        return CompletionResponse(model=req.model, choices=choices, usage=usage,
                                  conclave=infos)

    async def plan_completions(self, req: CompletionRequest,
                               caller: StoredKey | None = None) -> list[RoutedPrompt]:
        """Every prompt of a completions request, routed."""
        return [await self.plan(prompt, prompt, req, caller) for prompt in req.prompts()]

    def turn(self, req: ChatCompletionRequest, session_header: str | None = None) -> Turn:
        """A chat request as a turn: its conversation's routed text and its session."""
        return turn_of(req.routed_text(self.config.routing.conversation), session_header,
                       req.user, req.conclave)

    async def route(self, req: RouteRequest, caller: StoredKey | None = None,
                    session_header: str | None = None) -> dict:
        """The routing decision alone (a dry run, the session's included, nothing
        stored), restricted as ``caller``'s key is."""
        text = req.text(self.config.routing.conversation)
        query = text.text
        if not query.strip():
            raise ApiError(400, "give a non-empty 'query' or user message", param="query")
        options = self.route_options(req.model, req.conclave)
        if options is None:
            raise ApiError(400, f"model {req.model!r} is one expert; nothing to route",
                           param="model")
        turn = turn_of(text, session_header, req.user, options)
        routed = await self._call_router(query, options)
        decision, session, why = await self._sessions.apply(turn, routed.decision, options,
                                                            dry_run=True)
        if caller is not None:
            decision = self._tenancy.restrict(caller, decision)
        return {"decision": decision.to_dict(), "cache": routed.cache,
                "routing_ms": routed.routing_ms, "options": options.model_dump(),
                "session": session and {**session.model_dump(), **why}}

    def route_options(self, model: str, body: RouteOptions | None) -> RouteOptions | None:
        """Routing options: the config's defaults, under the model string's, under the
        body's; None when ``model`` names one expert. Unknown models → 404."""
        if model != MODEL_PREFIX and not model.startswith(MODEL_PREFIX + ":"):
            if model in self._catalog:
                return None
            raise ApiError(404, f"model {model!r} does not exist; GET /v1/models lists "
                           f"'{MODEL_PREFIX}' and every expert", param="model",
                           code="model_not_found")
        try:
            options = RouteOptions.parse_model_string(model).over(self.config.routing)
        except RoutingError as err:
            raise ApiError(400, str(err), param="model", code="invalid_value") from None
        return body.over(options) if body is not None else options

    async def plan(self, query: str, prompt: object, req, caller: StoredKey | None = None,
                   turn: Turn | None = None) -> RoutedPrompt:
        """Route one prompt (or take the expert asked for directly): everything that can
        fail on bad input happens here, before a streamed response starts. With a
        ``caller``, only experts its key allows answer (403 when none may). A ``turn`` of a
        conversation is routed on its text, under its session."""
        params = self._params(req)
        options = self.route_options(req.model, req.conclave)
        if options is None:
            if caller is not None:
                self._tenancy.check_expert(caller, req.model)
            decision = Decision(query=query, experts=[req.model], weights=[1.0],
                                strategy="direct", ranked=[(req.model, 1.0)], explanation={})
            return RoutedPrompt(query, prompt, params, decision, "direct", 0.0, "best", caller)
        turn = turn or Turn(query)
        routed = await self._call_router(turn.routed, options)
        decision, session, _ = await self._sessions.apply(turn, routed.decision, options)
        if caller is not None:
            decision = self._tenancy.restrict(caller, decision)
        return RoutedPrompt(query, prompt, params, decision, routed.cache, routed.routing_ms,
                            options.aggregation, caller,
                            options.cascade_threshold if options.k == "cascade" else None,
                            session)

    async def run(self, plan: RoutedPrompt, sink: DeltaSink | None = None) -> FinalAnswer:
        """Ask the plan's experts and combine their answers. With ``sink``, the text of
        the call that writes the final answer (a lone expert's, or the synthesis) goes to
        ``sink`` as it is generated."""
        if plan.cascade is not None:
            return await self._run_cascade(plan)
        lone = len(set(plan.decision.experts)) == 1
        synthesised = not lone and Aggregator(mode=plan.mode).mode_for(
            plan.query, plan.decision) == "synthesis"
        drafts = plan.params.without(*FEATURE_KEYS) if synthesised else plan.params
        run = await self._panel.run(plan.decision, plan.prompt, drafts,
                                    sink if lone else None)
        with span("aggregate", **{"conclave.mode": plan.mode}) as current:
            final = await self._combiner.combine(plan.query, plan.decision, run, plan.mode,
                                                 plan.params, None if lone else sink)
            current.set_attribute("conclave.aggregation", final.mode)
            if final.aggregator:
                current.set_attribute("conclave.aggregator", final.aggregator)
        for failover in run.failovers:
            self._metrics.failovers.labels(failover.expert).inc()
        final.interrupted = run.interrupted
        final.info = ConclaveInfo(experts=run.uses(), strategy=plan.decision.strategy,
                                  aggregation=final.mode, aggregator=final.aggregator,
                                  cache=plan.cache, failovers=run.failovers,
                                  routing_ms=plan.routing_ms, request_id=current_request_id(),
                                  session=plan.session)
        if plan.caller is not None:  # counted once answered: never cut mid-answer
            await self._tenancy.book(plan.caller, final.calls)
        return final

    async def _run_cascade(self, plan: RoutedPrompt) -> FinalAnswer:
        """k=cascade (cluster/panel/cascade.py); the kept answer streams once chosen."""
        run = await run_cascade(self._client, plan.decision, plan.prompt, plan.params,
                                plan.cascade, self._catalog.is_live)
        kept = run.answers[run.kept]
        if plan.caller is not None:  # every answer asked for is booked, as a panel's are
            await self._tenancy.book(plan.caller, run.answers)
        for failover in run.failovers:
            self._metrics.failovers.labels(failover.expert).inc()
        uses = [ExpertUse(id=a.expert, weight=float(i == run.kept),
                          completion_tokens=a.completion_tokens)
                for i, a in enumerate(run.answers)]
        final = FinalAnswer.of(kept.text, "cascade", run.answers, kept, kept.finish_reason)
        if plan.params.logprobs is None:  # asked for the cascade's sake only
            final.logprobs = None
        final.info = ConclaveInfo(experts=uses, strategy=plan.decision.strategy,
                                  aggregation="cascade", cache=plan.cache,
                                  failovers=run.failovers, routing_ms=plan.routing_ms,
                                  request_id=current_request_id(), cascade=run.steps(),
                                  session=plan.session)
        return final

    async def _call_router(self, query: str, options: RouteOptions) -> RouteResult:
        started = time.perf_counter()
        try:
            routed = await self._route(query, options)
        except RoutingError as err:
            raise from_domain(err) from None
        self._metrics.record_route(time.perf_counter() - started, routed.cache,
                                   routed.batch_size, routed.decision.experts)
        return routed

    def _params(self, req) -> GenerationParams:
        limit, tokens = self.config.serving.max_tokens_limit, req.token_limit()
        if tokens is not None and tokens > limit:
            raise ApiError(400, f"max_tokens {tokens} is above this server's limit of {limit}",
                           param="max_tokens", code="invalid_value")
        return req.generation_params()


def add_usage(a: Usage, b: Usage) -> Usage:
    return Usage(prompt_tokens=a.prompt_tokens + b.prompt_tokens,
                 completion_tokens=a.completion_tokens + b.completion_tokens,
                 total_tokens=a.total_tokens + b.total_tokens)


def conclave_headers(info: ConclaveInfo | list[ConclaveInfo] | None) -> dict[str, str]:
    """``x-conclave-*`` response headers summarising the panel's work."""
    infos = info if isinstance(info, list) else [info] if info else []
    if not infos:
        return {}
    return {
        "x-conclave-experts": ",".join(e.id for i in infos for e in i.experts),
        "x-conclave-strategy": infos[0].strategy,
        "x-conclave-cache": ",".join(i.cache for i in infos),
        "x-conclave-failovers": str(sum(len(i.failovers) for i in infos)),
        "x-conclave-aggregation": ",".join(i.aggregation for i in infos),
        **session_headers(infos[0].session),
    }
