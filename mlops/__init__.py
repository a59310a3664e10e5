"""Core of the MLOps lifecycle: settings, workspace, metadata store and the `mlops` CLI."""

__version__ = "0.1.0"
