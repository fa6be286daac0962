"""Ponder: an OpenAI-compatible proxy that makes chat models reason better at inference time."""

__version__ = "0.1.0"
