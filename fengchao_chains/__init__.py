"""fengchao-chains: many LLM vendors and local models behind one LangChain interface, with a
pgvector knowledge base, an instruction library and usage accounting."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fengchao-chains")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

__all__ = ["__version__", "get_chat_model"]


def __getattr__(name: str) -> object:
    # Importing the catalog pulls in LangChain; keep `import fengchao_chains` cheap.
    if name == "get_chat_model":
        from fengchao_chains.catalog import get_chat_model

        return get_chat_model
    raise AttributeError(f"module 'fengchao_chains' has no attribute {name!r}")
