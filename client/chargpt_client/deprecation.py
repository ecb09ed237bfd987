"""Deprecation warnings: each names the replacement and the release that removes the old form (README: Versioning)."""

from __future__ import annotations

import warnings


def removal_release(since: str) -> str:
    """The release that removes what `since` deprecated: the next minor version (deprecated for one minor)."""
    major, minor, *_ = since.split(".")
    return f"{major}.{int(minor) + 1}.0"


def deprecated(old: str, new: str, *, since: str, stacklevel: int = 2) -> None:
    """Warn that `old` is deprecated in favour of `new`; `stacklevel` counts from our caller (1) to the user's code
    (2 when the caller is the public method the user called)."""
    warnings.warn(f"{old} is deprecated since chargpt {since} and will be removed in {removal_release(since)}; "
                  f"use {new}", DeprecationWarning, stacklevel=stacklevel + 2)
