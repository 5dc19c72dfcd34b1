"""Framework components built on the library (one model load, the engine, the index):
``bgekit.integrations.langchain``, ``.llama_index`` and ``.haystack``. Each imports its
framework only when it is imported itself (extras ``langchain``, ``llamaindex``,
``haystack``); ``import bgekit`` imports none of them."""

__all__: list[str] = []
