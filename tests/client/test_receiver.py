"""CheckpointReceiver, the one DownloadCheckpoint receiver: every check it makes, without a server."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from chargpt_client import DataLoss, ResourceExhausted
from chargpt_client.receiver import MAX_FILES, MAX_TOTAL_BYTES, CheckpointReceiver

from chargpt import errors, receiver
from chargpt.v1 import common_pb2, trainer_pb2

Response = trainer_pb2.DownloadCheckpointResponse
HOSTILE_FILE_NAMES = ["../../escaped", "../escaped", "/tmp/escaped-abs", "..", ".", "sub/escaped", ".hidden", "",
                      "a" * 129, "tab\tname", "back\\slash"]


def _header(files: dict[str, bytes], sizes: dict[str, int] | None = None) -> Response:
    entries = [trainer_pb2.CheckpointFile(name=name, size_bytes=(sizes or {}).get(name, len(data)),
                                          sha256=hashlib.sha256(data).hexdigest()) for name, data in files.items()]
    checkpoint = trainer_pb2.Checkpoint(job_id="j", kind=common_pb2.CHECKPOINT_KIND_BEST, step=3)
    return Response(header=trainer_pb2.CheckpointArchiveHeader(checkpoint=checkpoint, files=entries))


def _chunk(name: str, offset: int, data: bytes) -> Response:
    return Response(chunk=trainer_pb2.CheckpointChunk(file_name=name, offset=offset, data=data,
                                                      sha256=hashlib.sha256(data).hexdigest()))


def _stream(files: dict[str, bytes], size: int = 4) -> list[Response]:
    messages = [_header(files)]
    for name, data in files.items():
        messages += [_chunk(name, offset, data[offset:offset + size]) for offset in range(0, len(data), size)]
    return messages


def _receive(messages: list[Response], directory: Path, name: str = "ckpt") -> Path:
    with CheckpointReceiver(directory) as receiver:
        for message in messages:
            receiver.feed(message)
        return receiver.finish(name)


FILES = {"manifest.json": b'{"format": 1}', "model.safetensors": bytes(range(37)), "empty.txt": b""}


def test_receives_verifies_and_renames_into_place(tmp_path: Path) -> None:
    path = _receive(_stream(FILES), tmp_path)
    assert path == tmp_path / "ckpt"
    assert {p.name: p.read_bytes() for p in path.iterdir()} == FILES  # the empty file exists too
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_feed_reports_the_bytes_each_message_carried(tmp_path: Path) -> None:
    with CheckpointReceiver(tmp_path) as receiver:
        carried = [receiver.feed(m) for m in _stream(FILES, size=16)]
        receiver.finish("ckpt")
    assert carried[0] == 0 and sum(carried) == sum(len(d) for d in FILES.values())


@pytest.mark.parametrize("hostile", HOSTILE_FILE_NAMES)
def test_only_plain_file_names_are_accepted(tmp_path: Path, hostile: str) -> None:
    with pytest.raises(DataLoss, match="escapes"):
        _receive(_stream({"manifest.json": b"{}", hostile: b"x"}), tmp_path / "cache")
    assert not (tmp_path / "escaped").exists() and not Path("/tmp/escaped-abs").exists()
    assert not (tmp_path / "cache").exists() or not list((tmp_path / "cache").iterdir())


def test_file_count_is_capped(tmp_path: Path) -> None:
    too_many = {f"f{i}": b"x" for i in range(MAX_FILES + 1)}
    with pytest.raises(DataLoss, match="bad set of files"):
        _receive(_stream(too_many), tmp_path)
    _receive(_stream(dict(list(too_many.items())[:MAX_FILES])), tmp_path)  # exactly the cap is fine


def test_total_size_is_capped_before_anything_is_written(tmp_path: Path) -> None:
    with CheckpointReceiver(tmp_path) as receiver, pytest.raises(ResourceExhausted, match="cap"):
        receiver.feed(_header({"model.safetensors": b"x"}, sizes={"model.safetensors": MAX_TOTAL_BYTES + 1}))
    with CheckpointReceiver(tmp_path, max_total_bytes=10) as receiver, pytest.raises(ResourceExhausted):
        receiver.feed(_header({"a": b"123456", "b": b"123456"}))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("problem", ["no files", "duplicate", "negative size", "bad sha256"])
def test_malformed_headers_are_data_loss(tmp_path: Path, problem: str) -> None:
    header = _header({"a": b"1", "b": b"2"})
    files = header.header.files
    if problem == "no files":
        del files[:]
    elif problem == "duplicate":
        files[1].name = "a"
    elif problem == "negative size":
        files[0].size_bytes = -1
    else:
        files[0].sha256 = "ABC"
    with CheckpointReceiver(tmp_path) as receiver, pytest.raises(DataLoss):
        receiver.feed(header)


def test_stream_order_is_enforced(tmp_path: Path) -> None:
    data = bytes(range(12))
    cases = {
        "header": [_chunk("m", 0, data)],  # a chunk before the header
        "after the checkpoint header": [_header({"m": data}), _header({"m": data})],
        "does not list": [_header({"m": data}), _chunk("other", 0, data)],
        "expected 0": [_header({"m": data}), _chunk("m", 4, data[4:])],
        "more bytes": [_header({"m": data[:4]}), _chunk("m", 0, data)],
    }
    for match, messages in cases.items():
        with pytest.raises(DataLoss, match=match):
            _receive(messages, tmp_path)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("tamper", ["chunk", "file", "truncated", "no header"])
def test_corruption_is_data_loss_and_leaves_nothing(tmp_path: Path, tamper: str) -> None:
    messages = _stream(FILES)
    if tamper == "chunk":  # bytes changed after their checksum was computed
        messages[2].chunk.data = b"evil"
    elif tamper == "file":  # consistent chunks of a different file
        messages[1] = _chunk("manifest.json", 0, b"EVIL")
    elif tamper == "truncated":
        messages = messages[:-1]
    else:
        messages = []
    with pytest.raises(DataLoss):
        _receive(messages, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_existing_destination_policies(tmp_path: Path) -> None:
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "old").write_text("old")
    with pytest.raises(FileExistsError):
        _receive(_stream(FILES), tmp_path)
    with CheckpointReceiver(tmp_path) as receiver:
        for message in _stream(FILES):
            receiver.feed(message)
        assert receiver.finish("ckpt", if_exists="keep") == tmp_path / "ckpt"
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["old"]  # kept; the new copy was dropped
    with CheckpointReceiver(tmp_path) as receiver:
        for message in _stream(FILES):
            receiver.feed(message)
        receiver.finish("ckpt", if_exists="replace")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == sorted(FILES)
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]


def test_abort_removes_the_partial_download(tmp_path: Path) -> None:
    receiver = CheckpointReceiver(tmp_path)
    for message in _stream(FILES)[:3]:
        receiver.feed(message)
    assert len(list(tmp_path.iterdir())) == 1  # the temporary directory, hidden
    receiver.abort()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataLoss, match="before its header"):
        receiver.finish("ckpt")


def test_the_shared_receiver_raises_chargpt_errors_and_the_clients_its_own(tmp_path: Path) -> None:
    """chargpt.receiver (also the inference service's) raises chargpt.errors; the client's maps them to its own."""
    oversized = _header({"model.safetensors": b"x"}, sizes={"model.safetensors": MAX_TOTAL_BYTES + 1})
    with receiver.CheckpointReceiver(tmp_path) as shared, pytest.raises(errors.ResourceExhaustedError, match="cap"):
        shared.feed(oversized)
    with receiver.CheckpointReceiver(tmp_path) as shared, pytest.raises(errors.DataLossError, match="header"):
        shared.finish("ckpt")
    with CheckpointReceiver(tmp_path) as client_side, pytest.raises(DataLoss, match="header") as raised:
        client_side.finish("ckpt")
    assert not isinstance(raised.value, errors.ChargptError)
