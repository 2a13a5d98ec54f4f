"""What every `kiln` command shares: its two consoles, the one-line error exit, common options."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.text import Text

out = Console()
err = Console(stderr=True)

Home = Annotated[Path | None, typer.Option("--home", help="state folder (default: $KILN_HOME or ./.kiln)")]
AsJson = Annotated[bool, typer.Option("--json", help="print one JSON summary object on stdout")]


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `error: message` on stderr; raise what this returns."""
    err.print(Text.assemble(("error:", "bold red"), " ", message), soft_wrap=True)
    return typer.Exit(code)
