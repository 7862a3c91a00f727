"""LangChain callback handlers the server attaches to every request."""

from fengchao_chains.callbacks.usage import MODEL_METADATA_KEY, Bill, UsageRecord, UsageRecorder

__all__ = ["MODEL_METADATA_KEY", "Bill", "UsageRecord", "UsageRecorder"]
