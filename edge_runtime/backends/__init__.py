"""Inference backends behind one small interface, chosen through an explicit registry."""

from edge_runtime.backends.base import (
    Backend,
    available_backends,
    create_backend,
    first_available,
    select_backend,
)

__all__ = ["Backend", "available_backends", "create_backend", "first_available", "select_backend"]
