"""The continuous-batching engine (core.Engine): scheduler, model runner and output processor, one step at a time."""

from inference_service.engine.core import Engine

__all__ = ["Engine"]
