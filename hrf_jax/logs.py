"""Python ``logging`` for hrf-jax: one ``hrf_jax`` logger, its level set by ``--verbosity``.

Library code logs through ``get_logger()``; nothing is printed directly. The logger has its
own console handler at INFO (messages to stdout, warnings and errors to stderr; a notebook or
a script sees the epochs without configuring logging) and does not propagate; to route
messages elsewhere, replace ``logging.getLogger("hrf_jax").handlers`` and set
``propagate = True``.
"""

from __future__ import annotations

import logging
import sys

LEVELS = ("debug", "info", "warning", "error")
logger = logging.getLogger("hrf_jax")


class _Format(logging.Formatter):
    """Plain messages at INFO and below; ``warning: ...`` above."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return text if record.levelno <= logging.INFO else f"{record.levelname.lower()}: {text}"


class _Console(logging.StreamHandler):
    """INFO and below to ``sys.stdout``, warnings and errors to ``sys.stderr``, whatever they
    are at the time of the message (notebooks and tests replace them)."""

    _to_stderr = False

    @property
    def stream(self):
        return sys.stderr if self._to_stderr else sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass

    def emit(self, record: logging.LogRecord) -> None:
        self._to_stderr = record.levelno > logging.INFO  # Handler.handle holds the lock
        super().emit(record)


def _default_handler() -> None:
    if logger.handlers:
        return
    handler = _Console()
    handler.setFormatter(_Format("%(message)s"))
    logger.addHandler(handler)
    logger.propagate = False
    if logger.level == logging.NOTSET:
        logger.setLevel(logging.INFO)


def get_logger() -> logging.Logger:
    """The ``hrf_jax`` logger, with a stdout handler if the application configured none."""
    _default_handler()
    return logger


def set_verbosity(level: str) -> None:
    """``debug`` | ``info`` | ``warning`` | ``error`` for hrf-jax's own messages; TFDS/absl
    stay at warnings unless ``debug``."""
    if level not in LEVELS:
        raise ValueError(f"verbosity must be one of {LEVELS}, got {level!r}")
    _default_handler()
    logger.setLevel(level.upper())
    noisy = logging.DEBUG if level == "debug" else logging.WARNING
    for name in ("absl", "tensorflow", "tensorflow_datasets", "jax._src.xla_bridge"):
        logging.getLogger(name).setLevel(noisy)
