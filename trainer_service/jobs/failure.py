"""A failed job's error: the reason first, on one line, never a traceback (that stays in the job's worker.log)."""

from __future__ import annotations

from chargpt.errors import ChargptError

MAX_ERROR_CHARS = 1000  # a reason, not a log: what a client prints after "error:"
TRACEBACK_HEADER = "Traceback (most recent call last):"


def exception_reason(exc: BaseException) -> str:
    """What went wrong in a client's terms: a chargpt error's own message, else the exception's type and message."""
    if isinstance(exc, ChargptError):
        return one_line(str(exc))
    message = one_line(str(exc))
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def last_exception(output: str) -> str | None:
    """The exception line that ends the last traceback in `output` ("RuntimeError: ..."), if it has one.

    A worker that died before it could record its reason (an import error, a crash in torchrun) still printed one.
    """
    _, found, after = output.rpartition(TRACEBACK_HEADER)
    if not found:
        return None
    for line in after.splitlines():  # frames and their source lines are indented; the exception is not
        if line.strip() and not line.startswith((" ", "\t")):
            return line.strip()
    return None


def job_error(reason: str | None, how: str = "") -> str:
    """The job's error: "reason (how it ended)", or either alone; one line of at most MAX_ERROR_CHARS."""
    parts = [one_line(reason or ""), one_line(how)]
    text = f"{parts[0]} ({parts[1]})" if all(parts) else parts[0] or parts[1]
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 1] + "…"


def one_line(text: str) -> str:
    return " ".join(text.split())
