"""The wire tables the client and both services share (no torch): one module per v1 message or enum."""
