"""agentrec: large language models as session-based recommendation agents, with retrieval.

The Python API (README, "Python API")::

    import agentrec
    data = agentrec.prepare("ml-100k", out="data/ml-100k")          # agentrec.load_dataset(path) for an existing folder
    run = agentrec.train("niser", data, out="runs/niser", epochs=5)  # variant="fusion" -> SemSR-F; returns a Run
    print(run.evaluate())                                             # test metrics, once
    recs = agentrec.load_run("runs/niser").recommend([["50", "172", "181"]], k=10)
    llm = agentrec.LLMRecommender(data, strategy="fscot")
    llm.recommend([["50", "172", "181"]], k=10)

Importing this package is light on purpose: each name above is imported from its module on first use
(a PEP 562 module ``__getattr__``), and torch, transformers, chromadb and vllm only by the functions
that need them.
"""

import importlib

# public name -> the module that defines it (imported when the name is first used)
_API = {
    "prepare": "agentrec.pipelines.api",
    "load_dataset": "agentrec.pipelines.api",
    "train": "agentrec.pipelines.api",
    "load_run": "agentrec.pipelines.api",
    "Run": "agentrec.pipelines.api",
    "LLMRecommender": "agentrec.pipelines.api",
    "Recommendation": "agentrec.pipelines.api",
    "RunSpec": "agentrec.pipelines.train",
    "__version__": "agentrec.core",
}

__all__ = [name for name in _API if not name.startswith("__")]


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'agentrec' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups are plain attribute reads
    return value


def __dir__() -> list[str]:
    """The API names and the module's dunders (not its helpers), loaded or not."""
    return sorted({*_API, *(name for name in globals() if name.startswith("__"))})
