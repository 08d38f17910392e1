"""Group a batch's work by expert, so each model is loaded once per batch.

Symbolic-MoE's systems result: answering query by query reloads models all the time;
grouping every row an expert must answer into one batched ``generate`` makes a 16-expert
panel on one GPU as fast as multi-agent baselines on four.

:class:`BatchPlanner` turns decisions (k experts per row, duplicates allowed) into a
:class:`Plan`: per *engine key* (LoRA experts on one base share one engine and one load)
the rows to answer, ordered so engines already resident run first, then the others, then
the aggregator pass. With LRU eviction under a budget of M resident models that order
loads every engine at most once per batch, and the aggregators, run last in the expert
pass, are still resident for the aggregation pass when they fit in M.
:class:`PlanRunner` executes it against a :class:`~experts.pool.ModelPool`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from experts.engine import Generation, GenerationParams, Prompt
from experts.errors import ExpertError

Task = tuple[int, str]  # (row, expert): one answer to produce


@dataclass
class Step:
    """One engine (pool key) and the tasks it answers in one batched ``generate``."""

    key: str
    tasks: list[Task]
    load: bool  # whether the pool has to load it (predicted by LRU simulation)


@dataclass
class Plan:
    """The expert pass then the aggregator pass; ``loads`` counts predicted model loads."""

    experts: list[Step] = field(default_factory=list)
    aggregate: list[Step] = field(default_factory=list)

    @property
    def loads(self) -> int:
        return sum(step.load for step in self.experts + self.aggregate)

    @property
    def expert_keys(self) -> list[str]:
        """Distinct engine keys of the expert pass, in run order."""
        return [step.key for step in self.experts]

    def summary(self) -> dict:
        """Plain figures, for logs and JSON."""
        return {"loads": self.loads, "expert_engines": len(self.experts),
                "aggregator_engines": len(self.aggregate),
                "expert_tasks": sum(len(s.tasks) for s in self.experts),
                "aggregate_tasks": sum(len(s.tasks) for s in self.aggregate)}


class BatchPlanner:
    """Plans a batch; ``key_of(expert)`` gives the engine (pool) key of an expert
    (identity by default; :func:`experts.loader.engine_key` for specs), ``max_resident``
    the pool's model budget (None: unbounded)."""

    def __init__(self, key_of: Callable[[str], str] | None = None,
                 max_resident: int | None = None):
        if max_resident is not None and max_resident < 1:
            raise ValueError(f"max_resident must be at least 1, got {max_resident}")
        self.key_of = key_of or (lambda expert: expert)
        self.max_resident = max_resident

    def plan(self, experts: Sequence[Sequence[str]],
             aggregators: Sequence[str | None] | None = None,
             resident: Sequence[str] = ()) -> Plan:
        """``experts[row]``: the experts recruited for that row (a row may name one twice;
        it is answered once). ``aggregators[row]``: the expert that synthesises that row's
        answers, or None. ``resident``: engine keys loaded now, least recently used first."""
        aggregators = list(aggregators) if aggregators is not None else [None] * len(experts)
        if len(aggregators) != len(experts):
            raise ValueError(f"{len(experts)} rows but {len(aggregators)} aggregators")
        expert_steps = self._group((row, name) for row, names in enumerate(experts)
                                   for name in dict.fromkeys(names))
        aggregate_steps = self._group((row, name) for row, name in enumerate(aggregators)
                                      if name is not None)
        lru = OrderedDict.fromkeys(resident)
        ordered = self._order(expert_steps, set(aggregate_steps), lru)
        plan = Plan()
        for key in ordered:
            plan.experts.append(Step(key, expert_steps[key], self._use(lru, key)))
        for key in self._order(aggregate_steps, set(), lru):
            plan.aggregate.append(Step(key, aggregate_steps[key], self._use(lru, key)))
        return plan

    def _group(self, tasks) -> dict[str, list[Task]]:
        steps: dict[str, list[Task]] = {}
        for row, name in tasks:
            steps.setdefault(self.key_of(name), []).append((row, name))
        return steps

    @staticmethod
    def _order(steps: Mapping[str, list[Task]], aggregator_keys: set[str],
               lru: OrderedDict) -> list[str]:
        # Resident engines first (oldest first: each is used before anything is evicted),
        # then the rest, aggregators last so they are still loaded for the aggregation pass.
        loaded = [key for key in lru if key in steps]
        rest = [key for key in steps if key not in lru]
        return (loaded + [k for k in rest if k not in aggregator_keys]
                + [k for k in rest if k in aggregator_keys])

    def _use(self, lru: OrderedDict, key: str) -> bool:
        """Touch ``key`` in the simulated LRU pool; True when that is a load."""
        if key in lru:
            lru.move_to_end(key)
            return False
        while self.max_resident is not None and len(lru) >= self.max_resident:
            lru.popitem(last=False)
        lru[key] = None
        return True


