"""The generation contract every engine implements (HF transformers, LoRA, mixtures).

A prompt is either plain text or a list of chat messages (``{"role", "content"}``).
``adapters`` gives, per row, the LoRA adapter to use; ``None`` is the base model
(the "null adapter"), so one batch may mix adapters and the base.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

Prompt = str | list[dict]
# ``sink(row, delta)``: called from the generating thread as row ``row``'s text grows; the
# deltas of a row, joined, are exactly that row's ``Generation.text``.
TextSink = Callable[[int, str], None]


@dataclass
class GenerationParams:
    """Per-call sampling options. ``temperature == 0`` is greedy."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None


@dataclass
class Generation:
    """One row's output."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str = "length"  # "stop" when a stop string or EOS ended it
    trace: list | None = None  # per-token routing trace (mixtures), when asked for
    no_record: bool = False  # a replay engine had no recorded answer for this prompt


class GenerationEngine(ABC):
    """A loaded model that generates for a batch of prompts."""

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
