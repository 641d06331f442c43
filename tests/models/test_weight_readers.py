"""Tests of focaljax.models.weight_readers: the formats, their detection, bad files, and the
security boundary (what a pickle in a weight file may make the reader construct).

The files are written by ``tests/models/weight_files.py`` in the real formats (torch.save's zip
archive, Detectron's protocol-2 pickle, Keras applications' .h5), without torch or Keras.
"""

import collections
import doctest
import os
import pickle
import re

import h5py
import numpy as np
import pytest
from safetensors.numpy import save_file

from focaljax.models import weight_readers
from focaljax.models.weight_readers import WeightFileError, detect_format, read_arrays
from tests.models import weight_files


@pytest.fixture(scope="module")
def resnet18_state():
    net = weight_files.random_resnet(np.random.default_rng(2), "basic", (2, 2, 2, 2))
    return weight_files.torchvision_state(net)


@pytest.fixture(scope="module")
def msra_blobs():
    net = weight_files.random_resnet(
        np.random.default_rng(3), "bottleneck", (1, 1, 1, 1), affine_bn=True, num_classes=1000
    )
    return weight_files.msra_blobs(net)


@pytest.fixture(scope="module")
def files(tmp_path_factory, resnet18_state, msra_blobs):
    """A file of each format: {format: path}."""
    folder = tmp_path_factory.mktemp("files")
    save_file(resnet18_state, str(folder / "r18.safetensors"))
    weight_files.write_torch_zip(folder / "r18.pth", resnet18_state)
    with open(folder / "R-50.pkl", "wb") as f:
        # Protocol 2, as Detectron's Python 2 files; NumPy's bytes then go through _codecs.encode.
        pickle.dump(msra_blobs, f, protocol=2)
    net = weight_files.random_resnet(np.random.default_rng(4), "bottleneck", (1, 1, 1, 1))
    weight_files.write_keras_h5(folder / "resnet50_notop.h5", net)
    return {"safetensors": folder / "r18.safetensors", "pth": folder / "r18.pth",
            "msra_pkl": folder / "R-50.pkl", "keras_h5": folder / "resnet50_notop.h5"}


# -- What each format reads ----------------------------------------------------------------------


def test_torch_zip_helper_writes_what_torch_save_writes(tmp_path, resnet18_state):
    """The test helper's file has torch.save's records and pickle opcodes."""
    import pickletools
    import zipfile

    weight_files.write_torch_zip(tmp_path / "r18.pth", resnet18_state)
    with zipfile.ZipFile(tmp_path / "r18.pth") as f:
        names = f.namelist()
        ops = list(pickletools.genops(f.read("archive/data.pkl")))
    assert {"archive/data.pkl", "archive/byteorder", "archive/version", "archive/data/0"} <= set(
        names
    )
    globals_ = {arg for op, arg, _ in ops if op.name == "GLOBAL"}
    assert globals_ == {
        "collections OrderedDict", "torch._utils _rebuild_tensor_v2", "torch FloatStorage",
        "torch LongStorage",
    }
    assert sum(op.name == "BINPERSID" for op, _, _ in ops) == len(resnet18_state)


def test_every_format_reads_the_arrays_the_file_was_written_with(
    tmp_path, files, resnet18_state, msra_blobs
):
    # torch names the archive's folder after the file; views of one storage at offsets and
    # with transposed strides are how slices and transposes are saved.
    weight_files.write_torch_zip(
        tmp_path / "resnet18-f37072fd.pth", resnet18_state, archive="resnet18-f37072fd",
        one_storage=True,
    )
    for path, written in ((files["safetensors"], resnet18_state), (files["pth"], resnet18_state),
                          (tmp_path / "resnet18-f37072fd.pth", resnet18_state),
                          (files["msra_pkl"], msra_blobs)):
        arrays = read_arrays(path)
        assert arrays.keys() == written.keys(), path
        for name, value in written.items():
            assert arrays[name].dtype == np.asarray(value).dtype, (path, name)
            np.testing.assert_array_equal(arrays[name], value, err_msg=f"{path}: {name}")
    keras = read_arrays(files["keras_h5"])
    assert keras["conv1_conv/kernel"].shape == (7, 7, 3, 64)
    assert keras["conv1_bn/moving_variance"].shape == (64,)


