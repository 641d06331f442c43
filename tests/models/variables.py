"""Variables for the model tests, filled with numpy rather than by a compiled Flax initializer.

Compiling a model's initializer (threefry random bits for every kernel) costs seconds per model on a
CPU; the tests that check shapes, normalization arithmetic or output wiring need only plausible
values of the right shapes, which ``jax.eval_shape`` and numpy give at no compile cost.
"""

import functools
import math

import jax
import numpy as np


def random_variables(module, *args, seed: int = 0, **kwargs):
    """Every variable of ``module.init(key, *args, **kwargs)``, drawn with numpy.

    Kernels are He-normal, ``scale`` and ``var`` positive around 1, biases and means small.
    """
    shapes = jax.eval_shape(functools.partial(module.init, **kwargs), jax.random.key(0), *args)
    rng = np.random.default_rng(seed)

    def draw(path, leaf):
        name = path[-1].key
        if name == "kernel":
            values = rng.normal(size=leaf.shape) * math.sqrt(2.0 / math.prod(leaf.shape[:-1]))
        elif name in ("scale", "var"):
            values = 1.0 + 0.1 * np.abs(rng.normal(size=leaf.shape))
        else:
            values = 0.1 * rng.normal(size=leaf.shape)
        return values.astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(draw, shapes)


def count(tree) -> int:
    """Number of scalars in a pytree of arrays or shape structs."""
    return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))
