"""The gateway's own services: API keys and tokens, sensitive words, async tasks, uploads and
conversation memory. Each module stands alone; the server composes them (``runtime.py``)."""