# -- Formats and bad files ------------------------------------------------------------------------


def test_format_is_detected_from_the_bytes_not_the_name(tmp_path, files):
    for expected, path in files.items():
        renamed = tmp_path / f"{expected}.weights"
        os.symlink(path, renamed)
        assert detect_format(path) == expected
        assert detect_format(renamed) == expected


@pytest.mark.parametrize("fmt", ["safetensors", "pth", "msra_pkl", "keras_h5"])
def test_a_truncated_file_fails_naming_it(tmp_path, fmt, files):
    data = files[fmt].read_bytes()
    path = tmp_path / f"truncated{files[fmt].suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(WeightFileError, match=rf"^{re.escape(str(path))}: .*truncat"):
        read_arrays(path, format=fmt)


def test_files_of_unsupported_vintages_are_explained(tmp_path):
    legacy = tmp_path / "resnet50-19c8e357.pth"
    legacy.write_bytes(pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + b"\x80\x02K\x01.")
    with pytest.raises(WeightFileError, match=rf"^{re.escape(str(legacy))}: a torch file in "
                                              "the pre-1.6"):
        detect_format(legacy)
    keras3 = tmp_path / "model.weights.h5"
    with h5py.File(keras3, "w") as f:
        f.create_group("layers/conv2d/vars")["0"] = np.zeros(3)
        f.create_group("vars")
    with pytest.raises(WeightFileError, match=rf"^{re.escape(str(keras3))}: a Keras 3 "
                                              r"\.weights\.h5 file"):
        read_arrays(keras3)
    unknown = tmp_path / "weights.bin2"
    unknown.write_bytes(b"GGUF" + bytes(20))
    with pytest.raises(WeightFileError, match=rf"^{re.escape(str(unknown))}: unknown weight "
                                              "file"):
        detect_format(unknown)


def test_an_unknown_format_name_is_refused(files):
    with pytest.raises(ValueError, match=r"format is 'onnx', expected one of"):
        read_arrays(files["pth"], format="onnx")


@pytest.mark.parametrize(
    "obj, match",
    [([np.zeros(2)], r"holds a list, not a dict of arrays"),
     ({"conv1_w": np.zeros(2), "lr": 0.1},
      r"not a dict of arrays: 1 entries are not arrays \(lr\)")],
)
def test_a_pickle_that_is_not_a_dict_of_arrays_is_refused(tmp_path, obj, match):
    path = tmp_path / "other.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(WeightFileError, match=rf"^{re.escape(str(path))}: {match}"):
        read_arrays(path)


# -- The security boundary ------------------------------------------------------------------------


class _RunsACommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _write_pickle(path, fmt, data_pkl):
    """A weight file of ``fmt`` ("msra_pkl" or "pth") whose pickle is ``data_pkl``."""
    if fmt == "msra_pkl":
        path.write_bytes(data_pkl)
    else:
        weight_files.write_torch_zip(path, {}, data_pkl=data_pkl)


@pytest.mark.parametrize("fmt", ["msra_pkl", "pth"])
def test_a_pickle_that_would_run_code_is_refused_before_it_runs(tmp_path, fmt):
    marker = tmp_path / "ran"
    payload = {"conv1_w": _RunsACommand(marker)}
    path = tmp_path / ("evil.pkl" if fmt == "msra_pkl" else "evil.pth")
    _write_pickle(path, fmt, pickle.dumps(payload, protocol=2))
    with pytest.raises(WeightFileError, match=rf"^{re.escape(str(path))}: unsafe or corrupt "
                                              rf"pickle: refused global {os.system.__module__}"
                                              r"\.system"):
        read_arrays(path)
    assert not marker.exists()


