"""ImageNet weight files read into ``{name: array}`` dicts, without torch and without running code
from the file: the security boundary of :mod:`focaljax.models.pretrained`.

:func:`read_arrays` reads one of ``FORMATS`` (:func:`detect_format` tells which from the first
bytes) and returns the file's arrays under the file's own names, as the file stores them;
:mod:`focaljax.models.pretrained` maps those names and layouts onto a focaljax ResNet.

* ``"safetensors"``: a torchvision / timm state dict saved as ``.safetensors`` (timm's and the
  Hugging Face hub's format), read with ``safetensors.numpy``.
* ``"pth"``: a torchvision / timm state dict saved by ``torch.save`` (torch >= 1.6 zip
  archive: ``<name>/data.pkl`` and raw little-endian storages under ``<name>/data/``).
* ``"msra_pkl"``: detectron2's ImageNet ``R-50.pkl`` / ``R-101.pkl`` (the MSRA caffe weights, a
  latin1 pickle of NumPy arrays, possibly under ``"blobs"`` or ``"model"``).
* ``"keras_h5"``: Keras applications ``ResNet50`` / ``ResNet101`` weights in the ``.h5`` layout of
  the files Keras downloads (``resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5``), of
  ``model.save_weights`` in Keras 2, or of a whole model saved as ``.h5``, read with ``h5py``.
  (Keras 3's ``.weights.h5`` names layers by class and position, ``conv2d_12``, not by layer
  name, so it cannot be matched safely: load it into ``keras.applications.ResNet50`` and save
  that as ``.h5``.)

What a file may make this process do (the security boundary). A pickle runs code by naming a
global (a module attribute) that unpickling then calls; both pickle formats are read by an
unpickler whose ``find_class`` resolves only a fixed table of globals and refuses any other
before it is looked up, let alone called:

* ``.pth`` (``data.pkl``): ``torch._utils._rebuild_tensor_v2`` and ``_rebuild_parameter``,
  mapped to NumPy functions here that check their arguments and copy a strided view of a storage
  (never reaching past its end); the ``torch.*Storage`` types, mapped to dtypes; and
  ``collections.OrderedDict``. Its persistent ids must be storages of the same archive whose byte
  count matches their element count. torch is never imported.
* ``.pkl``: NumPy's own array and scalar reconstruction (``numpy.core.multiarray`` or
  ``numpy._core.multiarray`` ``_reconstruct`` and ``scalar``, ``numpy.ndarray``,
  ``numpy.dtype``), ``_codecs.encode`` of a ``str`` to latin1 only (how Python 3 reads Python 2's
  bytes), and ``collections.OrderedDict``.

A refused global, a malformed tensor or storage, and every other failure to read a file raise
:class:`WeightFileError` naming the file; a file whose top level is not a dict of arrays is
refused too. safetensors and HDF5 files hold data only and are read by their own libraries.
"""

from __future__ import annotations

import collections
import dataclasses
import io
import math
import os
import pickle
import re
import zipfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import ml_dtypes
import numpy as np

from focaljax.errors import ConfigError

__all__ = ["FORMATS", "WeightFileError", "detect_format", "read_arrays"]

FORMATS = ("safetensors", "pth", "msra_pkl", "keras_h5")

_EXTENSIONS = {
    ".safetensors": "safetensors",
    ".pth": "pth",
    ".pt": "pth",
    ".bin": "pth",
    ".pkl": "msra_pkl",
    ".h5": "keras_h5",
    ".hdf5": "keras_h5",
}


