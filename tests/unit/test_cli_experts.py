"""`conclave experts list|add|remove` through click's runner, on the real embedded Redis."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cluster.cli import main


@pytest.fixture()
def run(redis_url):
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, ["experts", *args, "--redis", redis_url])

    return invoke


def write(tmp_path, text: str):
    path = tmp_path / "spec.yaml"
    path.write_text(text)
    return str(path)


def test_add_list_remove(run, tmp_path):
    spec = write(tmp_path, "id: lawyer\nmodel: org/law-7b\ndescription: contracts and torts\n")
    added = run("add", spec)
    assert added.exit_code == 0, added.output
    assert "added lawyer (registry version 1)" in added.output
    listed = run("list")
    assert listed.exit_code == 0 and "lawyer" in listed.output and "org/law-7b" in listed.output
    removed = run("remove", "lawyer")
    assert removed.exit_code == 0 and "registry version 2" in removed.output
    assert "no experts registered" in run("list").output


def test_add_a_list_of_specs_and_json_listing(run, tmp_path):
    spec = write(tmp_path, "experts:\n  - {id: a, model: org/a}\n  - {id: b, model: org/b}\n")
    assert run("add", spec).exit_code == 0
    listed = run("list", "--json")
    assert '"id": "a"' in listed.output and '"id": "b"' in listed.output


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("id: x\nmodel: org/x\ncolour: red\n", "unknown key 'colour'"),
        ("id: Bad Id\nmodel: org/x\n", "is not a slug"),
        ("id: x\nkind: lora\nadapter: org/a\n", "kind 'lora' needs `base`"),
        ("id: x\nmodel: /no/such/dir\n", "path '/no/such/dir' does not exist"),
        ("id: [unclosed\n", "not valid YAML"),
    ],
)
def test_bad_spec_fails_with_one_line(run, tmp_path, text, message):
    result = run("add", write(tmp_path, text))
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output


def test_duplicate_and_unknown_ids(run, tmp_path):
    spec = write(tmp_path, "id: twice\nmodel: org/x\n")
    assert run("add", spec).exit_code == 0
    again = run("add", spec)
    assert again.exit_code != 0 and "'twice' is already registered" in again.output
    gone = run("remove", "ghost")
    assert gone.exit_code != 0 and "unknown expert 'ghost'" in gone.output


def test_unreachable_redis_is_one_line():
    result = CliRunner().invoke(main, ["experts", "list", "--redis", "redis://:pw@127.0.0.1:1"])
    assert result.exit_code != 0
    assert "cannot reach Redis at redis://:***@127.0.0.1:1" in result.output
    assert "pw" not in result.output
