"""The example REST service: FastAPI over an in-memory store, with fault switches."""

from examples.rest_service.app import RestApp, create_app
from examples.rest_service.faults import FaultControl, FaultSettings
from examples.rest_service.store import RestService

__all__ = ["FaultControl", "FaultSettings", "RestApp", "RestService", "create_app"]
