"""safesample: behavior-aware, diverse selection of safety data for LLM fine-tuning."""

__version__ = "0.1.0"
