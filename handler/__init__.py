"""cc-execute handler: a WebSocket server that runs each task as a fresh OS process."""

__version__ = "0.1.0"
