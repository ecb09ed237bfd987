"""The OpenAI-compatible HTTP API of the inference service."""
