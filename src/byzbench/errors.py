"""Exceptions raised by byzbench.

`ConfigError` is the one user-facing error: the CLI prints its message and exits with
status 2, without a traceback. It names the offending key and the rule it breaks.
"""

from __future__ import annotations


class ByzbenchError(Exception):
    """Base class of every error byzbench raises on purpose."""


class ConfigError(ByzbenchError, ValueError):
    """An invalid configuration: unknown name, impossible value, wrong type.

    ``key`` is the dotted config key at fault (e.g. ``"attack.z"``), when known.
    """

    def __init__(self, message: str, key: str | None = None) -> None:
        self.key = key
        super().__init__(f"{key}: {message}" if key else message)


class ParamError(ConfigError):
    """A bad value for one component parameter; ``param`` is the bare parameter name.

    Raised by component constructors; `Registry.create` re-keys it as ``key.param``
    (e.g. ``partition.beta``) so that the message names the full config key.
    """

    def __init__(self, param: str, message: str) -> None:
        self.param = param
        self.detail = message
        super().__init__(message)

    def keyed(self, key: str) -> ConfigError:
        """This error as a `ConfigError` on ``key.param``."""
        return ConfigError(self.detail, f"{key}.{self.param}")


class InfeasibleError(ConfigError):
    """A rule cannot run with the given n and f (e.g. trimmed mean needs n > 2f)."""


class NonFiniteInputError(ByzbenchError, ValueError):
    """An aggregator met more non-finite rows than it may treat as Byzantine."""