class WeightFileError(ConfigError):
    """A weight file that cannot be read, or whose arrays do not fit the network."""


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format of the weight file at ``path``, one of ``FORMATS``, from its first bytes.

    The extension decides only when the bytes are not recognized (``.safetensors``, ``.pth`` /
    ``.pt`` / ``.bin``, ``.pkl``, ``.h5`` / ``.hdf5``).

    Examples:
      >>> import tempfile, pathlib
      >>> file = pathlib.Path(tempfile.mkdtemp()) / "weights"
      >>> _ = file.write_bytes(b"\\x89HDF\\r\\n\\x1a\\n" + bytes(8))
      >>> detect_format(file)
      'keras_h5'
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(16)
        size = os.path.getsize(path)
    except OSError as error:
        raise WeightFileError(f"{path}: cannot be read ({error})") from None
    if not head:
        raise WeightFileError(f"{path}: the file is empty")
    if head.startswith(b"PK\x03\x04"):
        return "pth"
    if head.startswith(b"\x89HDF\r\n\x1a\n"):
        return "keras_h5"
    if len(head) > 8 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return "safetensors"
    if head[:1] == b"\x80":
        if head[2:4] == b"\x8a\x0a":  # the pickled magic number that opens a torch < 1.6 file
            raise WeightFileError(
                f"{path}: a torch file in the pre-1.6 serialization (not a zip archive), which "
                "is not read here; save its state dict again with a recent torch "
                "(torch.save, or safetensors.torch.save_file)"
            )
        return "msra_pkl"
    extension = os.path.splitext(path)[1].lower()
    if extension in _EXTENSIONS:
        return _EXTENSIONS[extension]
    raise WeightFileError(
        f"{path}: unknown weight file (first bytes {head[:8]!r}); expected a .safetensors, "
        f"torch .pth zip, detectron2 .pkl or Keras .h5 file, or pass format= one of {FORMATS}"
    )


def read_arrays(path: str | os.PathLike[str], format: str | None = None) -> dict[str, np.ndarray]:
    """The arrays of the weight file at ``path``, under the file's own names and as it stores
    them (layout and dtype), read without running code from the file (see the module docstring).

    Args:
      path: the weight file.
      format: one of ``FORMATS``; None detects it with :func:`detect_format`.

    Raises:
      WeightFileError: naming the file and what was wrong (unreadable, truncated, a refused
        pickle global, not a dict of arrays).

    Examples:
      >>> import tempfile, pathlib, numpy as np
      >>> from safetensors.numpy import save_file
      >>> file = pathlib.Path(tempfile.mkdtemp()) / "stem.safetensors"
      >>> save_file({"conv1.weight": np.ones((64, 3, 7, 7), np.float32)}, str(file))
      >>> {name: array.shape for name, array in read_arrays(file).items()}
      {'conv1.weight': (64, 3, 7, 7)}
    """
    path = os.fspath(path)
    if format is None:
        format = detect_format(path)
    elif format not in FORMATS:
        raise ConfigError(f"format is {format!r}, expected one of {FORMATS}")
    return _READERS[format](path)


# -- Readers: path -> {name: np.ndarray}; every failure is a WeightFileError naming the file. ------


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    try:
        return dict(load_file(path))
    except (SafetensorError, OSError, ValueError, TypeError) as error:
        raise WeightFileError(
            f"{path}: not a readable .safetensors file, truncated or corrupt? ({error})"
        ) from None


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals in ``allowed``; any other one is refused before it is used."""

    allowed: Mapping[tuple[str, str], Any] = {}

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refused global {module}.{name}: a weight file needs only "
                + ", ".join(sorted({f"{m}.{n}" for m, n in self.allowed}))
            ) from None


def _latin1_encode(text: str, encoding: str = "utf-8") -> bytes:
    """``_codecs.encode`` as Python 3's protocol-2 pickles use it for bytes, latin1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError(f"refused _codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


# The functions NumPy's own pickles of arrays and scalars call, named by NumPy 1 or 2.
_NUMPY_RECONSTRUCT = np.zeros(0).__reduce__()[0]
_NUMPY_SCALAR = np.float32(0).__reduce__()[0]


class _NumpyUnpickler(_RestrictedUnpickler):
    allowed = {
        **{
            (module, name): value
            for module in ("numpy.core.multiarray", "numpy._core.multiarray")
            for name, value in (("_reconstruct", _NUMPY_RECONSTRUCT), ("scalar", _NUMPY_SCALAR))
        },
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
        ("collections", "OrderedDict"): collections.OrderedDict,
    }


