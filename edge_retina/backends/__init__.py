"""Inference backends behind one small interface (``Runner``), chosen by name at run time.

Only the interface and the registry are imported here; a backend's module and its library load
when ``create_runner`` asks for it.
"""
from edge_retina.backends.base import Runner
from edge_retina.backends.registry import BACKENDS, available_backends, create_runner

__all__ = ["BACKENDS", "Runner", "available_backends", "create_runner"]
