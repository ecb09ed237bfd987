"""A small Dockerfile reader: per build target, the ENV, COPY, ENTRYPOINT/CMD and HEALTHCHECK it ends up with."""

from __future__ import annotations

import copy
import json
import shlex
from dataclasses import dataclass, field, replace
from pathlib import Path


@dataclass
class Stage:
    """What a stage inherits from its parent stage in the same file, plus its own instructions."""

    name: str
    base: str
    env: dict[str, str] = field(default_factory=dict)
    copies: dict[str, str] = field(default_factory=dict)  # destination in the image -> source in the context
    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    healthcheck: list[str] = field(default_factory=list)
    healthcheck_options: dict[str, str] = field(default_factory=dict)
    user: str | None = None
    exposed: list[int] = field(default_factory=list)


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs with comments dropped and backslash continuations joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), rest.strip()))
    return result


def _exec_form(arguments: str) -> list[str]:
    """JSON (exec) form when the arguments are a JSON array, else the shell form wrapped in `sh -c`."""
    if arguments.startswith("["):
        parsed = json.loads(arguments)
        return [str(part) for part in parsed]
    return ["/bin/sh", "-c", arguments]


def _env_pairs(arguments: str) -> dict[str, str]:
    parts = shlex.split(arguments)
    if parts and "=" not in parts[0]:  # legacy `ENV KEY value` form
        return {parts[0]: " ".join(parts[1:])}
    return dict(part.split("=", 1) for part in parts)


def _healthcheck(stage: Stage, arguments: str) -> None:
    options, _, command = arguments.partition("CMD")
    for option in shlex.split(options):
        key, _, value = option.lstrip("-").partition("=")
        stage.healthcheck_options[key] = value
    stage.healthcheck = _exec_form(command.strip())


def _apply(stage: Stage, keyword: str, arguments: str) -> None:
    if keyword == "ENV":
        stage.env.update(_env_pairs(arguments))
    elif keyword == "COPY" and "--from=" not in arguments:
        *sources, destination = [part for part in shlex.split(arguments) if not part.startswith("--")]
        for source in sources:
            stage.copies[destination] = source
    elif keyword == "ENTRYPOINT":
        stage.entrypoint, stage.cmd = _exec_form(arguments), []
    elif keyword == "CMD":
        stage.cmd = _exec_form(arguments)
    elif keyword == "HEALTHCHECK":
        _healthcheck(stage, arguments)
    elif keyword == "USER":
        stage.user = arguments
    elif keyword == "EXPOSE":
        stage.exposed += [int(port.split("/")[0]) for port in arguments.split()]


def stages(path: Path) -> dict[str, Stage]:
    """Every named stage of the Dockerfile, with what it inherits from earlier stages already applied."""
    result: dict[str, Stage] = {}
    current: Stage | None = None
    for keyword, arguments in instructions(path.read_text(encoding="utf-8")):
        if keyword == "FROM":
            words = [word for word in arguments.split() if not word.startswith("--")]
            base, name = words[0], words[2] if len(words) > 2 and words[1].upper() == "AS" else words[0]
            parent = result.get(base)
            # A stage built FROM an earlier stage inherits its ENV, files, user, entry point and health check.
            current = replace(copy.deepcopy(parent), name=name, base=base) if parent else Stage(name=name, base=base)
            result[name] = current
        elif current is not None:
            _apply(current, keyword, arguments)
    return result
