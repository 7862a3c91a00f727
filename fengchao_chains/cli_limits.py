"""``fengchao limits``: being built (issue 8)."""

from __future__ import annotations

import typer

limits_app = typer.Typer(help="Per-key rate limits (RPM, TPM) and budgets.", no_args_is_help=True)
