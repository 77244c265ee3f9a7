"""Spec language: safe YAML, pydantic models, extends/--set, diagnostics."""
