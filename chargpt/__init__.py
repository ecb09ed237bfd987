"""chargpt: train and serve your own small character-level GPT (shared API stubs, core and server helpers)."""

__version__ = "0.2.0"  # pyproject.toml's version (tests/client/test_versioning.py holds them equal)
