"""retention: enforce conversation-retention policies on CustomGPT.ai agents."""

__version__ = "0.1.0"
