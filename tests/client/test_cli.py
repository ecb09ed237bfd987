"""The `chargpt` CLI through subprocesses against real in-process servers: exit codes, --json, progress, files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from chargpt_client import InferenceClient, ModelConfig, TrainerClient, TrainingOptions
from chargpt_client.cli import build_parser, main

from tests.client.conftest import FAST_RETRY, ServerThread, inference_factory, trainer_factory, write_checkpoint
from tests.client.test_library_units import _png_size

ROOT = Path(__file__).resolve().parents[2]
CORPUS = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n" * 60
TINY_FLAGS = ["--n-layer", "1", "--n-head", "2", "--n-embd", "16", "--block-size", "16", "--max-steps", "6",
              "--batch-size", "4", "--eval-interval", "3", "--sample-interval", "3", "--sample-length", "20"]


@dataclass
class Cli:
    trainer: str
    inference: str
    workdir: Path

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": f"{ROOT}:{ROOT / 'client'}",
                       "CHARGPT_TRAINER_ADDRESS": self.trainer, "CHARGPT_INFERENCE_ADDRESS": self.inference,
                       **(env or {})}
        return subprocess.run([sys.executable, "-m", "chargpt_client.cli", *args], capture_output=True, text=True,
                              cwd=self.workdir, env=environment, timeout=120)

    def json(self, *args: str) -> Any:
        result = self.run(*args, "--json")
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)


@pytest.fixture(scope="module")
def cli(server_thread: ServerThread, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    root = tmp_path_factory.mktemp("cli")
    _, trainer = server_thread.start(trainer_factory(root / "trainer", builtin_corpora=False,
                                                     event_poll_seconds=0.05))
    _, inference = server_thread.start(inference_factory(root / "models", trainer_address=trainer))
    (root / "models").mkdir(exist_ok=True)
    yield Cli(trainer, inference, root)


@pytest.fixture(scope="module")
def job_id(cli: Cli) -> str:
    """A tiny job trained with `chargpt train` (which follows its progress to the end)."""
    (cli.workdir / "citizens.txt").write_text(CORPUS)
    uploaded = cli.json("corpus", "upload", "citizens.txt", "--description", "test")
    result = cli.run("train", uploaded["corpus"]["corpus_id"], *TINY_FLAGS, "--json")
    assert result.returncode == 0, result.stderr
    job = json.loads(result.stdout)
    assert job["state"] == "SUCCEEDED" and job["step"] == 6
    assert "step 6/6" in result.stderr and "sample at step 3" in result.stderr and "val loss" in result.stderr
    return str(job["job_id"])


def test_help_everywhere_and_usage_errors() -> None:
    top = subprocess.run([sys.executable, "-m", "chargpt_client.cli", "--help"], capture_output=True, text=True,
                         env={"PYTHONPATH": f"{ROOT}:{ROOT / 'client'}"}, timeout=60)
    assert top.returncode == 0 and "demo" in top.stdout and "generate" in top.stdout
    commands = [["demo"], ["corpus", "upload"], ["train"], ["jobs", "watch"], ["checkpoints", "download"],
                ["device"], ["models", "load"], ["generate"], ["score"], ["attention"], ["plot"]]
    for command in commands:
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([*command, "--help"])
        assert exit_info.value.code == 0
    with pytest.raises(SystemExit) as missing:
        main(["generate"])
    assert missing.value.code == 2


def test_usage_and_server_errors_have_distinct_exit_codes(cli: Cli) -> None:
    usage = cli.run("train", "shakespeare", "--n-layer", "2")
    assert usage.returncode == 2 and "all of --n-layer" in usage.stderr
    missing = cli.run("models", "show", "nope")
    assert missing.returncode == 1 and missing.stderr.startswith("error: NOT_FOUND: ")
    down = cli.run("corpus", "list", "--trainer", "127.0.0.1:1", "--timeout", "3")
    assert down.returncode == 1 and "UNAVAILABLE" in down.stderr


def test_invalid_argument_names_the_field(cli: Cli) -> None:
    (cli.workdir / "bad-name.txt").write_text(CORPUS)
    bad = cli.run("corpus", "upload", "bad-name.txt", "--name", "no/slashes")
    assert bad.returncode == 1 and bad.stderr.startswith("error: INVALID_ARGUMENT: header.name: ")
    assert bad.stderr.rstrip().endswith("(field: header.name)")


def test_corpus_commands(cli: Cli) -> None:
    (cli.workdir / "poem.txt").write_text("Shall I compare thee to a summer's day?\n" * 40)
    uploaded = cli.json("corpus", "upload", "poem.txt", "--name", "sonnet")
    corpus_id = uploaded["corpus"]["corpus_id"]
    assert uploaded["created"] and uploaded["corpus"]["name"] == "sonnet"
    assert corpus_id in [c["corpus_id"] for c in cli.json("corpus", "list")]
    shown = cli.run("corpus", "show", corpus_id)
    assert shown.returncode == 0 and "split:" in shown.stdout and "1,440 train" in shown.stdout
    assert cli.json("corpus", "delete", corpus_id) == {"deleted": corpus_id}
    assert cli.run("corpus", "show", corpus_id).returncode == 1


def test_corpus_read_and_score_file_keep_line_endings(cli: Cli, job_id: str) -> None:
    crlf = "First Citizen:\r\nSpeak, speak.\r\n\r\n" * 60
    (cli.workdir / "windows.txt").write_bytes(crlf.encode("utf-8"))
    corpus = cli.json("corpus", "upload", "windows.txt")["corpus"]
    assert "\r" in corpus["vocabulary"] and corpus["num_chars"] == len(crlf)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": f"{ROOT}:{ROOT / 'client'}",
           "CHARGPT_TRAINER_ADDRESS": cli.trainer}
    read = subprocess.run([sys.executable, "-m", "chargpt_client.cli", "corpus", "read", corpus["corpus_id"],
                           "--split", "validation", "--offset", "-40", "--length", "40"], capture_output=True,
                          env=env, timeout=120)
    assert read.returncode == 0 and read.stdout == crlf[-40:].encode("utf-8")  # bytes: nothing translated
    bad = cli.run("corpus", "read", corpus["corpus_id"], "--length", "0")
    assert bad.returncode == 1 and "length" in bad.stderr
    # The job's model never saw '\r': scoring the CRLF file must see its '\r' characters, not '\n' in their place.
    assert cli.json("models", "load", "plain", "--job", job_id)["model"]["state"] == "READY"
    refused = cli.run("score", "plain", "--file", "windows.txt")
    assert refused.returncode == 1 and "\\r" in refused.stderr and "windows.txt" in refused.stderr
    dropped = cli.json("score", "plain", "--file", "windows.txt", "--drop-unknown")
    assert dropped[0]["dropped"] == crlf.count("\r")
    (cli.workdir / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    not_utf8 = cli.run("score", "plain", "--file", "latin1.txt")
    assert not_utf8.returncode == 2 and "not valid UTF-8" in not_utf8.stderr


def test_job_and_checkpoint_commands(cli: Cli, job_id: str) -> None:
    assert job_id in [j["job_id"] for j in cli.json("jobs", "list")]
    shown = cli.run("jobs", "show", job_id)
    assert shown.returncode == 0 and "SUCCEEDED" in shown.stdout and "parameters:" in shown.stdout
    watched = cli.run("jobs", "watch", job_id)
    assert watched.returncode == 0 and "succeeded" in watched.stderr
    assert cli.json("jobs", "cancel", job_id)["state"] == "SUCCEEDED"
    resumed = cli.run("jobs", "resume", job_id)
    assert resumed.returncode == 1 and "FAILED_PRECONDITION" in resumed.stderr
    kinds = {c["kind"] for c in cli.json("checkpoints", "list", job_id)}
    assert kinds == {"best", "latest"}
    downloaded = cli.json("checkpoints", "download", job_id, "-o", "models/ckpt")
    assert set(downloaded["files"]) >= {"manifest.json", "model.safetensors"}
    again = cli.run("checkpoints", "download", job_id, "-o", "models/ckpt")
    assert again.returncode == 2 and "--overwrite" in again.stderr
    table = cli.run("checkpoints", "list", job_id)
    assert table.stdout.splitlines()[0].split()[:2] == ["kind", "step"]
    plot = cli.run("plot", job_id, "-o", "loss.png")
    assert plot.returncode == 0, plot.stderr
    assert min(_png_size(cli.workdir / "loss.png")) > 100


def test_detached_training_from_a_file_then_cancel_and_resume(cli: Cli, job_id: str) -> None:
    detached = cli.run("train", "citizens.txt", *TINY_FLAGS[:8], "--batch-size", "4", "--max-steps", "100000",
                       "--weight-decay", "0", "--grad-clip", "0.5", "--grad-accumulation-steps", "2", "--detach")
    assert detached.returncode == 0 and "uploaded citizens.txt as corpus" in detached.stderr
    new_job = detached.stdout.strip()
    assert len(new_job) >= 8 and new_job != job_id
    cancelled = cli.json("jobs", "cancel", new_job)
    assert cancelled["state"] in ("CANCELLED", "RUNNING", "QUEUED")
    training = cancelled["training"]  # every TrainingSpec field has a flag; an explicit 0 stays 0
    assert training["weight_decay"] == 0 and training["grad_clip"] == 0.5 and training["grad_accumulation_steps"] == 2
    watched = cli.run("jobs", "watch", new_job)
    assert watched.returncode == 0 and "cancelled" in watched.stderr
    assert cli.json("jobs", "resume", new_job)["state"] in ("QUEUED", "RUNNING")
    assert cli.json("jobs", "cancel", new_job)["state"] in ("CANCELLED", "RUNNING", "QUEUED")
    assert {j["state"] for j in cli.json("jobs", "list", "--state", "running", "--state", "queued")} <= {
        "RUNNING", "QUEUED"}


def test_model_generate_score_attention_commands(cli: Cli, job_id: str) -> None:
    loaded = cli.json("models", "load", "m", "--job", job_id)
    assert loaded["model"]["state"] == "READY" and loaded["model"]["training"]["job_id"] == job_id
    cli.json("checkpoints", "download", job_id, "-o", "models/for-load", "--kind", "latest")
    assert cli.json("models", "load", "m2", "--checkpoint", "for-load")["loaded"]
    assert {m["name"] for m in cli.json("models", "list")} >= {"m", "m2"}
    kind = cli.run("models", "load", "m3", "--checkpoint", "for-load", "--kind", "latest")
    assert kind.returncode == 2 and "--kind applies to --job only" in kind.stderr
    shown = cli.run("models", "show", "m").stdout  # loaded by job, no kind: the trainer's default checkpoint
    assert f"  source: trainer:{job_id}\n" in shown
    assert "KV cache, one torch thread" in shown  # the test server runs one torch thread
    streamed = cli.run("generate", "m", "First", "--seed", "3", "--max-new-tokens", "20", "--preset", "creative")
    assert streamed.returncode == 0 and streamed.stdout.startswith("First") and "seed 3" in streamed.stderr
    tiny = cli.run("generate", "m", "First", "--max-new-tokens", "5", "--temperature", "1e-38")
    assert tiny.returncode == 0 and "temperature 1e-38," in tiny.stderr, tiny.stderr  # the echo, not "0"
    zero = cli.run("generate", "m", "First", "--max-new-tokens", "0")
    assert zero.returncode != 0 and "max_new_tokens" in zero.stderr
    whole = cli.json("generate", "m", "First", "--seed", "3", "--max-new-tokens", "20", "--preset", "creative")
    assert streamed.stdout == "First" + whole["text"] + "\n" and whole["summary"]["top_k"] == 200
    urgent = cli.json("generate", "m", "First", "--seed", "3", "--max-new-tokens", "20", "--preset", "creative",
                      "--priority", "-5")  # admission order only: the same text
    assert urgent["text"] == whole["text"]
    assert cli.run("generate", "m", "First", "--priority", "2147483648").returncode != 0  # int32: named, refused
    table = cli.run("generate", "m", "First", "--seed", "3", "--max-new-tokens", "5", "--logprobs", "3",
                    "--repetition-penalty", "1.2", "--min-p", "0.01")
    assert table.returncode == 0 and table.stdout.splitlines()[1].split() == ["#", "char", "logprob", "top", "1",
                                                                              "top", "2", "top", "3"]
    assert len(table.stdout.splitlines()) == 1 + 2 + 5  # the text, header and rule, one row per character
    values = [re.findall(r"-?\d+\.\d+|-?inf", row) for row in table.stdout.splitlines()[3:]]
    assert all(len(v) == 4 and all(x.endswith("inf") or len(x.split(".")[1]) == 3 for x in v) for v in values)
    refused = cli.run("generate", "m", "First", "--logprobs", "21")
    assert refused.returncode == 1 and refused.stdout == "First\n" and refused.stderr.startswith("error: ")
    stop_table = cli.run("generate", "m", "All", "--stop", r"\n", "--seed", "1", "--max-new-tokens", "300",
                         "--logprobs", "1")
    text_line, *table_rows = stop_table.stdout.splitlines()
    assert table_rows[-1].split()[1:3] == ["'\\n'", "(stop)"]  # the stop sequence's character, not in the text
    assert len(table_rows) == 2 + len(text_line) - len("All") + 1
    stopped = cli.json("generate", "m", "All", "--stop", r"\n", "--seed", "1", "--max-new-tokens", "300")
    assert "\n" not in stopped["text"] and stopped["summary"]["finish_reason"] == "STOP"
    assert stopped["summary"]["stop_sequence"] == "\n"
    rows = cli.json("score", "m", "Speak, speak.", "--compare", "m2")
    assert [r["model"] for r in rows] == ["m", "m2"] and all(r["perplexity"] > 1 for r in rows)
    (cli.workdir / "odd.txt").write_text("Speak, speak! Zürich 42\n")
    assert cli.run("score", "m", "--file", "odd.txt").returncode == 1
    dropped = cli.json("score", "m", "--file", "odd.txt", "--drop-unknown")
    assert dropped[0]["dropped"] > 0 and dropped[0]["input"] == "odd.txt"
    mixed = cli.json("score", "m", "Speak.", "--file", "odd.txt", "Hear me.\nSpeak.", "--drop-unknown")
    assert [r["input"] for r in mixed] == ["Speak.", "'Hear me.\\nSpeak.'", "odd.txt"]  # one line per label
    unknown = cli.run("score", "m", "Speak.", "--file", "odd.txt", "--bogus", "x")
    assert unknown.returncode == 2 and "unrecognized arguments: --bogus x" in unknown.stderr
    attention = cli.run("attention", "m", "Speak, speak.", "-o", "att.png")
    assert attention.returncode == 0 and "1 layers x 2 heads" in attention.stdout
    assert min(_png_size(cli.workdir / "att.png")) > 100
    assert cli.json("models", "unload", "m2") == {"unloaded": "m2"}


def test_flags_override_environment(cli: Cli) -> None:
    result = cli.run("device", "--json", env={"CHARGPT_TRAINER_ADDRESS": "127.0.0.1:1"}, )
    assert result.returncode == 1
    flagged = cli.run("device", "--json", "--trainer", cli.trainer, env={"CHARGPT_TRAINER_ADDRESS": "127.0.0.1:1"})
    assert flagged.returncode == 0 and json.loads(flagged.stdout)["device"]["type"] == "cpu"


def test_missing_matplotlib_is_explained(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert main(["attention", "m", "text", "--inference", "127.0.0.1:1"]) == 3
    assert "pip install 'chargpt[plot]'" in capsys.readouterr().err


def test_progress_bar_redraws_in_place_on_a_terminal() -> None:
    import io

    from chargpt_client import types as t
    from chargpt_client.render import JobProgress

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    out = Terminal()
    progress = JobProgress(out)
    base: dict[str, Any] = {"time": None, "job_id": "job"}
    for step in (5, 10):
        progress.handle(t.Progress(sequence=step, step=step, max_steps=10, loss=2.5, learning_rate=1e-3,
                                   tokens_per_second=12345, elapsed_seconds=6.5 * step, eta_seconds=65 - 6.5 * step,
                                   **base))
        if step == 5:
            progress.handle(t.Sample(sequence=6, step=5, text="hello\nworld", **base))
    progress.close()
    assert out.getvalue() == (
        "\r\x1b[K[############............]  50% step 5/10  loss 2.5000  12.3k tok/s  elapsed 0:32  ETA 0:32"
        "\r\x1b[Ksample at step 5:\n  | hello\n  | world\n"
        "\r\x1b[K[########################] 100% step 10/10  loss 2.5000  12.3k tok/s  elapsed 1:05  ETA 0:00\n")


def test_generate_cut_short_by_a_server_shutdown_exits_1(server_thread: ServerThread, tmp_path: Path) -> None:
    """A drain that outlasts its grace period ends the stream with finish reason cancelled: the CLI prints the
    summary and reports the cut with exit status 1 (a finished generation exits 0)."""
    write_checkpoint(tmp_path / "tiny")
    server, address = server_thread.start(inference_factory(tmp_path, shutdown_grace_seconds=0.2))
    with InferenceClient(address) as client:
        client.load_model("tiny", checkpoint_path="tiny")
    environment = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHONPATH": f"{ROOT}:{ROOT / 'client'}",
                   "CHARGPT_INFERENCE_ADDRESS": address}
    command = [sys.executable, "-m", "chargpt_client.cli", "generate", "tiny", "a"]
    done = subprocess.run([*command, "--max-new-tokens", "5"], capture_output=True, text=True, env=environment,
                          timeout=60)
    assert done.returncode == 0 and ", length, seed" in done.stderr
    with subprocess.Popen([*command, "--max-new-tokens", "4096"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, env=environment) as cut:
        assert cut.stdout is not None and cut.stdout.read(20)  # under way
        server_thread.run(server.stop(5.0))
        server_thread.servers.remove(server)
        _, err = cut.communicate(timeout=60)
    assert cut.returncode == 1 and ", cancelled, seed" in err, err


def test_a_budget_only_job_shows_its_budget_not_a_step_limit(cli: Cli, job_id: str) -> None:
    """A job with --max-seconds and no --max-steps has no step limit: `jobs show` and `jobs list` say so."""
    flags = TINY_FLAGS[:8]  # the tiny architecture only: no --max-steps
    detached = cli.run("train", "citizens.txt", *flags, "--batch-size", "4", "--max-seconds", "90", "--detach")
    assert detached.returncode == 0, detached.stderr
    assert "90 s" in detached.stderr and "steps" not in detached.stderr.splitlines()[-1]
    budget_job = detached.stdout.strip()
    try:
        assert "max_steps" not in cli.json("jobs", "show", budget_job)["training"]
        shown = cli.run("jobs", "show", budget_job)
        assert re.search(r"^step: +\d+ \(budget 90 s\)$", shown.stdout, re.MULTILINE), shown.stdout
        listed = cli.run("jobs", "list")
        assert re.search(rf"^{budget_job} .* \d+ \(budget 90 s\)", listed.stdout, re.MULTILINE), listed.stdout
    finally:
        cli.run("jobs", "cancel", budget_job)


def test_jobs_list_lists_every_job_or_says_where_it_stopped(cli: Cli, server_thread: ServerThread,
                                                            tmp_path: Path) -> None:
    """More jobs than the old silent cut-off (50): `jobs list` shows them all; with --limit it says it stopped."""
    server, address = server_thread.start(trainer_factory(tmp_path / "trainer", builtin_corpora=False))
    try:
        with TrainerClient(address, FAST_RETRY) as client:
            corpus = client.upload_corpus("citizens", CORPUS).corpus
            tiny, options = ModelConfig(n_layer=1, n_head=2, n_embd=16, block_size=16), TrainingOptions(max_steps=10**5)
            created = [client.create_job(corpus.corpus_id, model=tiny, training=options).job_id for _ in range(55)]
            try:
                many = Cli(address, cli.inference, tmp_path)
                assert [j["job_id"] for j in many.json("jobs", "list")] == created[::-1]
                assert len(many.run("jobs", "list").stdout.splitlines()) == 2 + 55  # header, rule, every job
                limited = many.run("jobs", "list", "--limit", "7", "--json")
                assert [j["job_id"] for j in json.loads(limited.stdout)] == created[::-1][:7]
                assert "newest 7 jobs only; there are more (raise --limit" in limited.stderr, limited.stderr
                exact = many.run("jobs", "list", "--limit", "55")
                assert exact.returncode == 0 and exact.stderr == ""  # nothing left out, nothing to say
                assert many.run("jobs", "list", "--limit", "0").returncode == 2
            finally:
                for job_id in created[::-1]:  # the queued ones first: none of them starts
                    client.cancel_job(job_id)
    finally:
        server_thread.stop(server)


def test_train_priority_flag_orders_the_job_in_its_tenants_queue(cli: Cli, job_id: str) -> None:
    detached = cli.run("train", "citizens.txt", *TINY_FLAGS[:8], "--batch-size", "4", "--max-steps", "100000",
                       "--priority", "7", "--detach")
    assert detached.returncode == 0, detached.stderr
    job = cli.json("jobs", "cancel", detached.stdout.strip())
    assert (job["priority"], job["tenant"]) == (7, "default")  # no keys configured: the single user's tenant
