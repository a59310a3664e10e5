"""The serving tests' fixture: one real `mlops serve` for the session (see serving_kit.py)."""

from serving_kit import served

__all__ = ["served"]
