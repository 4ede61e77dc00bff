"""A reporting service: a Session subclass as its API client."""
