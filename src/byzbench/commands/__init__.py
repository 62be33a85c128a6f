"""Subcommands of the ``byzbench`` CLI that live in their own module.

Each module of this package defines ``register(subparsers) -> None``, which adds its
subparser(s) and sets ``func`` (``args -> exit status``) with ``set_defaults``. The CLI
imports every module here at start-up, so adding a command is adding one file. Shared
argument helpers (``config_args``, ``load_config``, ``progress_bar``) are in
`byzbench.cli`; a command raises `byzbench.errors.ConfigError` for user errors (printed as
one line, exit status 2).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
from types import ModuleType


def command_modules() -> list[ModuleType]:
    """Every module of this package, imported, in name order."""
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    return [importlib.import_module(f"{__name__}.{name}") for name in names]


def register_all(subparsers: argparse._SubParsersAction) -> None:
    """Let every command module add its subparsers."""
    for module in command_modules():
        module.register(subparsers)
