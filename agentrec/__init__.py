"""agentrec: large language models as session-based recommendation agents, with retrieval.

Importing this package is light on purpose: torch, transformers, chromadb and vllm are imported
only by the functions that need them.
"""

__version__ = "0.1.0"
