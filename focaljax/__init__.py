"""focaljax: focal loss and the dense detectors around it, in JAX/Flax."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # `focaljax.Predictor` without making `import focaljax` import JAX, TensorFlow and orbax.
    if name == "Predictor":
        from focaljax.inference import Predictor

        return Predictor
    raise AttributeError(f"module 'focaljax' has no attribute {name!r}")
