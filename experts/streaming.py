"""Live text from a batched ``generate``: each row's text reaches a sink while the batch
is still generating, so streaming a row never takes it out of its batch.

Where a row's text ends (first EOS, trailing padding, first stop string) is decided by
:class:`RowCut`, the one rule both the streamer and :meth:`HFEngine._finish` apply: the
concatenation of a row's deltas is then exactly the text of that row's ``Generation``.
Two things make a decoded prefix unsafe to send yet, and are held back until more tokens
(or the end) settle them: a trailing replacement char (half of a multi-byte character)
and the last ``len(longest stop) - 1`` characters (a stop string may be starting there).
A row that ends with EOS is flushed at once; the others at the batch's end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from transformers.generation.streamers import BaseStreamer

from experts.engine import TextSink

PARTIAL_CHAR = "\ufffd"  # what decoding shows for an incomplete multi-byte piece


@dataclass(frozen=True)
class RowCut:
    """How one row's new tokens become its final text."""

    decode: Callable[[list[int]], str]  # special tokens skipped
    eos: frozenset[int]
    pad: int | None
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "stop", tuple(s for s in self.stop if s))

    def token_end(self, tokens: Sequence[int]) -> tuple[int, bool]:
        """How many tokens count, and whether the row stopped (EOS, or padded after it
        finished early: generate pads rows that ended before the batch)."""
        end = len(tokens)
        while end and tokens[end - 1] == self.pad:
            end -= 1
        stopped = end < len(tokens)
        for index, token in enumerate(tokens[:end]):
            if token in self.eos:
                return index + 1, True
        return end, stopped

    def stop_at(self, text: str) -> int | None:
        """Where the first stop string starts in ``text``, or None."""
        cuts = [text.find(s) for s in self.stop if s in text]
        return min(cuts) if cuts else None

    def _decoded(self, tokens: Sequence[int]) -> tuple[str, int, bool]:
        end, stopped = self.token_end(tokens)
        return self.decode(list(tokens[:end])), end, stopped

    def text(self, tokens: Sequence[int]) -> tuple[str, int, bool]:
        """The row's text, its token count and whether it stopped (vs ran out of length)."""
        text, end, stopped = self._decoded(tokens)
        cut = self.stop_at(text)
        if cut is not None:
            text, stopped = text[:cut], True
        return text, end, stopped

    def settled(self, tokens: Sequence[int]) -> str:
        """The part of the text of a row still generating that no later token can change:
        up to the first stop string, and short of a string that may be starting."""
        text = self._decoded(tokens)[0]
        safe = len(text) - self.hold
        cut = self.stop_at(text)
        if cut is not None:  # not ``cut`` alone: a longer stop string starting
            safe = min(safe, cut)  # earlier may still complete
        while safe > 0 and text[safe - 1] == PARTIAL_CHAR:
            safe -= 1
        return text[: max(safe, 0)]

    @property
    def hold(self) -> int:
        """Trailing characters that may still turn out to begin a stop string."""
        return max((len(s) for s in self.stop), default=1) - 1


class BatchTextStreamer(BaseStreamer):
    """A transformers streamer for a whole batch: ``sink(row, delta)`` per row.

    ``generate`` calls :meth:`put` first with the prompt ids ``[rows, len]`` (skipped),
    then once per step with each row's next token (``[rows]`` or ``[rows, 1]``; rows that
    already finished get ``pad``), and :meth:`end` once at the end.
    """

    def __init__(self, cut: RowCut, rows: int, sink: TextSink):
        self.cut = cut
        self.sink = sink
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.sent = [""] * rows
        self.closed = [False] * rows  # ended with EOS (and flushed): later tokens are pads
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        step = value.reshape(-1).tolist()
        if len(step) != len(self.tokens):
            raise ValueError(f"streamer got {len(step)} tokens for {len(self.tokens)} rows")
        for row, token in enumerate(step):
            if self.closed[row]:
                continue
            self.tokens[row].append(token)
            if token in self.cut.eos:
                self._flush(row)
            else:
                self._send(row, self.cut.settled(self.tokens[row]))

    def end(self) -> None:
        for row in range(len(self.tokens)):
            if not self.closed[row]:
                self._flush(row)

    def _flush(self, row: int) -> None:
        """The row is over: send the rest of its final text."""
        self.closed[row] = True
        self._send(row, self.cut.text(self.tokens[row])[0])

    def _send(self, row: int, text: str) -> None:
        """Send what ``text`` adds to the row's text so far. Decoding more tokens only
        appends to a row's text for byte-level BPE and SentencePiece tokenizers; one that
        rewrites earlier text (``clean_up_tokenization_spaces``) would fail the join."""
        sent = self.sent[row]
        if len(text) > len(sent) and text.startswith(sent):
            self.sent[row] = text
            self.sink(row, text[len(sent):])
