"""Test-session set-up: four CPU devices, so that pmap paths run without an accelerator."""

import atexit
import os
import shutil
import tempfile

# Must happen before jax is imported anywhere in the test session (and reach the subprocesses
# that tests start). The tests' tiny programs spend most of their time in XLA's compiler, so the
# tests compile for speed of compilation:
# - LLVM at -O0 halves the CPU time of a training test (tests/data/test_coco_folder.py's short
#   run: 57 s -> 28 s);
# - XLA:CPU's older loop emitters instead of its MLIR fusion emitters compile faster:
#   tests/train/test_train_step.py with tests/detectors/test_faster_rcnn.py took 93-95 s instead
#   of 118-141 s (117-120 s of CPU instead of 161-188 s; runs alternated, 2026-12-07), with the
#   gradient of a tiny RetinaNet step bit for bit that of -O0 alone.
# -O0's numbers differ from -O2's by float32 rounding (1-4 ulp in a conv net's gradient,
# measured), within every test's tolerance; programs compared bit for bit are compiled alike.
# Benchmarks and real runs keep XLA's defaults.
COMPILER_FLAGS = {"--xla_backend_optimization_level": "0",
                  "--xla_cpu_use_fusion_emitters": "false"}
COMPILER_XLA_FLAGS = " ".join(f"{name}={value}" for name, value in COMPILER_FLAGS.items())
_TEST_XLA_FLAGS = {"--xla_force_host_platform_device_count": "4", **COMPILER_FLAGS}
_flags = os.environ.get("XLA_FLAGS", "").split()
os.environ["XLA_FLAGS"] = " ".join(
    _flags + [f"{name}={value}" for name, value in _TEST_XLA_FLAGS.items()
              if not any(flag.startswith(name + "=") for flag in _flags)])
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# One persistent compilation cache for the session, its workers and the commands tests start
# (the entry points' --compilation_cache follows it), never the user's own.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="focaljax-tests-jax-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
