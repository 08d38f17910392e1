"""``engine: replay``: a :class:`GenerationEngine` that answers with a real model's recorded
answers (an outcome folder's ``predictions.csv``), so routing can be served, measured and
demonstrated on real answers without running the models.

- A prompt holding a recorded question gets that model's recorded choice in the data's
  answer format, ``"The answer is (C)."``; a recorded question with no extracted letter
  gets a reply without one (it scores wrong, as in ``scores.csv``).
- A prompt holding no recorded question gets :data:`NO_RECORD` (never an error), and the
  row's :class:`Generation` says so (``no_record``), which the gateway counts.
- Latency (``replay.latency: true``): the batch's first tokens come after the time to first
  token, each row's last after its recorded output length (``output_chars.csv``, 4
  characters a token; else the reply's) at ``tokens_per_s``. Both default from the model's
  size in ``models.json`` (:func:`size_latency`); ``time_scale`` shrinks or stretches every
  delay. Off: answers come at once.

It is a batch engine like the HF one: the pool's batcher hands it whole batches.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from experts.engine import Generation, GenerationEngine, GenerationParams, Prompt, TextSink
from experts.replay_data import RecordedAnswers, recorded_answers
from experts.spec import ExpertSpec, ReplayOptions

CHARS_PER_TOKEN = 4
NO_RECORD = "[replay] No recorded answer: this prompt holds none of the recorded questions."
NO_LETTER = "[replay] The recorded output of this model gave no answer letter."


def answer_text(letter: str) -> str:
    """The data's answer format for one letter (MMLU-Pro's chain-of-thought ending)."""
    return f"The answer is ({letter})." if letter else NO_LETTER


def size_latency(params_b: float | None) -> tuple[float, float]:
    """(time to first token in s, tokens per s) from a model's active parameters (billions).

    A rough rule for one modern accelerator, not a measurement: prefill time grows with
    the parameters, decode is memory-bound (about 1,000 / params tokens per second, 5 to
    200). Unknown size: 0.1 s and 50 tokens/s."""
    if params_b is None or params_b <= 0:
        return 0.1, 50.0
    return 0.02 + 0.004 * params_b, min(200.0, max(5.0, 1000.0 / params_b))


@dataclass
class _Row:
    text: str
    prompt_tokens: int
    completion_tokens: int
    done_s: float  # seconds after the batch started when the row's last text is out
    no_record: bool


class ReplayEngine(GenerationEngine):
    """One model's recorded answers. ``sleep``/``clock`` are injectable for tests."""

    name = "replay"

    def __init__(self, answers: RecordedAnswers, model: str, options: ReplayOptions, *,
                 sleep: Callable[[float], None] = time.sleep,
                 clock: Callable[[], float] = time.monotonic):
        self.answers, self.model, self.options = answers, model, options
        self._sleep, self._clock = sleep, clock
        ttft, speed = size_latency(answers.sizes.get(model))
        scale = options.time_scale if options.latency else 0.0
        self.ttft_s = (options.ttft_s if options.ttft_s is not None else ttft) * scale
        speed = options.tokens_per_s if options.tokens_per_s is not None else speed
        self.s_per_token = scale / speed

    @classmethod
    def from_spec(cls, spec: ExpertSpec, **kwargs) -> ReplayEngine:
        return cls(recorded_answers(spec.replay.data), spec.replay.model, spec.replay, **kwargs)

    def generate(self, prompts: Sequence[Prompt], params: GenerationParams | None = None,
                 adapters: Sequence[str | None] | None = None) -> list[Generation]:
        return self.generate_streaming(prompts, params, adapters)

    def generate_streaming(self, prompts: Sequence[Prompt],
                           params: GenerationParams | None = None,
                           adapters: Sequence[str | None] | None = None,
                           on_text: TextSink | None = None, **extra) -> list[Generation]:
        """Every row's first word after the time to first token, the rest when the row's
        recorded output would be written."""
        started = self._clock()
        rows = [self._row(prompt) for prompt in prompts]
        if rows:
            self._wait(started, self.ttft_s)
        heads = [row.text.split(" ", 1) for row in rows]
        if on_text is not None:
            for i, head in enumerate(heads):
                on_text(i, head[0])
        for i in sorted(range(len(rows)), key=lambda i: rows[i].done_s):
            self._wait(started, rows[i].done_s)
            if on_text is not None and len(heads[i]) > 1:
                on_text(i, " " + heads[i][1])
        return [Generation(text=row.text, prompt_tokens=row.prompt_tokens,
                           completion_tokens=row.completion_tokens, finish_reason="stop",
                           no_record=row.no_record) for row in rows]

    def _row(self, prompt: Prompt) -> _Row:
        qid = self.answers.find(prompt)
        text = NO_RECORD if qid is None else answer_text(self.answers.letter(self.model, qid))
        tokens = _tokens(text)
        recorded = None if qid is None else self.answers.recorded_chars(self.model, qid)
        written = tokens if recorded is None else max(1, recorded // CHARS_PER_TOKEN)
        return _Row(text, _tokens(_prompt_text(prompt)), tokens,
                    self.ttft_s + written * self.s_per_token, qid is None)

    def _wait(self, started: float, offset_s: float) -> None:
        left = started + offset_s - self._clock()
        if left > 0:
            self._sleep(left)


def _tokens(text: str) -> int:
    return max(1, len(text) // CHARS_PER_TOKEN)


def _prompt_text(prompt: Prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(str(m.get("content", "")) for m in prompt if isinstance(m, dict))
