"""`config.compiler_options`: XLA options for the compiled train and evaluation steps.

  step = with_compiler_options(jax.pmap(train_step, axis_name=AXIS_NAME), compiler_options(config))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections

from train import distributed


def compiler_options(config: ml_collections.ConfigDict) -> dict[str, str | bool | int | float]:
    """`config.compiler_options` ({} for none) as a dict of XLA option name -> value."""
    options = config.compiler_options
    if isinstance(options, ml_collections.ConfigDict):
        options = options.to_dict()
    if not isinstance(options, Mapping) or not all(
        isinstance(k, str) and isinstance(v, (str, bool, int, float)) for k, v in options.items()
    ):
        raise ValueError(
            f"config.compiler_options is {options!r}, expected a mapping from XLA option names "
            "to strings or numbers, e.g. {'xla_cpu_experimental_ynn_fusion_type': ''}"
        )
    return dict(options)


def with_compiler_options(fn: Callable, options: Mapping[str, Any]) -> Callable:
    """`fn` (`jax.jit`- or `jax.pmap`-ed), compiled at its first call, for the shapes of its
    arguments, with XLA `options`.

    The options (`config.compiler_options`, fields of XLA's `DebugOptions`) only tune how XLA
    compiles, never what the step computes; an option or value that the installed XLA rejects
    is reported and the step compiled without the options, rather than failing the run. Later
    calls must have the first call's shapes, as the train and the (padded) evaluation batches
    do. With no options, `fn` itself is returned.
    """
    if not options:
        return fn
    compiled = None
    # With several processes the executable takes and returns global arrays over the devices of
    # all of them, where `fn` itself takes this process's (`distributed.global_view`).
    mesh = distributed.device_mesh(distributed.AXIS_NAME)

    def call(*args):
        nonlocal compiled
        if compiled is None:
            lowered = fn.lower(*args)
            try:
                compiled = lowered.compile(compiler_options=options)
            except jax.errors.JaxRuntimeError as error:
                distributed.report(
                    f"Warning: this XLA rejects config.compiler_options {options} ({error}); "
                    "compiling without them"
                )
                compiled = lowered.compile()
        outputs = compiled(*distributed.global_view(args, mesh, distributed.AXIS_NAME))
        return distributed.local_view(outputs, mesh, distributed.AXIS_NAME)

    return call
