"""focaljax: focal loss and the dense detectors around it, in JAX/Flax."""

__version__ = "0.1.0"
