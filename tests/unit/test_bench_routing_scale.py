"""bench/routing_scale.py at its smallest size: it runs, prints its table and writes the
figures the issue names (a smoke test: no timing is asserted)."""

from __future__ import annotations

import json

from click.testing import CliRunner

from tests.bench_scripts import load_bench


def test_quick_run_writes_every_figure(tmp_path):
    out = tmp_path / "scale.json"
    result = CliRunner().invoke(load_bench("routing_scale").main, ["--quick", "--json", str(out)])
    assert result.exit_code == 0, result.output
    figures = json.loads(out.read_text())
    assert {"rows", "knn_1m_p99_ms", "experts_1000_p99_ms", "top1_agreement_1m",
            "auto_kind_1m", "knn_1m_single_p99_ms", "knn_1m_batch_p99_ms",
            "knn_1m_batch_p99_per_query_ms", "top1_expert_agreement_1m"} <= set(figures)
    kinds = {row["kind"] for row in figures["rows"] if row["section"] == "knn"}
    assert kinds == {"flat", "ivf", "hnsw"} and figures["auto_kind_1m"] == "flat"
    exact = next(r for r in figures["rows"] if r.get("kind") == "flat")
    assert exact["top1_agreement"] == 1.0 and exact["top1_expert_agreement"] == 1.0
    assert exact["p99_ms"] > 0
    assert figures["knn_1m_batch_p99_per_query_ms"] == figures["knn_1m_batch_p99_ms"] / 32
    assert figures["knn_1m_p99_ms"] == max(figures["knn_1m_batch_p99_ms"],
                                           figures["knn_1m_single_p99_ms"])  # unchanged
    sweep = [r for r in figures["rows"] if r["section"] == "knn-sweep"]
    assert [r["nprobe"] for r in sweep] == [4, 8]  # --quick sweeps the IVF's probes
    assert all(0 <= r["top1_expert_agreement"] <= 1 and r["single_p99_ms"] > 0 for r in sweep)
    assert all(row["add_expert_s"] >= 0 and row["remove_expert_s"] >= 0
               for row in figures["rows"] if row["section"] != "knn-sweep")
