"""Analyses over the IR: one small module per pass."""
