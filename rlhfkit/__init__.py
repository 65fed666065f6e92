"""rlhfkit: the whole RLHF loop — people, preferences, reward, policy — from one CLI."""

__version__ = "0.1.0"
