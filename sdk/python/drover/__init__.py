"""drover SDK for Python. ``from drover import worker`` gives the worker SDK
(drover/worker.py): handlers for a ``kind: worker`` app's invocations."""

__version__ = "0.1.0"
