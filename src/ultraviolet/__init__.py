"""Ultraviolet: image-based Linux container hosts with launch-time code integrity."""

__version__ = "0.1.0"
