"""`train.compilation.compiler_options`: the config's XLA options over the backend's defaults."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import pytest

from configs import default
from train import compilation

YNN = "xla_cpu_experimental_ynn_fusion_type"


def _config(**options) -> ml_collections.ConfigDict:
    config = default.get_config()
    config.compiler_options = ml_collections.ConfigDict(options)
    return config


@pytest.fixture(autouse=True)
def _no_ynn_in_xla_flags(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")


def test_a_cpu_run_gets_xla_cpus_own_convolutions_without_asking():
    assert compilation.compiler_options(_config(), backend="cpu") == {YNN: ""}


@pytest.mark.parametrize("backend", ["gpu", "cuda", "rocm", "tpu"])
def test_accelerator_runs_get_only_the_configs_options(backend):
    assert compilation.compiler_options(_config(), backend=backend) == {}
    assert compilation.compiler_options(
        _config(xla_gpu_enable_latency_hiding_scheduler=True), backend=backend
    ) == {"xla_gpu_enable_latency_hiding_scheduler": True}


def test_an_option_the_config_sets_wins_over_the_backend_default():
    config = _config(**{YNN: "LIBRARY_FUSION_TYPE_DOT"})
    assert compilation.compiler_options(config, backend="cpu") == {YNN: "LIBRARY_FUSION_TYPE_DOT"}


def test_the_configs_other_options_join_the_backend_default():
    config = _config(xla_cpu_enable_fast_math=False)
    assert compilation.compiler_options(config, backend="cpu") == {
        YNN: "", "xla_cpu_enable_fast_math": False,
    }


@pytest.mark.parametrize("flag", [f"--{YNN}=", f"--{YNN}=LIBRARY_FUSION_TYPE_DOT", f"--{YNN}"])
def test_an_option_xla_flags_sets_is_left_to_xla_flags(monkeypatch, flag):
    monkeypatch.setenv("XLA_FLAGS", f"--xla_force_host_platform_device_count=4 {flag}")
    assert compilation.compiler_options(_config(), backend="cpu") == {}


def test_a_longer_flag_that_starts_with_the_options_name_is_not_the_option(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", f"--{YNN}_other=1")
    assert compilation.compiler_options(_config(), backend="cpu") == {YNN: ""}


def test_the_backend_is_jaxs_default_unless_named():
    assert compilation.compiler_options(_config()) == compilation.compiler_options(
        _config(), backend=jax.default_backend()
    )


def test_the_cpu_default_compiles_convolutions_without_ynnpack():
    images = jnp.ones((2, 16, 16, 8))
    kernel = jnp.ones((3, 3, 8, 8))
    lowered = jax.jit(
        lambda x, w: jnp.sum(
            jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC")) ** 2
        )
    ).lower(images, kernel)
    options = compilation.compiler_options(_config(), backend="cpu")
    assert "ynn_fusion" in lowered.compile().as_text()  # XLA:CPU's default: YNNPACK.
    assert "ynn_fusion" not in lowered.compile(compiler_options=options).as_text()
