"""Resilient, observable service-to-service HTTP calls."""
