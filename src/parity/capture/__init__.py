"""Adapters that turn a model or a runtime into a Trace."""
