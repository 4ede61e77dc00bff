"""Monitoring for commclient: Grafana and Prometheus assets, and ``/metrics`` exposure.

The Service Communication dashboard, Grafana alert rules, Prometheus recording and alerting
rules (with their promtool tests) ship as package data; ``python -m commclient.monitoring
export DIR`` writes them out as a Grafana provisioning tree. They are generated from
``_definitions.py`` by ``python -m commclient.monitoring generate`` (development only).
"""

from ._exposition import (
    MetricsASGIApp,
    MetricsServer,
    metrics_asgi_app,
    metrics_registry,
    start_metrics_server,
)
from ._files import export, shipped

__all__ = [
    "MetricsASGIApp",
    "MetricsServer",
    "export",
    "metrics_asgi_app",
    "metrics_registry",
    "shipped",
    "start_metrics_server",
]
