"""``fengchao usage``: being built (issue 8)."""

from __future__ import annotations

import typer

usage_app = typer.Typer(help="Usage reports: tokens and cost per model, key or day.")
