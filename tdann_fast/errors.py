"""Exceptions for mistakes a user can fix: a bad config value, a damaged file, a run directory in use.

The ``tdann-fast`` command prints a :class:`UserError` as one line (``tdann-fast: error: ...``) and exits with
status 2; any other exception is a bug and keeps its traceback. Each class also derives from the built-in
exception that code written before it expects (``ValueError`` or ``RuntimeError``).
"""
from __future__ import annotations

__all__ = ["UserError", "ConfigError", "DamagedFileError", "RunDirError", "MissingDependencyError"]


class UserError(Exception):
    """Something the user gave (a value, a file, a directory) is wrong; the message says what and how to fix it."""


class ConfigError(UserError, ValueError):
    """A configuration value, key or override is invalid (the message names the key, the value and what is
    allowed), or may not change on a rerun or resume of an existing run."""


class DamagedFileError(UserError, ValueError):
    """A checkpoint or sheet file is empty, truncated, foreign or unsafe to open; ``path`` names it."""

    def __init__(self, path, problem: str):
        self.path, self.problem = str(path), problem
        super().__init__(f"{self.path}: {problem}")


class RunDirError(UserError, RuntimeError):
    """A run directory cannot be used as asked: missing, empty, already written, or locked by another run."""


class MissingDependencyError(UserError, ImportError):
    """An optional package that this use needs is not installed; the message names it and the extra of
    ``tdann_fast`` that installs it (e.g. ``pip install 'tdann_fast[video]'``)."""
