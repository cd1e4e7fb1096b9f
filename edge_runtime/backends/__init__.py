"""Inference backends behind one small interface, chosen through an explicit registry."""

from edge_runtime.backends.base import (
    ENGINE_DIR_ENV,
    Backend,
    available_backends,
    create_backend,
    default_engine_dir,
    first_available,
    select_backend,
)

__all__ = [
    "ENGINE_DIR_ENV",
    "Backend",
    "available_backends",
    "create_backend",
    "default_engine_dir",
    "first_available",
    "select_backend",
]
