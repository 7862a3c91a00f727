"""Chat models, one vendor per module, registered in :mod:`fengchao_chains.llms.registry`.

Shared HTTP and SSE plumbing lives in private modules beside the vendors; the catalog's
``vendor`` field picks the implementation for each model id.
"""

from fengchao_chains.llms.registry import register_vendor

__all__ = ["register_vendor"]
