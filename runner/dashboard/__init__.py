"""The live dashboard: the queue, each task's output streaming, submit and cancel, in a browser.

``python -m runner.dashboard`` (or :func:`main`) serves it; :func:`serve_dashboard`
runs it inside an existing event loop. See docs/dashboard.md.
"""

from runner.dashboard.main import main
from runner.dashboard.server import DashboardConfig, serve_dashboard
from runner.errors import DashboardError

__all__ = ["DashboardConfig", "DashboardError", "main", "serve_dashboard"]