def _unpickle(
    path: str, unpickler: Callable[[Any], pickle.Unpickler], data: io.BufferedIOBase
) -> Any:
    try:
        return unpickler(data).load()
    except WeightFileError:
        raise
    except pickle.UnpicklingError as error:
        raise WeightFileError(f"{path}: unsafe or corrupt pickle: {error}") from None
    except EOFError:
        raise WeightFileError(f"{path}: the pickle ends early; the file is truncated") from None
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError,
            MemoryError, UnicodeDecodeError) as error:
        raise WeightFileError(f"{path}: corrupt pickle ({type(error).__name__}: {error})") from None


def _state_dict(path: str, obj: Any, wrappers: Sequence[str]) -> dict[str, np.ndarray]:
    """The ``{name: array}`` dict in ``obj``, possibly under one of the ``wrappers`` keys."""
    if isinstance(obj, Mapping):
        for key in wrappers:
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise WeightFileError(f"{path}: holds a {type(obj).__name__}, not a dict of arrays")
    others = sorted(str(k) for k, v in obj.items() if not isinstance(v, np.ndarray))
    if others:
        raise WeightFileError(
            f"{path}: not a dict of arrays: {len(others)} entries are not arrays "
            f"({', '.join(others[:10])}{', ...' if len(others) > 10 else ''})"
        )
    return {str(k): v for k, v in obj.items()}


def _read_msra_pkl(path: str) -> dict[str, np.ndarray]:
    with open(path, "rb") as f:
        obj = _unpickle(path, lambda data: _NumpyUnpickler(data, encoding="latin1"), f)
    return _state_dict(path, obj, ("blobs", "model"))


_TORCH_STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclasses.dataclass(frozen=True)
class _StorageType:
    dtype: np.dtype


@dataclasses.dataclass(frozen=True)
class _Storage:
    data: np.ndarray  # one-dimensional, native byte order


def _is_int_tuple(value: Any) -> bool:
    return isinstance(value, tuple) and all(isinstance(v, int) and v >= 0 for v in value)


def _rebuild_tensor(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> np.ndarray:
    """``torch._utils._rebuild_tensor_v2`` for NumPy: a copy of the strided view of a storage."""
    del requires_grad, backward_hooks, metadata
    if not (isinstance(storage, _Storage) and isinstance(storage_offset, int)
            and storage_offset >= 0 and _is_int_tuple(size) and _is_int_tuple(stride)
            and len(size) == len(stride)):
        raise pickle.UnpicklingError("a tensor with malformed storage, offset, size or stride")
    if math.prod(size) == 0:
        return np.zeros(size, storage.data.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride, strict=True))
    if last >= storage.data.size:
        raise pickle.UnpicklingError(
            f"a tensor of size {size} reaches element {last} of a storage of {storage.data.size}"
        )
    itemsize = storage.data.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage.data[storage_offset:], shape=size, strides=tuple(s * itemsize for s in stride)
    )
    return np.array(view)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any) -> np.ndarray:
    del requires_grad, backward_hooks
    if not isinstance(data, np.ndarray):
        raise pickle.UnpicklingError("a parameter whose data is not a tensor")
    return data