class PlanRunner:
    """Runs plan steps on a :class:`~experts.pool.ModelPool`: one batched ``generate`` per
    step (chunked by ``max_batch_size`` rows, still one load), LoRA rows with their
    adapter (``prepare(engine, expert) -> adapter name | None``, e.g. from
    :meth:`experts.loader.ExpertLoader.prepare` with the expert's spec)."""

    def __init__(self, pool, prepare: Callable[[object, str], str | None] | None = None,
                 params: GenerationParams | None = None, max_batch_size: int | None = None):
        if max_batch_size is not None and max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {max_batch_size}")
        self.pool = pool
        self.prepare = prepare or (lambda engine, expert: None)
        self.params = params or GenerationParams()
        self.max_batch_size = max_batch_size

    def run(self, steps: Sequence[Step], prompts: Mapping[Task, Prompt],
            progress: Callable[[int], None] | None = None,
            errors: dict[str, str] | None = None) -> dict[Task, Generation]:
        """Answer every task of ``steps``; ``prompts[task]`` is what it answers.
        ``progress(n)`` is called after each chunk with the number of tasks done. With an
        ``errors`` dict, an engine that fails (:class:`~experts.errors.ExpertError`) is
        recorded there (key → message) and its tasks left unanswered instead of raising."""
        out: dict[Task, Generation] = {}
        for step in steps:
            try:
                self._step(step, prompts, progress, out)
            except ExpertError as err:
                if errors is None:
                    raise
                errors[step.key] = str(err)
        return out

    def _step(self, step: Step, prompts: Mapping[Task, Prompt], progress, out: dict) -> None:
        engine = self.pool.get(step.key)
        adapters = {name: self.prepare(engine, name) for _, name in step.tasks}
        tasks = step.tasks
        if self.max_batch_size and len(tasks) > self.max_batch_size:
            # Similar lengths share a chunk: less left-padding to compute over.
            tasks = sorted(tasks, key=lambda task: _length(prompts[task]))
        # A continuous-batching engine (vLLM) takes the whole share at once and schedules it.
        size = (None if engine.continuous else self.max_batch_size) or len(tasks) or 1
        for start in range(0, len(tasks), size):
            chunk = tasks[start:start + size]
            names = [adapters[name] for _, name in chunk]
            outputs = engine.generate([prompts[task] for task in chunk], self.params,
                                      adapters=names if any(names) else None)
            out.update(zip(chunk, outputs, strict=True))
            if progress is not None:
                progress(len(chunk))


def _length(prompt: Prompt) -> int:
    if isinstance(prompt, str):
        return len(prompt)
    return sum(len(str(message.get("content", ""))) for message in prompt)


def spec_preparer(loader, lookup: Callable[[str], object]) -> Callable[[object, str], str | None]:
    """``prepare`` for :class:`PlanRunner` from an :class:`~experts.loader.ExpertLoader`
    and a spec lookup (expert id → :class:`~experts.spec.ExpertSpec`)."""
    return lambda engine, expert: loader.prepare(engine, lookup(expert))
