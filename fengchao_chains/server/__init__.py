"""The web app: the fengchao ``/aigc`` API (and, as the project grows, LangServe routes)."""

from fengchao_chains.server.app import create_app

__all__ = ["create_app"]
