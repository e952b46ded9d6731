"""patchlens: layer-wise analysis of the local (patch-level) representations of Vision Transformers."""

__version__ = "0.1.0"
