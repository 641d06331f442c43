"""Training from ImageNet weights (`config.model.backbone_weights`): the frozen part keeps the
file's values to the bit under AdamW's weight decay while the rest trains, a resumed run needs no
file, the workdir records the file, and a bad file stops the run at startup with one message.

The expectations are the file's own arrays: for a torchvision-layout file and focaljax's input
normalization (torchvision's), the conversion is a renaming and the OIHW -> HWIO transpose."""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from focaljax import detectors
from tests.models import weight_files
from tests.train.conftest import tiny_config
from train import train
from train import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parents[2]
FREEZE_AT = 2  # The stem and C2; C3-C5 train.
# resnet_tiny's architecture (basic blocks, one per stage, width 16) in torchvision's layout.
TINY_STAGES = (1, 1, 1, 1)
TINY_WIDTH = 16


@pytest.fixture(scope="module")
def weight_file(tmp_path_factory):
    """`(path, state dict)` of a torch .pth file of a random resnet_tiny."""
    net = weight_files.random_resnet(
        np.random.default_rng(0), "basic", TINY_STAGES, width=TINY_WIDTH
    )
    state = weight_files.torchvision_state(net)
    path = tmp_path_factory.mktemp("weights") / "resnet_tiny.pth"
    weight_files.write_torch_zip(path, state)
    return path, state


def pretrained_config(data_dir: str, weights: str):
    config = tiny_config(data_dir)  # resnet_tiny with sync_bn: its statistics train.
    config.model.backbone_weights = weights
    config.model.freeze_at = FREEZE_AT
    config.optimizer.name = "adamw"
    # 1000x the usual decay: unmasked, it would move every frozen kernel by 1e-3 in a step.
    config.optimizer.weight_decay = 0.1
    config.schedule.warmup_steps = 0
    config.num_train_steps = 2
    config.checkpoint_every_steps = 2
    config.eval_every_steps = 0
    return config


def torchvision_key(path: tuple[str, ...]) -> str:
    """The state-dict key of a focaljax ResNet variable, e.g. ("stage3_block0", "proj_norm",
    "mean") -> "layer2.0.downsample.1.running_mean"."""
    *modules, leaf = path
    leaf = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean",
            "var": "running_var"}[leaf]
    if modules[0] in ("stem_conv", "stem_norm"):
        return f"{'conv1' if modules[0] == 'stem_conv' else 'bn1'}.{leaf}"
    stage, block = re.fullmatch(r"stage(\d)_block(\d+)", modules[0]).groups()
    layer = modules[1]
    part = {"proj_conv": "downsample.0", "proj_norm": "downsample.1"}.get(layer) or (
        layer.replace("norm", "bn")
    )
    return f"layer{int(stage) - 1}.{block}.{part}.{leaf}"