# Every global each format's pickle may name: the security boundary, spelled out.
ALLOWED = {
    "msra_pkl": [
        "_codecs.encode", "collections.OrderedDict", "numpy.dtype", "numpy.ndarray",
        *(f"numpy.{core}.multiarray.{name}" for core in ("core", "_core")
          for name in ("_reconstruct", "scalar")),
    ],
    "pth": [
        "collections.OrderedDict", "torch._utils._rebuild_parameter",
        "torch._utils._rebuild_tensor_v2",
        *(f"torch.{kind}Storage" for kind in ("Float", "Double", "Half", "BFloat16", "Long", "Int",
                                              "Short", "Char", "Byte", "Bool")),
    ],
}


@pytest.mark.parametrize(
    "fmt, module, name",
    [("msra_pkl", "numpy", "load"), ("msra_pkl", "builtins", "eval"),
     ("msra_pkl", "torch._utils", "_rebuild_tensor_v2"),
     ("pth", "torch", "load"), ("pth", "torch._utils", "_rebuild_device_tensor_from_numpy"),
     ("pth", "numpy.core.multiarray", "_reconstruct")],
)
def test_a_global_outside_the_formats_table_is_refused_naming_the_allowed_ones(
    tmp_path, fmt, module, name
):
    """Each format resolves only its own globals, even from a module it trusts for others."""
    path = tmp_path / ("other.pkl" if fmt == "msra_pkl" else "other.pth")
    _write_pickle(path, fmt, b"\x80\x02c" + f"{module}\n{name}\n".encode() + b")R.")
    allowed = ", ".join(sorted(ALLOWED[fmt]))
    with pytest.raises(WeightFileError, match=rf"^{re.escape(str(path))}: unsafe or corrupt "
                                              rf"pickle: refused global {re.escape(module)}\."
                                              rf"{name}: a weight file needs only "
                                              rf"{re.escape(allowed)}$"):
        read_arrays(path)


def test_codecs_encode_is_allowed_for_latin1_only(tmp_path):
    path = tmp_path / "utf8.pkl"
    # {"w": _codecs.encode("x", "utf-8")}, as protocol 2 writes bytes, with another encoding.
    path.write_bytes(b"\x80\x02}X\x01\x00\x00\x00wc_codecs\nencode\nX\x01\x00\x00\x00x"
                     b"X\x05\x00\x00\x00utf-8\x86Rs.")
    with pytest.raises(WeightFileError, match=rf"^{re.escape(str(path))}: unsafe or corrupt "
                                              r"pickle: refused _codecs\.encode\(str, 'utf-8'\)"):
        read_arrays(path)


def test_a_torch_pickle_reads_only_storages_of_its_own_archive(tmp_path):
    not_a_storage = tmp_path / "persistent.pth"
    weight_files.write_torch_zip(not_a_storage, {}, data_pkl=b"\x80\x02X\x03\x00\x00\x00abcQ.")
    with pytest.raises(WeightFileError, match=rf"^{re.escape(str(not_a_storage))}: unsafe or "
                                              r"corrupt pickle: refused persistent id 'abc', "
                                              r"expected a storage"):
        read_arrays(not_a_storage)
    # A tensor of 8 floats on a storage of 4: the reader must not read past the record.
    past_the_end = tmp_path / "past_the_end.pth"
    storage = weight_files._Storage("0", np.dtype(np.float32), 4)
    state = collections.OrderedDict(w=weight_files._Tensor(storage, 0, (8,), [1]))
    weight_files.write_torch_zip(past_the_end, {"w": np.zeros(4, np.float32)},
                                 data_pkl=weight_files.torch_pickle(state))
    with pytest.raises(WeightFileError, match=rf"^{re.escape(str(past_the_end))}: unsafe or "
                                              r"corrupt pickle: a tensor of size \(8,\) reaches "
                                              r"element 7 of a storage of 4"):
        read_arrays(past_the_end)


def test_docstring_examples_run():
    results = doctest.testmod(weight_readers, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert results.attempted > 0 and results.failed == 0
