"""What every command shares: consoles, the one place library errors become exit codes, JSON output."""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from medsign_forensics.errors import MedsignError

console = Console()
err_console = Console(stderr=True)

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(func: F) -> F:
    """Turn a :class:`MedsignError` into one red line on stderr and its documented exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except MedsignError as error:
            err_console.print(f"[bold red]error:[/] {escape(str(error))}", highlight=False, soft_wrap=True)
            raise typer.Exit(error.exit_code) from None

    return wrapper  # type: ignore[return-value]


def passphrase_prompt(*, new: bool = False) -> str:
    """MEDSIGN_PASSPHRASE if set, else a hidden prompt on stderr (so --json output stays clean); a passphrase
    piped on stdin is read too.

    When stdin ends before a passphrase (no terminal, nothing piped): a RegistryError (exit 5, "an issuer key
    cannot be used") instead of click's bare "Aborted." with exit 1, which this tool reserves for "a check
    found a problem".
    """
    from medsign_forensics.errors import RegistryError
    from medsign_forensics.provenance.keys import passphrase_from_env

    value = passphrase_from_env()
    if value is not None:
        return value
    try:
        return str(typer.prompt("Issuer key passphrase", hide_input=True, confirmation_prompt=new, err=True))
    except typer.Abort:
        raise RegistryError("the issuer key needs a passphrase and none came (no terminal, nothing on stdin); set "
                            "MEDSIGN_PASSPHRASE") from None


def print_json(data: Any) -> None:
    """Write machine-readable output to stdout, without Rich markup or wrapping."""
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")
    sys.stdout.flush()
