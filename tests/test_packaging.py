"""The installed distribution as users get it: a wheel whose only top-level package is `focaljax`,
the README's loss example running from that wheel in a fresh virtual environment, and the library's
default configs (data set and detectors) importing and building there without a checkout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import sysconfig
import venv
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
         "-w", str(out), ROOT],
        check=True, capture_output=True, text=True, timeout=300,
    )
    (name,) = [n for n in os.listdir(out) if n.endswith(".whl")]
    return str(out / name)


def test_the_wheel_installs_focaljax_only(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert archive.read(top_level).decode().split() == ["focaljax"]
    packages = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(
        ".dist-info")}
    assert packages == {"focaljax"}
    assert "focaljax/losses/classification.py" in names


def _readme_loss_example() -> str:
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    section = readme.split("## The loss API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


DRIVER = """
import numpy as np
import focaljax
features = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 4, 8)), jnp.float32)
labels = jnp.asarray(np.random.default_rng(1).integers(-1, 80, (2, 16)))
weights = jnp.ones((2, 16))
params = ClassHead(num_classes=80).init(jax.random.key(0), features)
loss = float(jax.jit(loss_fn)(params, features, labels, weights))
print(focaljax.__file__)
print(loss)
"""


@pytest.fixture(scope="module")
def fresh_python(wheel, tmp_path_factory) -> tuple[str, str]:
    """The Python of a fresh virtual environment with the wheel installed, and its site-packages."""
    env_dir = tmp_path_factory.mktemp("env")
    venv.create(env_dir, with_pip=False)
    python = str(env_dir / "bin" / "python")
    # The dependencies (jax, flax, ...) come from this environment's site-packages, appended to
    # the fresh one's path; they are not reinstalled. Their .pth files (this checkout's editable
    # install among them) are not processed from an appended path, so only the wheel provides
    # focaljax.
    fresh_site = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()
    with open(os.path.join(fresh_site, "dependencies.pth"), "w") as f:
        f.write(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index",
         "-q", wheel],
        check=True, capture_output=True, text=True, timeout=300,
    )
    return python, fresh_site


def run_outside_the_checkout(python: str, args: list[str], cwd) -> subprocess.CompletedProcess:
    """`python args` in `cwd`, on the CPU, with nothing of the checkout on the path."""
    return subprocess.run(
        [python, *args], cwd=cwd, capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": ""},
    )


def test_the_readme_loss_example_runs_from_the_wheel_in_a_fresh_environment(
    fresh_python, tmp_path
):
    python, fresh_site = fresh_python
    script = tmp_path / "example.py"
    script.write_text(_readme_loss_example() + DRIVER)
    result = run_outside_the_checkout(python, [str(script)], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    location, loss = result.stdout.split()[-2:]
    assert location.startswith(fresh_site), location
    assert float(loss) > 0.0
    for name in ("train", "configs"):
        missing = subprocess.run([python, "-c", f"import {name}"], cwd=tmp_path,
                                 capture_output=True, text=True, timeout=60)
        assert f"No module named '{name}'" in missing.stderr


DEFAULT_CONFIGS = """
import jax
import jax.numpy as jnp
import focaljax
from focaljax import data, detectors
from focaljax.detectors import faster_rcnn, retinanet
print(retinanet.default_config())
dataset = data.default_config()
assert set(dataset) == set(data.FIELDS), sorted(set(dataset) ^ set(data.FIELDS))
data.build(dataset)  # Lazy: nothing is read.
for model in (retinanet.default_config(), faster_rcnn.default_config()):
    detector = detectors.build(model, num_classes=3, image_size=(64, 96))
    batch = {"image": jax.ShapeDtypeStruct((1, 64, 96, 3), jnp.float32)}
    jax.eval_shape(detector.init, jax.random.key(0), batch)
print(focaljax.__file__)
"""


def test_the_library_default_configs_import_and_build_from_the_wheel(fresh_python, tmp_path):
    # The configs the library documents as the start of a model and a data set config, with no
    # configs/ on the path: a detector builds from them for a number of classes and an image size.
    python, fresh_site = fresh_python
    result = run_outside_the_checkout(python, ["-c", DEFAULT_CONFIGS], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1].startswith(fresh_site), result.stdout[-500:]
    assert "name: retinanet" in result.stdout


PREDICTOR_FROM_A_WORKDIR = """
import os
import sys
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import focaljax
from focaljax import data
from focaljax.detectors import retinanet
from focaljax.inference import workdir

workdir_path = sys.argv[1]
model = retinanet.default_config()
model.backbone, model.min_level, model.max_level = "resnet_tiny", 3, 4
model.fpn_channels = model.head_channels = 16
model.head_convs = 1
model.postprocess.score_threshold = 0.0
config = ml_collections.ConfigDict({"model": model, "dataset": data.default_config()})
config.dataset.image_size = (64, 64)
info = data.DatasetInfo("mine", 2, ("tree", "car"), (1, 2), {"train": 1})
detector = workdir.build_detector(config, 2)
# Random variables of the detector's shapes (its own init runs op by op, for half a minute).
shapes = jax.eval_shape(detector.init, jax.random.key(0),
                        {"image": jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)})
rng = np.random.default_rng(0)
variables = jax.tree.map(lambda s: rng.normal(0, 0.1, s.shape).astype(s.dtype), shapes)
# What the trainer leaves: run info, and checkpoints whose params and model_state are the variables.
os.makedirs(workdir_path)
workdir.write_run_info(workdir_path, config, info)
checkpoints = workdir.checkpoint_manager(workdir_path)
checkpoints.save(7, args=ocp.args.StandardSave({"params": variables["params"]}))
checkpoints.wait_until_finished()

predictor = focaljax.Predictor.from_workdir(workdir_path)
image = np.random.default_rng(0).integers(0, 256, (80, 150, 3), np.uint8)
detections = predictor(image)
assert predictor.step == 7 and len(detections) > 0
assert set(detections.class_names) <= {"tree", "car"}
assert detections.boxes[:, 2].max() <= 150 and detections.boxes[:, 3].max() <= 80
print(focaljax.inference.__file__)
"""


def test_the_predictor_reads_a_workdir_from_the_wheel(fresh_python, tmp_path):
    python, fresh_site = fresh_python
    result = run_outside_the_checkout(
        python, ["-c", PREDICTOR_FROM_A_WORKDIR, str(tmp_path / "workdir")], tmp_path
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-1].startswith(fresh_site), result.stdout[-500:]
