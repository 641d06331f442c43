"""Input checks shared by the losses: run in Python, before anything is traced."""

import numbers

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike


def shape_of(x: ArrayLike) -> tuple[int, ...]:
    return tuple(np.shape(x))


def dtype_of(x: ArrayLike) -> np.dtype:
    return jnp.result_type(x)


def check_floating(name: str, x: ArrayLike) -> None:
    if not jnp.issubdtype(dtype_of(x), jnp.floating):
        raise TypeError(f"{name} has dtype {dtype_of(x)}, expected a floating dtype "
                                        "(float32, bfloat16, float16 or float64)")


def check_integer(name: str, x: ArrayLike) -> None:
    if not jnp.issubdtype(dtype_of(x), jnp.integer):
        raise TypeError(
            f"{name} has dtype {dtype_of(x)}, expected an integer dtype (class indices)"
        )


def check_same_shape(name: str, x: ArrayLike, ref_name: str, ref: ArrayLike) -> None:
    if shape_of(x) != shape_of(ref):
        raise ValueError(f"{name} has shape {shape_of(x)}, expected the shape of {ref_name} "
                                          f"{shape_of(ref)}")


def check_broadcasts_to(name: str, x: ArrayLike, ref_name: str, ref: ArrayLike) -> None:
    try:
        fits = np.broadcast_shapes(shape_of(x), shape_of(ref)) == shape_of(ref)
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"{name} has shape {shape_of(x)}, expected a shape that broadcasts to "
                         f"the shape of {ref_name} {shape_of(ref)}")


def check_static_number(name: str, value: object, *, minimum: float | None = None,
                                                strictly_positive: bool = False) -> float:
    """Returns `value` as a float; hyper-parameters that shape the computation must be static."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a Python number (it selects the computation at trace "
                                        f"time), got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if strictly_positive and value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_alpha(alpha: object) -> None:
    """Checks a concrete alpha (scalar or per-class array) lies in [0, 1]."""
    if alpha is None:
        return
    try:
        values = np.asarray(alpha, dtype=np.float64)
    except Exception:  # a tracer: the caller is inside jit and the range cannot be checked
        return
    out_of_range = np.any(values < 0) or np.any(values > 1)
    if values.size and (out_of_range or not np.all(np.isfinite(values))):
        raise ValueError(f"alpha must lie in [0, 1], got {alpha}")


def compute_dtype(dtype: np.dtype) -> np.dtype:
    """float32 for 16-bit inputs; float64 stays float64 (with jax_enable_x64)."""
    return jnp.promote_types(dtype, jnp.float32)
