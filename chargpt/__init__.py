"""chargpt: train and serve your own small character-level GPT (shared API stubs, core and server helpers)."""

__version__ = "0.1.0"
