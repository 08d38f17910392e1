"""Routing cost as the work grows (issue 22): latency and memory of routing against the
number of experts (pilots, RouterRetriever) and the size of the kNN index (flat, ivf, hnsw
and the kind ``auto`` picks), top-1 agreement of each approximate index with the exact
one, and the time to add and remove one expert.

Queries are synthetic vectors, not embedded text: the encoder's cost (measured by
bench/routing_overhead.py) is left out so the figures are the strategy's and the index's
own. Embeddings are a normalised Gaussian mixture in 384 dimensions (all-MiniLM-L6-v2's
width): clusters of Dirichlet-weighted sizes, spread along a 32-dimensional latent
subspace plus isotropic noise, so a query's nearest stored row has cosine ~0.7 as near
questions do, and approximate search has structure to exploit (see ``clustered``).

    .venv/bin/python bench/routing_scale.py [--quick] [--experts 10,100] [--rows 10000]
        [--kinds flat,ivf,hnsw] [--hnsw-max-rows 100000] [--probes 8,32] [--json FILE]

Prints a table; ``--json FILE`` writes ``rows`` (one dict per configuration) and the
headline figures, for the kind auto picks at the largest row count: ``knn_1m_p99_ms`` (the
worse of one-at-a-time and batch-of-32 p99: in effect the whole batch's),
``knn_1m_single_p99_ms`` (a query alone), ``knn_1m_batch_p99_ms`` and
``knn_1m_batch_p99_per_query_ms`` (that over 32), ``top1_agreement_1m`` (nearest row as
exact search's), ``top1_expert_agreement_1m`` (top expert of the k=100 vote as over exact
search), ``auto_kind_1m``; ``experts_1000_p99_ms`` (pilots, worse of the two). Latency is
wall time per call: a query routed alone waits one call, a query in a batch of 32 waits for
the whole batch. ``--probes 8,16,..`` adds an IVF's agreement and latency at each probe
count (rows of section ``knn-sweep``).
"""

from __future__ import annotations

import gc
import json
import math
import resource
import time
from pathlib import Path

import click
import numpy as np

DIM, BATCH, LATENT, DOMAINS = 384, 32, 32, 14
SPREAD, NOISE = 0.8, 0.4  # norms of the latent and the isotropic noise (a centre's: 1)
EXPERTS, ROWS, KINDS = (10, 100, 1_000, 10_000), (10_000, 100_000, 1_000_000), (
    "flat", "ivf", "hnsw")


