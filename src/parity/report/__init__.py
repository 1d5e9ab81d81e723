"""Renderers: read a Comparison, never compute one."""
