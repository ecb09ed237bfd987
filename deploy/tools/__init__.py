"""Checks and helpers for deploy/: `python -m deploy.tools.check` is what `make check-deploy` runs."""