def backbone_leaves(checkpoint: dict) -> dict[tuple[str, ...], np.ndarray]:
    """Every ResNet variable of a restored checkpoint, params and batch statistics."""
    trees = (checkpoint["params"]["backbone"]["resnet"],
             checkpoint["model_state"]["batch_stats"]["backbone"]["resnet"])
    return {tuple(k.key for k in path): np.asarray(leaf)
            for tree in trees for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def is_frozen(path: tuple[str, ...]) -> bool:
    return path[0].startswith("stem") or path[0].startswith("stage2_")


def restore(workdir: str, step: int) -> dict:
    manager = workdir_lib.checkpoint_manager(workdir, create=False)
    try:
        return manager.restore(step, args=ocp.args.StandardRestore())
    finally:
        manager.close()


def check_backbone(checkpoint: dict, state: dict) -> None:
    """Frozen variables equal to the file's arrays to the bit, all others changed."""
    leaves = backbone_leaves(checkpoint)
    frozen = [path for path in leaves if is_frozen(path)]
    # The stem's conv and norm, stage2's two convs and two norms: a kernel and 4 norm arrays each.
    assert len(frozen) == 1 + 4 + 2 * (1 + 4)
    for path, value in leaves.items():
        expected = state[torchvision_key(path)]
        if path[-1] == "kernel":
            expected = expected.transpose(2, 3, 1, 0)
        if is_frozen(path):
            assert np.array_equal(value, expected), path
        else:
            assert value.shape == expected.shape and not np.array_equal(value, expected), path


def test_frozen_part_keeps_the_files_values_the_rest_trains_and_a_resume_needs_no_file(
    tiny_data_dir, weight_file, tmp_path, capsys
):
    source, state = weight_file
    path = tmp_path / source.name
    path.write_bytes(source.read_bytes())
    data = path.read_bytes()
    workdir = str(tmp_path / "run")
    config = pretrained_config(tiny_data_dir, str(path))

    train.train_and_evaluate(config, workdir)

    output = capsys.readouterr().out
    assert output.count(f"{path} (pth): ") == 1
    assert "unused: fc.bias, fc.weight" in output
    check_backbone(restore(workdir, 2), state)
    with open(os.path.join(workdir, workdir_lib.PRETRAINED_FILE)) as f:
        record = json.load(f)
    assert record.pop("summary").startswith(f"{path} (pth): ")
    assert record == {
        "path": str(path), "format": "pth", "bytes": len(data),
        "sha256": hashlib.sha256(data).hexdigest(), "unused": ["fc.bias", "fc.weight"],
        "notes": [],
    }

    path.unlink()
    config.num_train_steps = 3
    train.train_and_evaluate(config, workdir)

    assert f"{path} (pth)" not in capsys.readouterr().out
    check_backbone(restore(workdir, 3), state)
    with open(os.path.join(workdir, workdir_lib.PRETRAINED_FILE)) as f:
        assert {k: v for k, v in json.load(f).items() if k != "summary"} == record
    # What train.predict does before it runs the network: the workdir alone is enough.
    run_config, info = workdir_lib.read_run_info(workdir)
    assert run_config.model.backbone_weights == str(path)
    detectors.build(run_config.model, num_classes=info.num_classes,
                    image_size=tuple(run_config.dataset.image_size), axis_name=train.AXIS_NAME)
    assert workdir_lib.restore_variables(workdir)[1] == 3


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("backbone", "resnet50",
         r"{path}: the file holds a ResNet with basic blocks and stages \(1, 1, 1, 1\), the "
         r"network is a resnet50 \(bottleneck blocks, stages \(3, 4, 6, 3\)\)\nmissing \(\d+\): "),
        ("norm", "gn",
         r"{path} does not fit config.model \(backbone 'resnet_tiny', norm 'gn', stride_in_1x1 "
         r"False\): the ResNet has norm='gn', which has no place for the batch norm statistics"),
    ],
)
def test_weights_that_do_not_fit_the_config_stop_the_run_before_it_starts(
    weight_file, tmp_path, field, value, message
):
    path, _ = weight_file
    config = pretrained_config("", str(path))
    config.model[field] = value
    workdir = tmp_path / "run"
    pattern = "^config.model.backbone_weights: " + message.format(path=re.escape(str(path)))
    with pytest.raises(ValueError, match=pattern):
        train.train_and_evaluate(config, str(workdir))
    assert not workdir.exists()


def test_a_file_that_is_no_weight_file_ends_the_command_with_one_line_naming_it(tmp_path):
    path = tmp_path / "resnet50.pth"
    path.write_bytes(b"<html>404 Not Found</html>")
    result = subprocess.run(
        [sys.executable, "-m", "train", "--config", "configs/shapes_retinanet.py",
         "--workdir", str(tmp_path / "run"), f"--config.model.backbone_weights={path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},  # With tests/conftest.py's XLA_FLAGS.
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: config.model.backbone_weights: {path}: not a readable zip archive, truncated? "
        "(File is not a zip file)"
    )
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()
