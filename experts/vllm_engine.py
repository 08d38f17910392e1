"""VLLMEngine: one vLLM ``AsyncLLM`` serving a base model and all of its LoRA experts.

Each request is its own coroutine (:meth:`VLLMEngine.agenerate_many`): vLLM schedules
concurrent requests into its running batch at token level (continuous batching), so
nothing of ours batches in front of it. LoRA adapters are vLLM ``LoRARequest``s, loaded
when first asked for; the base model is the null adapter (no request). The engine core
runs in its own process (vLLM spawns it); the ``AsyncLLM`` client lives on an event loop
thread owned by this object, so the engine serves async callers (a pool replica) and
plain ones (``generate``: the batch job hands it its whole share at once) alike.

vLLM is imported here only: a machine without it still runs the HF engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from experts.adapters import check_adapter_base, check_adapter_rank
from experts.engine import Generation, GenerationEngine, GenerationParams, Prompt, encode_prompt
from experts.errors import ExpertError, PromptTooLongError, UnsupportedFeatureError
from experts.spec import is_local_path
from experts.vllm_tools import ToolCallParser

# Conclave sets these itself (from the spec and the pool); engine_args may not.
MANAGED_ARGS = frozenset({"model", "tokenizer", "trust_remote_code", "max_loras",
                          "max_lora_rank"})


def vllm_available() -> bool:
    """Whether vLLM can be imported here (without importing it: that takes seconds)."""
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def check_engine_args(engine_args: dict) -> None:
    """Raise ``ValueError`` naming any key vLLM's ``AsyncEngineArgs`` does not have, or
    one Conclave sets itself. Imports vLLM's argument module, so call it only when there
    are engine args to check."""
    managed = sorted(MANAGED_ARGS & set(engine_args))
    if managed:
        raise ValueError(f"engine_args: {managed[0]!r} is set by Conclave (the spec or the "
                         "pool), not in engine_args")
    if not engine_args or not vllm_available():
        return
    from vllm.engine.arg_utils import AsyncEngineArgs

    known = {f.name for f in dataclasses.fields(AsyncEngineArgs)}
    unknown = sorted(set(engine_args) - known)
    if unknown:
        raise ValueError(f"engine_args: vLLM has no engine argument {unknown[0]!r}")


def cpu_environment(num_cpus: float) -> dict[str, str]:
    """vLLM's CPU settings for a replica reserving ``num_cpus`` cores: one OpenMP thread per
    reserved core (at least one), not pinned (Ray, not vLLM, places replicas on cores), and
    1 GiB of KV cache per reserved core (at least 1 GiB). Variables already set win."""
    cores = max(1, int(num_cpus))
    return {"VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_CPU_KVCACHE_SPACE": str(cores),
            "OMP_NUM_THREADS": str(cores)}


class VLLMEngine(GenerationEngine):
    """A causal LM served by vLLM, with LoRA adapters by name."""

    continuous = True
    supported_features = frozenset({"response_format", "logprobs", "tools"})
    name = "vllm"

    def __init__(self, model: str, *, max_loras: int = 8, max_lora_rank: int = 16,
                 engine_args: dict | None = None, trust_remote_code: bool = False,
                 num_cpus: float = 0.0, tool_parser: str | None = None):
        for key, value in cpu_environment(num_cpus).items():
            os.environ.setdefault(key, value)  # read by the engine process vLLM spawns
        check_engine_args(engine_args or {})
        self.model_name = model
        self.max_lora_rank = max_lora_rank
        # Guided JSON is compact (no free whitespace): a weak model otherwise spends its
        # tokens on blanks. No stat loggers: nothing scrapes vLLM's Prometheus registry in a
        # replica, yet recording it took ~15% of the replica's CPU per request (the
        # gateway's metrics count tokens and timings); engine_args can turn them back on.
        args = {"enable_lora": True, "enable_prefix_caching": True, "disable_log_stats": True,
                "structured_outputs_config": {"backend": "xgrammar",
                                              "disable_any_whitespace": True},
                **(engine_args or {}), "model": model, "trust_remote_code": trust_remote_code,
                "max_loras": max_loras, "max_lora_rank": max_lora_rank}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True,
                                        name=f"vllm-{Path(model).name}")
        self._thread.start()
        self._adapters: dict[str, object] = {}  # name → LoRARequest
        self._ids = itertools.count(1)
        self._requests = itertools.count()
        self._args = args
        self._restart_lock = threading.Lock()
        self.restarting = False
        try:
            self._engine, self.tokenizer = self._call(self._start(args))
        except Exception as err:
            self._stop_loop()
            raise ExpertError(f"model {model!r} does not load in vLLM: {_first_line(err)}") \
                from None
        self.max_model_len = self._engine.model_config.max_model_len
        self.restarts = 0
        self.tool_parser = None if tool_parser is None else ToolCallParser(tool_parser,
                                                                           self.tokenizer)

    async def _start(self, args: dict):
        from transformers import AutoTokenizer
        from vllm import AsyncEngineArgs
        from vllm.config import StructuredOutputsConfig
        from vllm.v1.engine.async_llm import AsyncLLM

        if isinstance(args.get("structured_outputs_config"), dict):  # as written in YAML
            args = {**args, "structured_outputs_config":
                    StructuredOutputsConfig(**args["structured_outputs_config"])}
        engine = AsyncLLM.from_engine_args(AsyncEngineArgs(**args))
        tokenizer = AutoTokenizer.from_pretrained(args["model"],
                                                  trust_remote_code=args["trust_remote_code"])
        return engine, tokenizer

    # -- adapters -------------------------------------------------------------------------

    @property
    def adapters(self) -> dict[str, str]:
        """Loaded adapters: name → path."""
        return {name: req.lora_path for name, req in self._adapters.items()}

    def load_adapter(self, name: str, path: str) -> None:
        """Register adapter ``name`` (idempotent); vLLM loads its weights on first use.
        Refused when it was made for another base, its rank is above ``max_lora_rank``, or
        the engine runs without LoRA (``engine_args: {enable_lora: false}``, a base-only
        pool: vLLM then spends less CPU per token)."""
        if name in self._adapters:
            return
        if not self._args["enable_lora"]:
            raise ExpertError(f"adapter {name!r}: {self.model_name!r} runs in vLLM without "
                              "LoRA (engine_args enable_lora: false); serve its LoRA experts "
                              "on a pool whose engine has LoRA on")
        from vllm.lora.request import LoRARequest

        check_adapter_base(path, self.model_name)
        check_adapter_rank(path, self.max_lora_rank)
        local = str(Path(path).expanduser()) if is_local_path(path) else path
        self._adapters[name] = LoRARequest(name, next(self._ids), local)

    def unload_adapter(self, name: str) -> None:
        """Drop adapter ``name`` and free its slot in the engine (a no-op when absent)."""
        request = self._adapters.pop(name, None)
        if request is not None:
            self._call(self._engine.remove_lora(request.lora_int_id))

    # -- generation -----------------------------------------------------------------------

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams | None = None,
                 adapters: Sequence[str | None] | None = None) -> list[Generation]:
        return self.generate_streaming(prompts, params, adapters)

    def generate_streaming(self, prompts, params=None, adapters=None, on_text=None,
                           **extra) -> list[Generation]:
        """Every prompt submitted at once (one continuous batch); ``on_text`` as in the
        base class, called from the engine's loop thread as tokens arrive."""
        if extra:
            raise ExpertError(f"vLLM engine: unsupported arguments {sorted(extra)}")
        adapters = list(adapters or [None] * len(prompts))

        def sink(row):
            return None if on_text is None else (lambda delta: on_text(row, delta))

        requests = [(p, params or GenerationParams(), a, sink(i))
                    for i, (p, a) in enumerate(zip(prompts, adapters, strict=True))]
        return list(self._call(self._run_all(requests)))

    async def agenerate_many(self, requests: Sequence[tuple]) -> list:
        """Requests from an async caller on another loop (a pool replica), each
        ``(prompt, params, adapter, on_text)``, handed to the engine's loop together (one
        hop between threads for a pool call's rows, not one per row); each joins the
        running batch at once, ``on_text(delta)`` getting its text as it grows. Each one's
        :class:`Generation`, or the exception that stopped it."""
        return await self._on_loop(self._run_all(requests, return_exceptions=True))

    async def _run_all(self, requests: Sequence[tuple], return_exceptions: bool = False):
        """Every request at once, on the engine's loop."""
        return await asyncio.gather(*(self._generate(*one) for one in requests),
                                    return_exceptions=return_exceptions)

    async def _on_loop(self, coroutine):
        """``coroutine``'s result, run on the engine's loop thread."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return await asyncio.wrap_future(future)
        except asyncio.CancelledError:
            future.cancel()  # the caller left: abort the request in the engine
            raise

    async def _generate(self, prompt: Prompt, params: GenerationParams, adapter: str | None,
                        on_text) -> Generation:
        chooses = self._tool_choice_auto(params, on_text)
        ids = encode_prompt(self.tokenizer, prompt, params.tools if chooses else None)
        if len(ids) + 1 > self.max_model_len:
            raise PromptTooLongError(
                f"the prompt has {len(ids)} tokens; this model's context is "
                f"{self.max_model_len} tokens (prompt and answer together)")
        lora = self._lora(adapter)
        request_id = f"conclave-{next(self._requests)}"
        text, tokens, finish = [], [], "length"
        logprobs = [] if params.logprobs is not None else None
        sampling = self._sampling(params, len(ids), on_text)
        async for out in self._engine.generate({"prompt_token_ids": ids}, sampling,
                                               request_id, lora_request=lora):
            piece = out.outputs[0]
            tokens += piece.token_ids
            if logprobs is not None and piece.logprobs:
                logprobs += self._token_logprobs(piece.token_ids, piece.logprobs,
                                                 params.logprobs)
            if piece.text:
                text.append(piece.text)
                if on_text is not None:
                    on_text(piece.text)
            finish = "stop" if piece.finish_reason == "stop" else "length"
        out = Generation("".join(text), len(ids), len(tokens), finish, logprobs=logprobs)
        if chooses:
            out.text, out.tool_calls = self.tool_parser.parse(out.text, params.tools)
        return out

    def _tool_choice_auto(self, params: GenerationParams, on_text) -> bool:
        """Whether the model chooses whether to call a tool (``tool_choice: auto``): then
        the prompt carries the tools and the tool parser reads the calls from the text."""
        if not params.tools or params.tool_choice != "auto":
            return False
        if self.tool_parser is None:
            raise UnsupportedFeatureError(
                f"tool_choice 'auto' needs the tool parser of {self.model_name!r}'s model "
                "family: set tool_parser on its expert (e.g. hermes), or force a call with "
                "tool_choice 'required' or a named function")
        if on_text is not None:
            raise UnsupportedFeatureError("tool_choice 'auto' is not streamed: ask without "
                                          "stream, or force the call")
        return True

    def _token_logprobs(self, token_ids, steps, top: int) -> list[dict]:
        """OpenAI-style logprobs of the new tokens: the chosen one and the ``top`` best."""
        def entry(token_id, logprob):
            return {"token": self.tokenizer.decode([token_id]), "logprob": logprob.logprob}

        return [{**entry(token_id, step[token_id]),
                 "top_logprobs": [entry(t, lp) for t, lp in
                                  sorted(step.items(), key=lambda kv: kv[1].rank)][:top]}
                for token_id, step in zip(token_ids, steps, strict=False)]

    def _sampling(self, params: GenerationParams, prompt_tokens: int, on_text=None):
        """vLLM's sampling parameters. A streamed request gets each step's new text
        (``DELTA``); any other only its finished output (``FINAL_ONLY``: no output object,
        queue hand-off and wake-up per token in this process, the same text)."""
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        kind = RequestOutputKind.FINAL_ONLY if on_text is None else RequestOutputKind.DELTA
        room = self.max_model_len - prompt_tokens
        return SamplingParams(
            max_tokens=max(1, min(params.max_tokens, room)),
            temperature=params.temperature, top_p=params.top_p, seed=params.seed,
            stop=list(params.stop) or None, output_kind=kind,
            structured_outputs=structured_outputs(params), logprobs=params.logprobs,
        )

    def _lora(self, adapter: str | None):
        if adapter is None:
            return None
        request = self._adapters.get(adapter)
        if request is None:
            raise ExpertError(f"adapter {adapter!r} is not loaded on {self.model_name!r}")
        return request

    # -- health and resources ---------------------------------------------------------------

    @property
    def errored(self) -> bool:
        """Whether the engine process died (the engine cannot serve until restarted)."""
        return self._engine is None or self._engine.errored

    def restart(self) -> None:
        """Start a new engine process in place of a dead one (adapters stay registered;
        vLLM loads them again on first use). Concurrent callers restart it once."""
        with self._restart_lock:
            if not self.errored:
                return
            self.restarting = True
            try:
                old, self._engine = self._engine, None
                if old is not None:
                    self._loop.call_soon_threadsafe(old.shutdown)
                self._engine, _ = self._call(self._start(self._args))
                self.restarts += 1
            finally:
                self.restarting = False

    def close(self) -> None:
        """Stop the engine process and the loop thread. Idempotent."""
        engine, self._engine = getattr(self, "_engine", None), None
        if engine is not None and self._loop.is_running():
            async def shutdown():
                engine.shutdown()

            self._call(shutdown())  # waits: no engine process outlives close()
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)

    def _call(self, coro):
        """Run ``coro`` on the engine's loop and wait for it (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()


