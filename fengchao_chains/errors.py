"""The project's error roots.

Operators see these as one line on stderr (the CLI prints ``error: <message>``) and clients
see them mapped to documented codes, so every message must name the problem and what to do,
and must never carry a secret.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def one_line(exc: BaseException, *, redact: str | None = None) -> str:
    """The first line of an exception's message, for a one-line report; ``redact`` (a secret
    the message might quote, such as a password) is replaced by ``***``."""
    if isinstance(exc, subprocess.CalledProcessError):
        return f"{Path(str(exc.cmd[0])).name} exited with status {exc.returncode}"
    lines = str(exc).strip().splitlines()
    text = lines[0].strip() if lines else type(exc).__name__
    return text.replace(redact, "***") if redact else text


class FengchaoError(Exception):
    """Base class for every error this package raises on purpose."""


class ConfigurationError(FengchaoError):
    """A setting, a config file or a catalog file is wrong."""


class DatabaseError(FengchaoError):
    """The database cannot be reached, started or migrated."""


class CatalogError(FengchaoError):
    """A model id or a catalog entry cannot be used."""


class UnknownModelError(CatalogError, KeyError):
    """A model id that is not in the catalog.

    Subclasses :class:`KeyError` so ``catalog[model_id]`` behaves like a mapping lookup.
    """

    def __init__(self, model_id: str, close_matches: list[str]) -> None:
        self.model_id = model_id
        self.close_matches = close_matches
        hint = (
            f"; did you mean {', '.join(repr(m) for m in close_matches)}?" if close_matches else ""
        )
        super().__init__(f"unknown model {model_id!r}{hint} (`fengchao models` lists all models)")

    def __str__(self) -> str:  # KeyError would otherwise wrap the message in quotes
        return str(self.args[0])


class ModelNotAvailableError(CatalogError):
    """A catalog model whose vendor implementation is not installed or not registered."""
