"""fengchao-chains: many LLM vendors and local models behind one LangChain interface, with a
pgvector knowledge base, an instruction library and usage accounting."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("fengchao-chains")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

from fengchao_chains.catalog import get_chat_model  # after __version__: modules import it

__all__ = ["__version__", "get_chat_model"]
