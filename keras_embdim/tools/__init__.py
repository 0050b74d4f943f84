"""Standalone tools (scripts run without importing keras_embdim)."""
