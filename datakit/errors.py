"""The one error root: every error a user can cause (bad input, bad settings, a model or server
that cannot be used) is a DatakitError, and every CLI command turns it into a one-line message
instead of a traceback. A traceback therefore always means a bug in datakit.

Subclasses say which part raised it; most also derive from ValueError, which is what callers of
the Python API caught before this root existed.
"""

from __future__ import annotations

import reprlib
from typing import Any


class DatakitError(Exception):
    """Something the user can fix; the message names the file, record, option or key, and why."""


class OptionError(DatakitError, ValueError):
    """A step setting that cannot be used. ``key`` is the setting's name, so the CLI can print
    it as ``--flag`` and a recipe as ``arms.x.steps[0].dedupe.key``."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem

    def __reduce__(self) -> tuple:  # rebuilt from (key, problem) in another process, not from its message
        return (type(self), (self.key, self.problem))


class StepError(DatakitError, ValueError):
    """A step cannot go on with this input (a bad row, a record the output format cannot hold)."""


def shown(value: Any, limit: int = 60) -> str:
    """A value as an error message quotes it: about ``limit`` characters at most, whatever its size
    (a megabyte role name, a YAML alias bomb), so that an error stays one short line."""
    text = _SHORT.repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


_SHORT = reprlib.Repr()  # (keyword arguments need Python 3.12)
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 4, 4, 50, 50
