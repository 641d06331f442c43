"""`config.compiler_options`: XLA options for the compiled train and evaluation steps.

  step = with_compiler_options(jax.pmap(train_step, axis_name=AXIS_NAME), compiler_options(config))

Under the config's options lie the defaults of the backend the steps run on (`BACKEND_DEFAULTS`),
so that a run gets the faster of XLA's paths without its user having to know them; an option the
config sets, or that `XLA_FLAGS` sets, wins over the default. On CPU that is
`xla_cpu_experimental_ynn_fusion_type=""`: XLA:CPU's own convolutions instead of YNNPACK's, which
make the R50-FPN train steps of the COCO configs 1.3x-1.5x faster (BENCHMARKS.md, "The CPU
convolution path, chosen by backend") with results equal to float32 rounding (the sums run in
another order). GPU and TPU get no default: their steps compile with the config's options alone,
as before. To keep YNNPACK's convolutions on CPU, pass the option in `XLA_FLAGS`, or set it in
the config to XLA's own default, in jaxlib 0.10.2 the one string
`LIBRARY_FUSION_TYPE_DOT,LIBRARY_FUSION_TYPE_ELTWISE,LIBRARY_FUSION_TYPE_REDUCE`
(`--config.compiler_options.xla_cpu_experimental_ynn_fusion_type=...`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections

from focaljax.errors import ConfigError
from train import distributed

# XLA options that a backend's steps get unless the config or XLA_FLAGS sets them (the module
# docstring says why).
BACKEND_DEFAULTS: Mapping[str, Mapping[str, str | bool | int | float]] = {
    "cpu": {"xla_cpu_experimental_ynn_fusion_type": ""},
}


def compiler_options(
    config: ml_collections.ConfigDict, backend: str | None = None
) -> dict[str, str | bool | int | float]:
    """The XLA options (name -> value) of the steps of `config` on `backend`
    (`jax.default_backend()` when None): `config.compiler_options` ({} for none) over
    `BACKEND_DEFAULTS[backend]`, less the defaults that `XLA_FLAGS` sets itself."""
    explicit = _explicit_options(config)
    if backend is None:
        backend = jax.default_backend()
    xla_flags = os.environ.get("XLA_FLAGS", "")
    defaults = {
        name: value
        for name, value in BACKEND_DEFAULTS.get(backend, {}).items()
        if not re.search(rf"(^|\s)--{name}(=|\s|$)", xla_flags)
    }
    return {**defaults, **explicit}


def _explicit_options(config: ml_collections.ConfigDict) -> dict[str, str | bool | int | float]:
    options = config.compiler_options
    if isinstance(options, ml_collections.ConfigDict):
        options = options.to_dict()
    if not isinstance(options, Mapping) or not all(
        isinstance(k, str) and isinstance(v, (str, bool, int, float)) for k, v in options.items()
    ):
        raise ConfigError(
            f"config.compiler_options is {options!r}, expected a mapping from XLA option names "
            "to strings or numbers, e.g. {'xla_cpu_experimental_ynn_fusion_type': ''}"
        )
    return dict(options)


_COMPILED = 0  # Steps made by `with_compiler_options` in this process, for their barriers' names.


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
    global _COMPILED
    _COMPILED += 1
    # The same on every process: they build their steps in the same order.
    barrier_name = f"compiled step {_COMPILED}"
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
            # The first run of the step creates its collective contexts; a process that arrives
            # there more than 30 s after another (compiling slowly) fails Gloo's set-up.
            distributed.wait_for_every_process(barrier_name)
        outputs = compiled(*distributed.global_view(args, mesh, distributed.AXIS_NAME))
        return distributed.local_view(outputs, mesh, distributed.AXIS_NAME)

    return call