def structured_outputs(params: GenerationParams):
    """vLLM's guided decoding for ``response_format`` or a forced tool call (None when the
    output is free, as with ``tool_choice`` ``auto``)."""
    from vllm.sampling_params import StructuredOutputsParams

    fmt = params.response_format or {}
    if fmt.get("type") == "json_object":
        return StructuredOutputsParams(json_object=True)
    if fmt.get("type") == "json_schema":
        schema = (fmt.get("json_schema") or {}).get("schema")
        if not isinstance(schema, dict):
            raise UnsupportedFeatureError("response_format json_schema needs json_schema.schema")
        return StructuredOutputsParams(json=schema)
    if params.tools and params.tool_choice not in (None, "none", "auto"):
        return StructuredOutputsParams(json=tool_call_schema(params.tools, params.tool_choice))
    return None


def tool_call_schema(tools: list[dict], tool_choice: str | dict) -> dict:
    """The JSON a forced tool call must be, built by vLLM's OpenAI server's own code: for a
    named function its parameters; for ``required`` a non-empty list of {name, parameters}."""
    from vllm.entrypoints.openai.chat_completion.protocol import (
        ChatCompletionNamedToolChoiceParam,
        ChatCompletionToolsParam,
    )
    from vllm.tool_parsers.utils import get_json_schema_from_tools

    if not isinstance(tool_choice, dict) and tool_choice != "required":
        raise UnsupportedFeatureError(f"tool_choice must be 'none', 'auto', 'required' or "
                                      f"a named function, not {tool_choice!r}")
    try:
        choice = (ChatCompletionNamedToolChoiceParam.model_validate(tool_choice)
                  if isinstance(tool_choice, dict) else tool_choice)
        return get_json_schema_from_tools(
            choice, [ChatCompletionToolsParam.model_validate(tool) for tool in tools])
    except Exception as err:  # pydantic's, vLLM's VLLMValidationError or ValueError
        raise UnsupportedFeatureError(f"tools/tool_choice: {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]
