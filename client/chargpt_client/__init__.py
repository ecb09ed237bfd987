"""chargpt client library: typed Python clients for the trainer and inference services (no torch needed)."""

from chargpt import __version__

__all__ = ["__version__"]
