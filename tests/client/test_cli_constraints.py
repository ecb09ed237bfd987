"""`chargpt generate --regex / --choice / --json-schema FILE` through subprocesses against a real server."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest

from tests.client.conftest import VOCAB, ServerThread, inference_factory, write_checkpoint
from tests.client.test_cli import Cli

SCHEMA = {"type": "object", "properties": {"n": {"type": "integer"}, "word": {"enum": ["to", "be"]}},
          "required": ["n", "word"]}


@pytest.fixture(scope="module")
def cli(server_thread: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    root = tmp_path_factory.mktemp("cli-constraints")
    write_checkpoint(root / "models" / "json", vocab=VOCAB + '{}[]"0123456789')
    _, inference = server_thread.start(inference_factory(root / "models"))
    yield Cli("127.0.0.1:1", inference, root)


def test_generate_with_a_regex_choices_and_a_json_schema_file(cli: Cli) -> None:
    assert cli.json("models", "load", "m", "--checkpoint", "json")["loaded"]
    speaker = cli.run("generate", "m", "", "--regex", r"[A-Z]+:\n[a-z ]+", "--seed", "1", "--max-new-tokens", "80")
    assert speaker.returncode == 0 and re.fullmatch(r"[A-Z]+:\n[a-z ]+\n", speaker.stdout), speaker.stdout
    assert ", stop," in speaker.stderr
    picked = cli.json("generate", "m", "ok?", "--choice", "yes", "--choice", "no\\n", "--seed", "2")
    assert picked["text"] in ("yes", "no\n") and picked["summary"]["finish_reason"] == "STOP"
    (cli.workdir / "schema.json").write_text(json.dumps(SCHEMA))
    document = cli.json("generate", "m", "", "--json-schema", "schema.json", "--seed", "3", "--max-new-tokens", "200")
    jsonschema.validate(json.loads(document["text"]), SCHEMA)
    missing = cli.run("generate", "m", "", "--json-schema", str(Path("nowhere.json")))
    assert missing.returncode == 2 and "cannot read the JSON schema file" in missing.stderr
    unseen = cli.run("generate", "m", "", "--choice", "né")
    assert unseen.returncode != 0 and "choices: the model has never seen 'é'" in unseen.stderr
