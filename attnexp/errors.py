"""The exceptions every start-up check speaks in (torch-free).

- `ArgumentError`: raised by a constructor (or a forward on the meta batch) for
  one of its own arguments. It names the argument, not the config key: the
  preflight knows which group built the object and prefixes the key.
- `ConfigError`: the user-facing form, `key=value: reason`, printed by the CLI
  as one line.
Both user-facing kinds derive from `StartupError`: the job cannot start; the
CLI prints the message as one line and exits 2, before any folder exists.
"""

from __future__ import annotations

from typing import Any


def show(value: Any) -> str:
    """A value as a user would type it on the command line."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(show(v) for v in value) + "]"
    if isinstance(value, bool):
        return str(value).lower()
    return "null" if value is None else str(value)


class ArgumentError(ValueError):
    """`arg=value: reason` for one constructor argument.

    `group` is set only when the argument belongs to another group's config than
    the object raising it (e.g. `layers` is read by the backbone but set in the
    attention config).
    """

    def __init__(self, arg: str, value: Any, reason: str, group: str | None = None):
        self.arg, self.value, self.reason, self.group = arg, value, reason, group
        super().__init__(f"{arg}={show(value)}: {reason}")


class StartupError(Exception):
    """The job cannot start: one line for the user, exit 2."""


class ConfigError(StartupError):
    """A bad value of the composed config: `key=value: reason` (value ... = only the key is shown)."""

    def __init__(self, key: str, value: Any, reason: str):
        self.key, self.value, self.reason = key, value, reason
        shown = f"{key}={show(value)}" if value is not ... else key
        super().__init__(f"{shown}: {reason}")


def require(ok: bool, arg: str, value: Any, reason: str, group: str | None = None) -> None:
    """Raise ArgumentError(arg, value, reason) unless ok: the one-line form of a constructor check."""
    if not ok:
        raise ArgumentError(arg, value, reason, group)


def require_rate(arg: str, value: float) -> None:
    """A dropout-like probability: 0 ≤ value < 1."""
    require(0.0 <= value < 1.0, arg, value, "a rate in [0, 1)")


class JobExit(SystemExit):
    """A job that stopped (failed, diverged, interrupted): its one line and the exit code.
    A SystemExit, so it ends a sweep's launcher loop as it ends a single run."""

    def __init__(self, message: str, code: int):
        self.message = message
        super().__init__(code)
