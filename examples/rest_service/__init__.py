"""A small REST service holding the data the other services read: a pure ASGI app."""

from examples.rest_service.app import RestApp, RestService, create_app

__all__ = ["RestApp", "RestService", "create_app"]
