"""The command line (the top): one module per command group, thin over the library.

May import every other gateway package (``serve`` and ``token`` import :mod:`gateway.api` when
they run, so ``redact`` and ``detect`` start without loading aiortc), and ``keys`` and
``redaction`` through their public API.
"""

from .main import main

__all__ = ["main"]
