"""The bottom layer: errors, typed configuration, templates, metrics, registries, safe file writes.

Nothing here imports another agentrec layer.
"""

__version__ = "0.1.0"