class _TorchUnpickler(_RestrictedUnpickler):
    """Unpickles a torch zip archive's ``data.pkl``, reading storages from the archive."""

    allowed = {
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("collections", "OrderedDict"): collections.OrderedDict,
        **{("torch", name): _StorageType(np.dtype(dtype))
           for name, dtype in _TORCH_STORAGE_DTYPES.items()},
    }

    def __init__(self, data: io.BufferedIOBase, archive: zipfile.ZipFile, prefix: str,
                 byteorder: str) -> None:
        super().__init__(data, encoding="utf-8")
        self._archive = archive
        self._prefix = prefix
        self._byteorder = byteorder
        self._storages: dict[str, _Storage] = {}

    def persistent_load(self, pid: Any) -> _Storage:
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
                and isinstance(pid[1], _StorageType) and isinstance(pid[2], str)
                and isinstance(pid[4], int) and pid[4] >= 0):
            raise pickle.UnpicklingError(f"refused persistent id {pid!r:.100}, expected a storage")
        _, storage_type, key, _, numel = pid
        if key not in self._storages:
            name = f"{self._prefix}data/{key}"
            try:
                raw = self._archive.read(name)
            except KeyError:
                raise pickle.UnpicklingError(f"the storage {name} is not in the archive") from None
            dtype = storage_type.dtype.newbyteorder(self._byteorder)
            if len(raw) != numel * dtype.itemsize:
                raise pickle.UnpicklingError(
                    f"the storage {name} has {len(raw)} bytes, expected {numel} x {dtype.itemsize}"
                )
            data = np.frombuffer(raw, dtype).astype(storage_type.dtype.newbyteorder("="))
            self._storages[key] = _Storage(data)
        return self._storages[key]


def _read_pth(path: str) -> dict[str, np.ndarray]:
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise WeightFileError(
            f"{path}: not a readable zip archive, truncated? ({error})"
        ) from None
    with archive:
        pickles = [n for n in archive.namelist() if re.fullmatch(r"[^/]+/data\.pkl", n)]
        if len(pickles) != 1:
            raise WeightFileError(
                f"{path}: a zip archive but not a torch.save file: expected one <name>/data.pkl, "
                f"found {pickles or 'none'}"
            )
        prefix = pickles[0][: -len("data.pkl")]
        if f"{prefix}constants.pkl" in archive.namelist():
            raise WeightFileError(
                f"{path}: a TorchScript archive (torch.jit.save), not a state dict; save "
                "model.state_dict() with torch.save"
            )
        try:
            byteorder = (
                archive.read(f"{prefix}byteorder").decode()
                if f"{prefix}byteorder" in archive.namelist() else "little"
            )
            data = archive.read(pickles[0])
        except (zipfile.BadZipFile, OSError, UnicodeDecodeError) as error:
            raise WeightFileError(f"{path}: corrupt zip archive ({error})") from None
        if byteorder not in ("little", "big"):
            raise WeightFileError(f"{path}: unknown byteorder record {byteorder!r}")
        obj = _unpickle(
            path,
            lambda f: _TorchUnpickler(f, archive, prefix, "<" if byteorder == "little" else ">"),
            io.BytesIO(data),
        )
    return _state_dict(path, obj, ("state_dict", "model"))


def _read_keras_h5(path: str) -> dict[str, np.ndarray]:
    import h5py

    def text(value: Any) -> str:
        return value.decode("utf8") if isinstance(value, bytes) else str(value)

    try:
        with h5py.File(path, "r") as f:
            root = f.get("model_weights", f)
            if "layer_names" not in root.attrs:
                if "layers" in f and "vars" in f:
                    raise WeightFileError(
                        f"{path}: a Keras 3 .weights.h5 file, whose layers are named by class "
                        "and position (conv2d_12), not by layer name; load it into "
                        "keras.applications.ResNet50 and save that with model.save('x.h5')"
                    )
                raise WeightFileError(
                    f"{path}: an HDF5 file without Keras weights (no 'layer_names' attribute)"
                )
            arrays = {}
            for layer in map(text, root.attrs["layer_names"]):
                group = root[layer]
                for weight in map(text, group.attrs.get("weight_names", [])):
                    name = weight.split("/")[-1].split(":")[0]
                    arrays[f"{layer}/{name}"] = np.asarray(group[weight])
            return arrays
    except WeightFileError:
        raise
    except (OSError, KeyError, ValueError, TypeError) as error:
        raise WeightFileError(
            f"{path}: not a readable Keras .h5 file, truncated or corrupt? ({error})"
        ) from None


_READERS: dict[str, Callable[[str], dict[str, np.ndarray]]] = {
    "safetensors": _read_safetensors,
    "pth": _read_pth,
    "msra_pkl": _read_msra_pkl,
    "keras_h5": _read_keras_h5,
}
