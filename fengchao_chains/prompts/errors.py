"""Errors of the instruction library.

A client's bad prompt (an unknown variable, an unsafe template, a render over the limits) is
the fengchao API's parameter error, code 445; a broken file of the library is a configuration
error that stops start-up, naming the file and the line.
"""

from __future__ import annotations

from typing import ClassVar

from fengchao_chains.errors import ConfigurationError, FengchaoError

PARAMETER_ERROR = 445  # the fengchao API's "参数错误"


class PromptError(FengchaoError):
    """A prompt a client asked for cannot be rendered; maps to code 445."""

    code: ClassVar[int] = PARAMETER_ERROR


class PromptTemplateError(PromptError):
    """A template is malformed or uses something the sandbox does not allow (found before it
    runs: syntax, a missing ``{{ query }}`` slot, a forbidden construct, too long)."""


class PromptRenderError(PromptError):
    """Rendering stopped: an undefined or unknown variable, a bad value, or a limit (size,
    time, loop iterations) was reached."""


class PromptFileError(ConfigurationError):
    """A file of the instruction library is broken; the message names the file and line."""
