"""sglprep: reconcile a GPU host with a desired SGLang serving state."""

__version__ = "0.1.0"
