"""
Prometheus metrics of an improto server (``twistd improto --metrics``).

:class:`ServerMetrics` counts (it is the router's
:class:`~improto.router.observer.Observer`), :class:`MetricsResource`
serves ``/metrics``; docs/operations.md lists every metric.
"""

from improto.metrics.counters import ServerMetrics
from improto.metrics.http import MAIN, MetricsResource, metrics_site, with_metrics

__all__ = ["MAIN", "MetricsResource", "ServerMetrics", "metrics_site", "with_metrics"]
