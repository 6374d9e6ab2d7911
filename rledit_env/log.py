"""The library's log: one line for each choice it makes on the user's behalf (a calibrated step size,
say), on stderr at INFO level unless the application configures logging itself."""

from __future__ import annotations

import logging

ROOT = "rledit"


def get_logger(module: str) -> logging.Logger:
    """The logger of ``module``, under the library's root logger ``rledit``."""
    root = logging.getLogger(ROOT)
    if not root.handlers:  # like transformers: a default handler, replaceable by the application
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return logging.getLogger(f"{ROOT}.{module}")
