"""Small predicates shared by trainer-service tests."""

from __future__ import annotations


def cuda_missing() -> bool:
    try:
        import torch
    except ImportError:
        return True
    return not torch.cuda.is_available()
