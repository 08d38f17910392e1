"""``conclave router train`` on a small text outcome folder (a few steps), and the router
built from the config loading those weights (routing.trained_router)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from experts.spec import ExpertSpec
from tests.unit.text_tables import EXPERTS, QUERIES, QUESTIONS


def _folder(path) -> None:
    path.mkdir()
    rows = [(domain, f"{text} (case {n})") for domain, texts in QUESTIONS.items()
            for text in texts for n in range(3)]
    with (path / "questions.jsonl").open("w") as handle:
        for i, (domain, text) in enumerate(rows):
            handle.write(json.dumps({"id": f"q{i}", "domain": domain, "text": text}) + "\n")
    names = list(EXPERTS.values())
    lines = ["id," + ",".join(names)]
    lines += [f"q{i}," + ",".join("1" if EXPERTS[d] == n else "0" for n in names)
              for i, (d, _) in enumerate(rows)]
    (path / "scores.csv").write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from cluster.cli import main

    root = tmp_path_factory.mktemp("train")
    _folder(root / "data")
    out = root / "router"
    result = CliRunner().invoke(main, ["router", "train", str(root / "data"), "--out", str(out),
                                       "--max-steps", "40"])
    assert result.exit_code == 0, result.output
    return out, result.output


def test_router_train_writes_weights_report_and_loss_curve(trained):
    out, output = trained
    report = json.loads((out / "train.json").read_text())
    assert report["curve"] and report["best_step"] >= 1 and report["train"] + report["test"] == 72
    assert 0.0 <= report["test_top1"] <= 1.0 and "test top-1" in output
    assert (out / "router.safetensors").stat().st_size > 0
    assert (out / "loss_curve.png").stat().st_size > 0


def test_the_router_loads_trained_weights_from_the_config(trained, minilm):
    from cluster.config import ConclaveConfig
    from routing.errors import RoutingError
    from routing.options import RouteOptions
    from routing.router import build_router

    out, _ = trained
    specs = [ExpertSpec(id=name, model="org/tiny") for name in EXPERTS.values()]
    specs.append(ExpertSpec(id="chef", model="org/tiny", examples=[
        "How long should pasta boil?", "What oven heat roasts a chicken?",
        "How do I make a roux for a sauce?"]))
    config = ConclaveConfig.model_validate(
        {"routing": {"strategy": "contrastive", "trained_router": str(out)}})
    router = build_router(config, specs, None, encoder=minilm)
    strategy = router.strategies["contrastive"]
    assert strategy.train_log is None  # loaded, not trained
    assert sorted(strategy.experts) == ["chef", "lawyer", "mathy", "medic"]
    decisions = router.route([*QUERIES.values(), "How do I roast vegetables in the oven?"],
                             RouteOptions(k=1))
    assert [d.experts[0] for d in decisions] == [*QUERIES, "chef"]
    fewer = [spec for spec in specs if spec.id != "medic"]
    with pytest.raises(RoutingError, match=r"other experts: \['medic'\]"):
        build_router(config, fewer, None, encoder=minilm)


def test_router_train_refuses_bad_input(tmp_path):
    from cluster.cli import main

    _folder(tmp_path / "data")
    result = CliRunner().invoke(main, ["router", "train", str(tmp_path / "data"), "--out",
                                       str(tmp_path / "o"), "--pool", "mathy,nobody"])
    assert result.exit_code != 0 and "unknown model" in result.output


def test_conclave_eval_scores_contrastive_with_its_adaptive_panel(tmp_path):
    from cluster.cli import main

    _folder(tmp_path / "data")
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["eval", str(tmp_path / "data"), "--strategy",
                                       "contrastive", "--out", str(out)])
    assert result.exit_code == 0, result.output
    row = json.loads((out / "eval.json").read_text())["strategies"]["contrastive"]
    assert row["top1"] > 0.5 and row["top1_macro"] > 0.5  # 3 experts, one right per domain
    auto = row["auto"]
    assert 1.0 <= auto["mean_experts"] <= 3.0 and 0.0 <= auto["accuracy"] <= 1.0
    assert [point[0] for point in auto["curve"]] == sorted(point[0] for point in auto["curve"])
