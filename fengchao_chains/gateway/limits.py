"""Per-key rate limits and budgets: being built (issue 8)."""

from __future__ import annotations

from fengchao_chains.db import Database
from fengchao_chains.settings import Settings


class Limiter:
    def __init__(self, database: Database, settings: Settings) -> None:
        self.database = database
        self.settings = settings
