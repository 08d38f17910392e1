"""The offline batch job: a JSONL file of queries in, one answer line per query out.

Per chunk of queries: route them all (the router consults its pattern cache first), plan
the work by expert (:class:`~routing.planner.BatchPlanner`), run every expert once, run the
aggregator pass, write one line per query. Lines are flushed chunk by chunk, so a rerun
skips the ids already in OUT and carries on (resumable).

Input lines are ``{"id", "text", ...}``; extra fields are copied to the output. A bad line
(not JSON, not an object, no id, empty text, an id seen before) is reported with its line
number and skipped; the others still run. Output lines add ``answer``, ``experts``,
``weights``, ``aggregator``, ``mode``, ``cached`` (routing came from the pattern cache),
``answer_cached`` and ``timing``: the chunk's stage wall times in seconds (shared by every
row of that chunk, whose size is ``timing.chunk``).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from routing.aggregate import Aggregator, Chooser, apply_chooser, synthesis_prompt, texts_by_row
from routing.errors import RoutingError
from routing.options import RouteOptions
from routing.planner import BatchPlanner, PlanRunner, Step
from routing.selection import Decision

log = logging.getLogger(__name__)


@dataclass
class Query:
    """One valid input line."""

    line: int
    record: dict

    @property
    def id(self) -> str:
        return str(self.record["id"])

    @property
    def text(self) -> str:
        return self.record["text"]


@dataclass
class BatchReport:
    """What a run did. ``problems``: ``"line N: why"`` for skipped input lines and
    ``"id X: why"`` for queries that failed (not written, so a rerun retries them)."""

    read: int = 0
    already_done: int = 0
    written: int = 0
    loads: int = 0
    problems: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


def read_queries(path: str | Path, report: BatchReport) -> list[Query]:
    """The valid queries of a JSONL file; bad lines go to ``report.problems``."""
    queries: list[Query] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            problem, record = _parse(line)
            if problem is None and str(record["id"]) in seen:
                problem = f"id {record['id']!r} already appeared above"
            if problem is not None:
                report.problems.append(f"line {number}: {problem}")
                continue
            seen.add(str(record["id"]))
            queries.append(Query(number, record))
    report.read = len(queries)
    return queries


def _parse(line: str) -> tuple[str | None, dict]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as err:
        return f"not JSON ({err.msg})", {}
    if not isinstance(record, dict):
        return "not a JSON object", {}
    if not isinstance(record.get("id"), str | int) or isinstance(record.get("id"), bool):
        return "needs an 'id' (string or integer)", {}
    if not isinstance(record.get("text"), str) or not record["text"].strip():
        return "needs a non-empty 'text' string", {}
    return None, record


def done_ids(path: str | Path) -> set[str]:
    """Ids already written to OUT. A torn last line (a run killed mid-write) is cut off."""
    path = Path(path)
    if not path.exists():
        return set()
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    if lines and lines[-1].strip():  # no final newline: the last write was cut short
        path.write_bytes(b"\n".join(lines[:-1]) + (b"\n" if len(lines) > 1 else b""))
        lines = lines[:-1]
    ids = set()
    for line in lines:
        try:
            ids.add(str(json.loads(line)["id"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            continue
    return ids


def pending(in_path: str | Path, out_path: str | Path) -> tuple[list[Query], BatchReport]:
    """The valid queries of ``in_path`` whose ids are not in ``out_path`` yet, and a report
    holding the bad lines and how many were already done."""
    report = BatchReport()
    queries = read_queries(in_path, report)
    done = done_ids(out_path)
    todo = [q for q in queries if q.id not in done]
    report.already_done = len(queries) - len(todo)
    return todo, report


class BatchJob:
    """Routes, plans, runs and aggregates JSONL queries (see module doc).

    ``router``: anything with ``route(texts, options) -> list[Decision]``;
    ``runner``: a :class:`PlanRunner` on the expert pool; ``answers``: a pattern cache
    consulted for final answers when its ``store_answers`` is on, keyed by the routing
    options, the aggregation mode and the runner's sampling parameters (an answer made
    under others is never reused); ``version()`` the registry version for that cache;
    ``choose``: sets each decision's ``aggregator`` (e.g. the choice stored by ``conclave
    aggregators select``, :func:`routing.aggregate.choose_aggregator`)."""

    def __init__(self, router, planner: BatchPlanner, runner: PlanRunner,
                 aggregator: Aggregator | None = None, *, options: RouteOptions | None = None,
                 answers=None, version: Callable[[], object] = lambda: 0,
                 choose: Chooser | None = None, chunk_size: int = 256, progress: bool = True):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be at least 1, got {chunk_size}")
        self.router, self.planner, self.runner = router, planner, runner
        self.aggregator = aggregator or Aggregator()
        self.options, self.answers, self.version = options, answers, version
        self.choose = choose
        self.chunk_size, self.progress = chunk_size, progress
        # What a stored answer must have been made under to be served again.
        self._answer_scope = ((options or RouteOptions()).model_copy(
            update={"aggregation": self.aggregator.mode}), runner.params.model_dump())

    def run(self, in_path: str | Path, out_path: str | Path) -> BatchReport:
        """Answer every query of ``in_path`` not yet in ``out_path`` (appended)."""
        todo, report = pending(in_path, out_path)
        return self.run_queries(todo, out_path, report)

    def run_queries(self, todo: list[Query], out_path: str | Path,
                    report: BatchReport | None = None) -> BatchReport:
        """Answer ``todo`` (from :func:`pending`), appending to ``out_path``."""
        report = report or BatchReport(read=len(todo))
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        with open(out_path, "a", encoding="utf-8") as out:
            for chunk in _chunks(todo, self.chunk_size):
                for line in self._chunk(chunk, report):
                    out.write(json.dumps(line, ensure_ascii=False) + "\n")
                    report.written += 1
                out.flush()
        return report

    def _chunk(self, chunk: list[Query], report: BatchReport) -> list[dict]:
        clock = time.perf_counter()
        decisions = self._route(chunk, report)
        kept = [(q, d) for q, d in zip(chunk, decisions, strict=True) if d is not None]
        timing = {"route_s": time.perf_counter() - clock}
        cached = {q.id: self._cached_answer(q) for q, _ in kept}
        lines = {q.id: self._line(q, d, None, cached[q.id]) for q, d in kept if cached[q.id]}
        lines.update(self._answer([(q, d) for q, d in kept if cached[q.id] is None],
                                  report, timing))
        timing["chunk"] = len(chunk)
        for line in lines.values():
            line["timing"] = timing
        return [lines[q.id] for q in chunk if q.id in lines]  # input order

    def _route(self, chunk: list[Query], report: BatchReport) -> list[Decision | None]:
        texts = [q.text for q in chunk]
        with self._bar(len(chunk), "route") as bar:
            try:
                decisions = list(self.router.route(texts, self.options))
            except RoutingError:  # find the bad query, keep the others
                decisions = [self._route_one(q, report) for q in chunk]
            bar.update(len(chunk))
        if self.choose is not None:
            apply_chooser([d for d in decisions if d is not None], self.choose)
        return decisions

    def _route_one(self, query: Query, report: BatchReport) -> Decision | None:
        try:
            return self.router.route([query.text], self.options)[0]
        except RoutingError as err:
            report.problems.append(f"id {query.id!r} (line {query.line}): {err}")
            return None

    def _answer(self, rows: list[tuple[Query, Decision]], report: BatchReport,
                timing: dict) -> dict[str, dict]:
        timing.update(experts_s=0.0, aggregate_s=0.0)
        if not rows:
            return {}
        queries, decisions = [q for q, _ in rows], [d for _, d in rows]
        texts = [q.text for q in queries]
        assigned = self.aggregator.assign(texts, decisions,
                                          [q.record.get("domain") for q in queries])
        plan = self.planner.plan([d.experts for d in decisions], assigned,
                                 resident=self._resident())
        report.loads += plan.loads
        failed: dict[str, str] = {}
        clock = time.perf_counter()
        prompts = {t: _user(texts[t[0]]) for step in plan.experts for t in step.tasks}
        answers = self._run(plan.experts, prompts, "experts", failed)
        timing["experts_s"] = time.perf_counter() - clock
        decisions = [_answered(d, row, answers) for row, d in enumerate(decisions)]
        clock = time.perf_counter()
        synth_prompts = {(row, name): synthesis_prompt(
            texts[row], texts_by_row(answers, row, decisions[row].experts))
            for step in plan.aggregate for row, name in step.tasks if decisions[row].experts}
        synthesized = self._run(plan.aggregate, synth_prompts, "aggregate", failed)
        timing["aggregate_s"] = time.perf_counter() - clock
        report.problems += [f"engine {key!r} failed: {why}" for key, why in failed.items()]
        lines = {}
        for row, (query, decision) in enumerate(zip(queries, decisions, strict=True)):
            if decision.experts:
                lines[query.id] = self._finish(row, query, decision, answers, synthesized,
                                               assigned[row])
            else:
                report.problems.append(f"id {query.id!r} (line {query.line}): every expert "
                                       "failed; not written, a rerun retries it")
        return lines

    def _finish(self, row: int, query: Query, decision: Decision, answers: dict,
                synthesized: dict, aggregator: str | None) -> dict:
        responses = texts_by_row(answers, row, decision.experts)
        synth = synthesized.get((row, aggregator)) if aggregator else None
        result = self.aggregator.finish(query.text, decision, responses,
                                        None if synth is None else synth.text, aggregator)
        if self.answers is not None:
            self.answers.store_answer(query.text, self.version(), *self._answer_scope,
                                       result.answer)
        return self._line(query, decision, result, None)

    def _line(self, query: Query, decision: Decision, result, cached_answer) -> dict:
        line = dict(query.record)
        line.update(answer=cached_answer if result is None else result.answer,
                    experts=decision.experts, weights=decision.weights,
                    aggregator=None if result is None else result.aggregator,
                    mode="cached" if result is None else result.mode,
                    cached=decision.cached, answer_cached=result is None)
        return line

    def _cached_answer(self, query: Query) -> str | None:
        if self.answers is None:
            return None
        return self.answers.lookup_answer(query.text, self.version(), *self._answer_scope)

    def _run(self, steps, prompts: dict, stage: str, failed: dict) -> dict:
        # Rows whose experts all failed have no aggregator prompt: leave them out.
        steps = [Step(s.key, [t for t in s.tasks if t in prompts], s.load) for s in steps]
        steps = [s for s in steps if s.tasks]
        with self._bar(len(prompts), stage) as bar:
            return self.runner.run(steps, prompts, progress=bar.update, errors=failed)

    def _resident(self) -> Sequence[str]:
        resident = getattr(self.runner.pool, "resident", None)
        return resident() if callable(resident) else ()

    def _bar(self, total: int, stage: str):
        from tqdm import tqdm

        return tqdm(total=total, desc=stage, unit="q" if stage == "route" else "answer",
                    disable=not self.progress, leave=False)


def _answered(decision: Decision, row: int, answers: dict) -> Decision:
    """The decision restricted to the experts that did answer this row."""
    keep = [i for i, name in enumerate(decision.experts) if (row, name) in answers]
    if len(keep) == len(decision.experts):
        return decision
    return replace(decision, experts=[decision.experts[i] for i in keep],
                   weights=[decision.weights[i] for i in keep])


def _user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def _chunks(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]