def clustered(n: int, seed: int = 0, clusters: int | None = None,
              chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """``n`` unit vectors from a Gaussian mixture and their cluster labels; ``clusters``
    defaults to one per 500 rows (at least 16), built in chunks to bound memory."""
    rng = np.random.default_rng(seed)
    clusters = clusters or max(16, n // 500)
    centres = rng.standard_normal((clusters, DIM), dtype=np.float32) / math.sqrt(DIM)
    basis = SPREAD * rng.standard_normal((LATENT, DIM), dtype=np.float32) / math.sqrt(
        LATENT * DIM)
    labels = rng.choice(clusters, n, p=rng.dirichlet(np.ones(clusters)))
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, chunk):
        part = labels[start: start + chunk]
        x = centres[part] + rng.standard_normal((len(part), LATENT), dtype=np.float32) @ basis
        x += NOISE * rng.standard_normal(x.shape, dtype=np.float32) / math.sqrt(DIM)
        out[start: start + chunk] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out, labels


def outcome_table(labels: np.ndarray, experts: int, seed: int, prefix: str = "q",
                  names: list[str] | None = None):
    """0/1 results drawn from random per-cluster skills; question ids ``{prefix}{i}``."""
    from routing.outcomes import OutcomeTable

    rng = np.random.default_rng(seed)
    skill = rng.uniform(0.1, 0.9, (labels.max() + 1, experts)).astype(np.float32)
    scores = (rng.random((len(labels), experts), dtype=np.float32) < skill[labels])
    ids = [f"{prefix}{i}" for i in range(len(labels))]
    return OutcomeTable(ids=ids, texts=ids, domains=[f"d{c}" for c in labels],
                        experts=names or [f"x{j}" for j in range(experts)],
                        scores=scores.astype(np.float32))


def rss_mb() -> float:
    """This process's resident memory now (MB)."""
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * resource.getpagesize() / 2**20


def latency(strategy, queries: np.ndarray, single: int) -> dict:
    """p50/p99 wall ms of ``score`` in batches of :data:`BATCH` and one query at a time."""
    out = {}
    for mode, size, count in (("batch", BATCH, len(queries)), ("single", 1, single)):
        strategy.score(["q"] * size, queries[:size])  # warm-up (and any lazy build)
        ms = []
        for i in range(0, count - size + 1, size):
            start = time.perf_counter()
            strategy.score(["q"] * size, queries[i: i + size])
            ms.append(1e3 * (time.perf_counter() - start))
        out[f"{mode}_p50_ms"], out[f"{mode}_p99_ms"] = np.percentile(ms, [50, 99]).tolist()
    out["batch_per_query_ms"] = out["batch_p50_ms"] / BATCH
    out["batch_p99_per_query_ms"] = out["batch_p99_ms"] / BATCH
    out["p99_ms"] = max(out["batch_p99_ms"], out["single_p99_ms"])
    return out


def change_cost(strategy, table, embeddings: np.ndarray, probe: np.ndarray) -> dict:
    """Seconds to add one expert (its own questions) and to remove it, each through the
    next routed query, so a lazily rebuilt index is paid for where it is caused."""
    start = time.perf_counter()
    strategy.add_expert(table.experts[0], table, embeddings)
    strategy.score(["q"], probe)
    added = time.perf_counter() - start
    start = time.perf_counter()
    strategy.remove_expert(table.experts[0])
    strategy.score(["q"], probe)
    return {"add_expert_s": added, "remove_expert_s": time.perf_counter() - start}


def fitted(name: str, options: dict, table, embeddings: np.ndarray, probe: np.ndarray):
    """A strategy fitted on ``table``, the seconds to fit it and build its index (through
    the first routed query: what the index cost to rebuild before updates in place), and
    the resident memory that added (MB)."""
    from routing.strategies import make_strategy

    gc.collect()
    before, start = rss_mb(), time.perf_counter()
    strategy = make_strategy(name, options)
    strategy.fit(table, embeddings)
    strategy.score(["q"], probe)
    return strategy, time.perf_counter() - start, rss_mb() - before


def expert_rows(sizes, queries: int, single: int, questions: int) -> list[dict]:
    """Pilots against the number of experts, on ``questions`` validation questions (in
    :data:`DOMAINS` clusters, like MMLU-Pro's subjects)."""
    data, labels = clustered(questions + 500 + queries, seed=1, clusters=DOMAINS)
    emb, extra_emb, queries = data[:questions], data[questions: questions + 500], data[-queries:]
    labels, extra_labels = labels[:questions], labels[questions: questions + 500]
    rows = []
    for count in sizes:
        table = outcome_table(labels, count, seed=count)
        strategy, build_s, mem = fitted("pilots", {}, table, emb, queries[:1])
        row = {"section": "experts", "strategy": "pilots", "experts": count,
               "index_rows": len(strategy._index), "build_s": build_s, "rss_delta_mb": mem}
        row |= latency(strategy, queries, single)
        new = outcome_table(extra_labels, 1, seed=7, prefix="new", names=["newcomer"])
        row |= change_cost(strategy, new, extra_emb, queries[:1])
        rows.append(row)
        click.echo(_line(row), err=True)
        del strategy, table
    return rows


def agreement(strategy, exact: dict | None, queries: np.ndarray) -> dict:
    """Top-1 agreement with the exact index: the share of queries whose nearest stored row
    is the exact index's (``top1_agreement``), and whose top expert, as the strategy's k=100
    vote picks it, is the one it picks over the exact index (``top1_expert_agreement``)."""
    ids, _ = strategy._index.search(queries, 1)
    top1 = [hit[0] if hit else None for hit in ids]
    experts = strategy.score(["q"] * len(queries), queries).values.argmax(axis=1)
    if exact is None:
        return {"top1": top1, "experts": experts}
    return {"top1_agreement": float(np.mean([a == b for a, b in zip(top1, exact["top1"],
                                                                     strict=True)])),
            "top1_expert_agreement": float(np.mean(experts == exact["experts"]))}


def probe_sweep(strategy, exact: dict, asked: np.ndarray, single: int, probes) -> list[dict]:
    """An IVF's agreement and latency at each probe count in ``probes`` (set on the built
    FAISS index; the plan's own count is put back after)."""
    index, rows = strategy._index._index, []
    planned = index.nprobe
    for nprobe in (p for p in probes if p <= strategy._index.plan.nlist):
        index.nprobe = nprobe
        row = {"section": "knn-sweep", "strategy": "knn", "rows": len(strategy._index),
               "kind": "ivf", "auto": False, "nlist": strategy._index.plan.nlist,
               "nprobe": nprobe} | agreement(strategy, exact, asked)
        rows.append(row | latency(strategy, asked, single))
        click.echo(_line(rows[-1]), err=True)
    index.nprobe = planned
    return rows


def knn_rows(sizes, kinds, queries: int, single: int, experts: int,
             hnsw_max: int, probes=()) -> list[dict]:
    """kNN (k=100) against the index size, for each kind (hnsw up to ``hnsw_max`` rows: its
    graph takes minutes to build past that on 2 cores); agreement against flat; for ivf, a
    sweep of the probe count over ``probes`` too."""
    from routing.index import plan_index

    rows = []
    for n in sizes:
        data, labels = clustered(n + queries + 1_000, seed=n)
        emb, asked, extra = data[:n], data[n: n + queries], data[-1_000:]
        table = outcome_table(labels[:n], experts, seed=n)
        new = outcome_table(labels[-1_000:], 1, seed=n + 1, prefix="new", names=["newcomer"])
        exact, auto = None, plan_index("auto", n).kind
        for kind in sorted(kinds, key=lambda k: k != "flat"):  # flat first: the reference
            if kind == "hnsw" and n > hnsw_max:
                continue
            strategy, build_s, mem = fitted("knn", {"index_kind": kind}, table, emb, asked[:1])
            if kind == "flat":
                exact = agreement(strategy, None, asked)
            row = {"section": "knn", "strategy": "knn", "rows": n, "kind": kind,
                   "auto": kind == auto, "build_s": build_s, "rss_delta_mb": mem,
                   "plan": vars(strategy._index.plan)}
            row |= agreement(strategy, exact, asked) if exact else {}
            row |= latency(strategy, asked, single)
            row |= change_cost(strategy, new, extra, asked[:1])
            rows.append(row)
            click.echo(_line(row), err=True)
            if probes and strategy._index.plan.kind == "ivf":
                rows += probe_sweep(strategy, exact, asked, single, probes)
            del strategy
            gc.collect()
        del data, emb, table
    return rows


def _line(row: dict) -> str:
    agree = [row.get(f"top1{what}_agreement") for what in ("", "_expert")]
    agree = " ".join("  -  " if a is None else f"{a:5.3f}" for a in agree)
    if row["section"] == "knn-sweep":
        what = f"  ivf nlist={row['nlist']:>5d} nprobe={row['nprobe']:>4d}"
    elif row["section"] == "knn":
        what = f"knn {row['kind']:5s}{'*' if row['auto'] else ' '} rows={row['rows']:>9,d}"
    else:
        what = f"pilots      experts={row['experts']:>7,d}"
    line = (f"{what} single p50/p99 {row['single_p50_ms']:7.2f}/{row['single_p99_ms']:7.2f}"
            f"  batch32 p50/p99 {row['batch_p50_ms']:7.2f}/{row['batch_p99_ms']:7.2f}"
            f" ({row['batch_per_query_ms']:5.2f}/{row['batch_p99_per_query_ms']:5.2f} per q)"
            f"  agree row/expert {agree}")
    if "build_s" not in row:
        return line
    return (f"{line}  build {row['build_s']:7.2f}s  add {row['add_expert_s']:6.3f}s"
            f" rm {row['remove_expert_s']:6.3f}s  rss +{row['rss_delta_mb']:7.1f}MB")


def headline(rows: list[dict]) -> dict:
    """The figures the issue names, from the largest sizes measured."""
    knn = [r for r in rows if r["section"] == "knn" and r["auto"]]
    pilots = [r for r in rows if r["section"] == "experts"]
    top = max(knn, key=lambda r: r["rows"], default=None)
    at_1000 = next((r for r in pilots if r["experts"] == 1000), None)
    return {"knn_1m_p99_ms": top and top["p99_ms"], "knn_rows_measured": top and top["rows"],
            "knn_1m_single_p99_ms": top and top["single_p99_ms"],
            "knn_1m_batch_p99_ms": top and top["batch_p99_ms"],
            "knn_1m_batch_p99_per_query_ms": top and top["batch_p99_per_query_ms"],
            "top1_agreement_1m": top and top.get("top1_agreement"),
            "top1_expert_agreement_1m": top and top.get("top1_expert_agreement"),
            "auto_kind_1m": top and top["kind"],
            "experts_1000_p99_ms": at_1000 and at_1000["p99_ms"]}


def _sizes(text: str) -> tuple[int, ...]:
    return tuple(int(s.replace("_", "")) for s in text.split(",") if s)


@click.command()
@click.option("--experts", default=",".join(map(str, EXPERTS)), show_default=True,
              help="Panel sizes for pilots (comma separated; empty: skip).")
@click.option("--rows", default=",".join(map(str, ROWS)), show_default=True,
              help="kNN index sizes (comma separated; empty: skip).")
@click.option("--kinds", default=",".join(KINDS), show_default=True, help="Index kinds.")
@click.option("--queries", default=1024, show_default=True, help="Queries (batches of 32).")
@click.option("--single", default=256, show_default=True, help="Of them, routed alone.")
@click.option("--questions", default=2000, show_default=True,
              help="Validation questions behind the pilots.")
@click.option("--hnsw-max-rows", "hnsw_max", default=100_000, show_default=True,
              help="Largest kNN size hnsw is built at.")
@click.option("--probes", default="", show_default=True,
              help="IVF probe counts to sweep at each size (comma separated; empty: none).")
@click.option("--quick", is_flag=True, help="Smoke test: 10 experts, 2k rows, few queries.")
@click.option("--json", "json_path", default=None, help="Write the figures here.")
def main(experts: str, rows: str, kinds: str, queries: int, single: int, questions: int,
         hnsw_max: int, probes: str, quick: bool, json_path: str | None) -> None:
    """Measure routing latency, memory and update cost as experts and kNN rows grow."""
    if quick:
        experts, rows, queries, single, questions = "10", "2000", 64, 8, 300
        probes = probes or "4,8"
    out = expert_rows(_sizes(experts), queries, single, questions)
    out += knn_rows(_sizes(rows), kinds.split(","), queries, single, 10, hnsw_max,
                    _sizes(probes))
    click.echo("\n".join(_line(r) for r in out))
    figures = headline(out)
    click.echo(json.dumps(figures))
    if json_path:
        Path(json_path).write_text(json.dumps({"rows": out, **figures, "queries": queries,
                                               "single": single, "dim": DIM}, indent=1))


if __name__ == "__main__":
    main()
