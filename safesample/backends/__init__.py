"""Model access (transformers, vLLM, sentence-transformers), imported only when a command needs it."""
