"""Recorded answers of real models, for replay experts (:mod:`experts.replay_engine`).

A replay folder is an outcome folder in the shared data format: ``questions.jsonl`` (``id``,
``text``, optional ``options``), ``predictions.csv`` (``id``, then the answer letter each
model gave; empty = none extracted), and optionally ``output_chars.csv`` (the length of
each model's recorded output) and ``models.json`` (sizes, for the latency model).

:class:`RecordedAnswers` finds the recorded question inside a prompt however it is wrapped
(a chat template, a system message holding the options, an aggregator's synthesis prompt):
texts are compared lowercased with whitespace collapsed, by a prefix index slid over the
prompt. Questions whose text is recorded several times (MMLU-Pro has 358 such texts, told
apart by their options) are told apart by how many of their options the prompt holds.
"""

from __future__ import annotations

import csv
import json
import threading
from dataclasses import dataclass, field
from pathlib import Path

from experts.errors import ExpertError

KEY_CHARS = 24  # prefix length of the index; shorter questions are keyed by their whole text


class ReplayDataError(ExpertError):
    """A replay folder or model that cannot be used; the message names it."""


def normalise(text: str) -> str:
    """Lowercase, whitespace collapsed: how recorded and served texts are compared."""
    return " ".join(str(text).lower().split())


def check_replay_source(data: str | Path, model: str) -> None:
    """Raise :class:`ReplayDataError` unless ``data`` holds questions and predictions and
    ``model`` is a column of its ``predictions.csv`` (reads the header line only)."""
    root = Path(data).expanduser()
    for name in ("questions.jsonl", "predictions.csv"):
        if not (root / name).is_file():
            raise ReplayDataError(f"replay data {str(data)!r} has no {name}")
    with (root / "predictions.csv").open(newline="") as handle:
        header = next(csv.reader(handle), [])
    if model not in header[1:]:
        raise ReplayDataError(f"replay model {model!r} is not a column of "
                              f"{root / 'predictions.csv'} (columns: {', '.join(header[1:])})")


@dataclass
class RecordedAnswers:
    """Every recorded question of one folder, and each model's answer to it."""

    root: Path
    texts: dict[str, str]  # id -> normalised question text
    options: dict[str, list[str]]  # id -> normalised options
    letters: dict[str, dict[str, str]]  # model -> id -> letter ("" = none extracted)
    output_chars: dict[str, dict[str, int]]  # model -> id -> length of the recorded output
    sizes: dict[str, float]  # model -> active parameters in billions, where known
    _by_text: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _by_key: dict[str, list[str]] = field(default_factory=dict, repr=False)
    _key_lengths: list[int] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        for qid, text in self.texts.items():
            self._by_text.setdefault(text, []).append(qid)
            self._by_key.setdefault(text[:KEY_CHARS], []).append(qid)
        self._key_lengths = sorted({len(key) for key in self._by_key}, reverse=True)

    @classmethod
    def load(cls, root: str | Path) -> RecordedAnswers:
        root = Path(root).expanduser().resolve()
        texts, options = {}, {}
        with (root / "questions.jsonl").open() as handle:
            for line in handle:
                if line.strip():
                    row = json.loads(line)
                    texts[str(row["id"])] = normalise(row["text"])
                    options[str(row["id"])] = [normalise(o) for o in row.get("options") or []]
        return cls(root, texts, options, _columns(root / "predictions.csv", str),
                   _columns(root / "output_chars.csv", _int), _sizes(root / "models.json"))

    @property
    def models(self) -> list[str]:
        return list(self.letters)

    def find(self, prompt: object) -> str | None:
        """The id of the recorded question ``prompt`` holds (plain text or chat messages),
        or None."""
        parts = [prompt] if isinstance(prompt, str) else [
            str(m.get("content", "")) for m in prompt if isinstance(m, dict)]
        hay = normalise("\n".join(parts))
        exact = [qid for part in reversed(parts) for qid in self._by_text.get(normalise(part), ())]
        if exact:  # a message that is the question itself: no search
            return self._pick(exact, hay)
        candidates: dict[str, int] = {}  # id -> length of its text (longest match wins)
        for start in range(len(hay)):
            for length in self._key_lengths:
                for qid in self._by_key.get(hay[start:start + length], ()):
                    if hay.startswith(self.texts[qid], start):
                        candidates[qid] = len(self.texts[qid])
        if not candidates:
            return None
        longest = max(candidates.values())
        return self._pick([qid for qid, n in candidates.items() if n == longest], hay)

    def _pick(self, same_text: list[str], hay: str) -> str:
        # Same text recorded several times: the one whose options the prompt holds (the
        # first recorded on a tie).
        return max(same_text, key=lambda qid: sum(o in hay for o in self.options.get(qid, [])))

    def letter(self, model: str, qid: str) -> str:
        """``model``'s recorded letter for question ``qid`` ("" when none was extracted)."""
        return self.letters.get(model, {}).get(qid, "")

    def recorded_chars(self, model: str, qid: str) -> int | None:
        return self.output_chars.get(model, {}).get(qid)


_LOADED: dict[Path, RecordedAnswers] = {}
_LOCK = threading.Lock()


def recorded_answers(root: str | Path) -> RecordedAnswers:
    """The folder's answers, read once per process: every replay expert of a pool replica
    shares one copy (the file holds every model's column)."""
    path = Path(root).expanduser().resolve()
    with _LOCK:
        if path not in _LOADED:
            _LOADED[path] = RecordedAnswers.load(path)
        return _LOADED[path]


def _columns(path: Path, convert) -> dict[str, dict[str, object]]:
    if not path.exists():
        return {}
    with path.open(newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        columns: dict[str, dict[str, object]] = {name: {} for name in header[1:]}
        for row in reader:
            for name, value in zip(header[1:], row[1:], strict=False):
                converted = convert(value)
                if converted is not None:
                    columns[name][row[0]] = converted
    return columns


def _int(value: str) -> int | None:
    return int(float(value)) if value.strip() else None


def _sizes(path: Path) -> dict[str, float]:
    if not path.exists():
        return {}
    meta = json.loads(path.read_text())
    sizes = {}
    for name, entry in meta.items():
        size = (entry or {}).get("active_params_b") or (entry or {}).get("params_b")
        if size is not None:
            sizes[name] = float(size)
    return sizes
