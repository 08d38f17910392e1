"""The generation contract every engine implements (HF transformers, LoRA, mixtures).

A prompt is either plain text or a list of chat messages (``{"role", "content"}``).
``adapters`` gives, per row, the LoRA adapter to use; ``None`` is the base model
(the "null adapter"), so one batch may mix adapters and the base. A prompt becomes the
token ids a model reads the same way for every engine (:func:`encode_prompt`): through the
tokenizer's chat template when it has one.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

Prompt = str | list[dict]
# ``sink(row, delta)``: called from the generating thread as row ``row``'s text grows; the
# deltas of a row, joined, are exactly that row's ``Generation.text``.
TextSink = Callable[[int, str], None]


# GenerationParams' constrained and extra outputs, by OpenAI field name
FEATURE_KEYS = ("response_format", "logprobs", "tools", "tool_choice")


class GenerationParams(BaseModel):
    """Sampling options, named as in the OpenAI API; ``temperature == 0`` is greedy.

    One shape from an expert's defaults (its spec's ``generation:``) through a request's
    overrides to the engine, which makes its own from it (vLLM's ``SamplingParams``,
    transformers' ``generate`` keywords). A request's overrides are the fields it *set*
    (pydantic's ``model_fields_set``); :meth:`over` lays them on an expert's defaults.
    """

    model_config = ConfigDict(extra="forbid")

    max_tokens: int = Field(64, ge=1, le=32768, description="Tokens to generate at most.")
    temperature: float = Field(0.0, ge=0.0, le=5.0, description="0 means greedy decoding.")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="Nucleus sampling mass.")
    stop: list[str] = Field(default_factory=list, description="Generation stops at any of these.")
    seed: int | None = None
    # Constrained and extra outputs, as in the OpenAI API; engines that cannot honour one
    # raise UnsupportedFeatureError (vLLM honours all): ``response_format`` is
    # {"type": "json_object"} or {"type": "json_schema", "json_schema": {"schema": ...}};
    # ``logprobs`` the number of top alternatives per token (0: the chosen token's only);
    # ``tools``/``tool_choice`` force a tool call ("required" or a named function).
    response_format: dict | None = None
    logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[dict] | None = None
    tool_choice: str | dict | None = None

    def over(self, defaults: GenerationParams) -> GenerationParams:
        """``defaults`` with the fields set here laid on top."""
        return defaults.model_copy(update=self.model_dump(exclude_unset=True))

    def without(self, *names: str) -> GenerationParams:
        """These params with ``names`` unset (the defaults they lie on apply again)."""
        return GenerationParams(**self.model_dump(exclude_unset=True, exclude=set(names)))

    def features(self) -> list[str]:
        """The constrained/extra outputs asked for, by OpenAI field name."""
        asked = {"response_format": self.response_format is not None
                 and self.response_format.get("type") != "text",
                 "logprobs": self.logprobs is not None,
                 "tools": bool(self.tools) and self.tool_choice not in (None, "none")}
        return [name for name, on in asked.items() if on]


@dataclass
class Generation:
    """One row's output."""

    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    finish_reason: str = "length"  # "stop" when a stop string or EOS ended it
    token_trace: list | None = None  # per-token routing trace (mixtures), when asked for
    # per generated token: {"token", "logprob", "top_logprobs": [{"token", "logprob"}]}
    logprobs: list[dict] | None = None
    no_record: bool = False  # a replay engine had no recorded answer for this prompt
    tool_calls: list[dict] | None = None  # OpenAI tool calls found in the text (tool parser)


class GenerationEngine(ABC):
    """A loaded model that generates for a batch of prompts."""

    # True for engines that batch concurrent requests themselves (vLLM): callers send each
    # request as its own (``agenerate_many``) instead of forming batches in front of them.
    continuous: bool = False
    # GenerationParams.features() this engine honours; others are refused, never ignored.
    supported_features: frozenset[str] = frozenset()
    name: str = "engine"

    def check_features(self, params: GenerationParams) -> None:
        """Raise :class:`UnsupportedFeatureError` for a feature this engine cannot honour."""
        missing = [f for f in params.features() if f not in self.supported_features]
        if missing:
            from experts.errors import UnsupportedFeatureError

            raise UnsupportedFeatureError(
                f"the {self.name} engine does not support {missing[0]} (serve this expert "
                "with engine: vllm)")

    @abstractmethod
    def generate(
        self,
        prompts: Sequence[Prompt],
        params: GenerationParams | None = None,
        adapters: Sequence[str | None] | None = None,
    ) -> list[Generation]:
        """One output per prompt, in order. An empty list gives an empty list."""

    def generate_streaming(
        self,
        prompts: Sequence[Prompt],
        params: GenerationParams | None = None,
        adapters: Sequence[str | None] | None = None,
        on_text: TextSink | None = None,
        **extra,
    ) -> list[Generation]:
        """:meth:`generate`, telling ``on_text`` each row's text as it grows.

        This default cannot see tokens as they come: it sends each row's whole text once
        the batch is done, so every engine honours the contract; engines that can stream
        (:class:`experts.hf_engine.HFEngine`) override it. ``extra`` goes to ``generate``
        (a mixture's ``embeddings``)."""
        outputs = self.generate(prompts, params, adapters, **extra)
        if on_text is not None:
            for row, out in enumerate(outputs):
                if out.text:
                    on_text(row, out.text)
        return outputs

    def memory_bytes(self) -> int:
        """Bytes held by the loaded weights (used by the model pool's budget)."""
        return 0

    def close(self) -> None:  # noqa: B027 (a no-op default is right for engines holding nothing)
        """Free what the engine holds. Idempotent."""


def encode_prompt(tokenizer, prompt: Prompt, tools: list[dict] | None = None) -> list[int]:
    """Token ids of one prompt; without a chat template, a plain transcript. ``tools``
    (OpenAI function tools) go to the chat template, which renders them its own way."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
    if tokenizer.chat_template:
        text = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                             tokenize=False, tools=tools)
        return tokenizer(text, add_special_tokens=False)["input_ids"]
    if not isinstance(prompt, str):
        prompt = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
    return tokenizer(prompt)["input_ids"]
