"""Weight files and a reference forward pass for the pretrained-weights tests, without torch.

``random_resnet`` draws the weights of a ResNet in torchvision's published definition
(``torchvision/models/resnet.py``: kernels OIHW, a ``downsample`` projection where the stride or
the width changes). ``reference_features`` runs that network in float64 NumPy, written from the
same definition and independent of focaljax. ``torchvision_state`` and ``msra_blobs`` name the
same arrays as torchvision's ``state_dict()`` and the MSRA / detectron2 ``R-50.pkl`` do, and
``write_torch_zip`` writes a state dict in the layout of ``torch.save`` (torch >= 1.6,
``torch/serialization.py``: ``_save``); ``write_keras_h5`` writes the network in the ``.h5`` layout
of the files Keras applications download (Keras 2's ``save_weights``).
"""

import collections
import pickle
import zipfile

import h5py
import numpy as np

EXPANSION = {"basic": 1, "bottleneck": 4}
BN_EPS = 1e-5


def _bn(rng, channels, affine):
    if affine:  # caffe2's AffineChannel: y = x * s + b
        return {"s": rng.uniform(0.5, 1.5, channels), "b": rng.normal(0, 0.2, channels)}
    return {
        "weight": rng.uniform(0.5, 1.5, channels),
        "bias": rng.normal(0, 0.2, channels),
        "running_mean": rng.normal(0, 0.2, channels),
        "running_var": rng.uniform(0.5, 1.5, channels),
    }


def _conv(rng, out, inp, k):
    return rng.normal(0, np.sqrt(2.0 / (inp * k * k)), (out, inp, k, k))


def random_resnet(rng, block, stage_sizes, *, affine_bn=False, num_classes=10, width=64):
    """Weights of a torchvision-style ResNet: ``{"stem": ..., "stages": [[block, ...], ...],
    "fc": ...}``, each block ``{"conv1": OIHW, "bn1": {...}, ..., "downsample": (conv, bn)}``.
    ``width`` is the stem's channels (64 in every published ResNet)."""
    net = {"stem": {"conv": _conv(rng, width, 3, 7), "bn": _bn(rng, width, affine_bn)},
           "stages": []}
    inplanes = width
    for stage, blocks in enumerate(stage_sizes):
        planes = width * 2**stage
        layer = []
        for i in range(blocks):
            stride = 2 if stage > 0 and i == 0 else 1
            out = planes * EXPANSION[block]
            if block == "basic":
                convs = [(planes, inplanes, 3), (planes, planes, 3)]
            else:
                convs = [(planes, inplanes, 1), (planes, planes, 3), (out, planes, 1)]
            unit = {}
            for n, (o, c, k) in enumerate(convs, start=1):
                unit[f"conv{n}"] = _conv(rng, o, c, k)
                unit[f"bn{n}"] = _bn(rng, o, affine_bn)
            if stride != 1 or inplanes != out:
                unit["downsample"] = (_conv(rng, out, inplanes, 1), _bn(rng, out, affine_bn))
            layer.append(unit)
            inplanes = out
        net["stages"].append(layer)
    net["fc"] = {"weight": rng.normal(0, 0.01, (num_classes, inplanes)),
                 "bias": np.zeros(num_classes)}
    return net


def _conv_forward(x, w, stride, pad):
    """torch's Conv2d (symmetric zero padding, no bias) on NHWC ``x`` with an OIHW kernel."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    k = w.shape[-1]
    windows = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(1, 2))
    return np.tensordot(windows[:, ::stride, ::stride], w, axes=([3, 4, 5], [1, 2, 3]))


def _bn_forward(x, bn):
    if "s" in bn:
        return x * bn["s"] + bn["b"]
    return (x - bn["running_mean"]) / np.sqrt(bn["running_var"] + BN_EPS) * bn["weight"] + bn[
        "bias"
    ]


def _max_pool(x):
    """MaxPool2d(kernel_size=3, stride=2, padding=1): padding never wins the max."""
    x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    windows = np.lib.stride_tricks.sliding_window_view(x, (3, 3), axis=(1, 2))
    return windows[:, ::2, ::2].max(axis=(-2, -1))


def reference_features(net, x, *, stride_in_1x1=False):
    """C2..C5 of ``net`` on NHWC float64 ``x``, in evaluation mode. ``stride_in_1x1`` puts a
    bottleneck's stride in conv1 (MSRA) instead of conv2 (torchvision v1.5)."""
    relu = lambda v: np.maximum(v, 0.0)
    x = relu(_bn_forward(_conv_forward(x, net["stem"]["conv"], 2, 3), net["stem"]["bn"]))
    x = _max_pool(x)
    features = {}
    for stage, layer in enumerate(net["stages"]):
        for i, unit in enumerate(layer):
            stride = 2 if stage > 0 and i == 0 else 1
            y = x
            if "conv3" in unit:
                strides = (stride, 1, 1) if stride_in_1x1 else (1, stride, 1)
            else:
                strides = (stride, 1)
            for n, s in enumerate(strides, start=1):
                w = unit[f"conv{n}"]
                y = _bn_forward(_conv_forward(y, w, s, w.shape[-1] // 2), unit[f"bn{n}"])
                if n < len(strides):
                    y = relu(y)
            if "downsample" in unit:
                conv, bn = unit["downsample"]
                x = _bn_forward(_conv_forward(x, conv, stride, 0), bn)
            x = relu(x + y)
        features[f"C{stage + 2}"] = x
    return features


def torchvision_state(net):
    """``net`` named as torchvision's ``ResNet.state_dict()``, float32, with the int64
    ``num_batches_tracked`` counters BN keeps."""
    state = {}

    def add_bn(prefix, bn):
        for key, value in bn.items():
            state[f"{prefix}.{key}"] = value.astype(np.float32)
        state[f"{prefix}.num_batches_tracked"] = np.array(7, np.int64)

    state["conv1.weight"] = net["stem"]["conv"].astype(np.float32)
    add_bn("bn1", net["stem"]["bn"])
    for stage, layer in enumerate(net["stages"]):
        for i, unit in enumerate(layer):
            prefix = f"layer{stage + 1}.{i}"
            for key, value in unit.items():
                if key == "downsample":
                    state[f"{prefix}.downsample.0.weight"] = value[0].astype(np.float32)
                    add_bn(f"{prefix}.downsample.1", value[1])
                elif key.startswith("conv"):
                    state[f"{prefix}.{key}.weight"] = value.astype(np.float32)
                else:
                    add_bn(f"{prefix}.{key}", value)
    state["fc.weight"] = net["fc"]["weight"].astype(np.float32)
    state["fc.bias"] = net["fc"]["bias"].astype(np.float32)
    return state


def msra_blobs(net):
    """``net`` named as the blobs of MSRA's ``R-50.pkl`` (detectron2's ImageNetPretrained):
    ``conv1_w``, ``res_conv1_bn_{s,b}``, ``res{2-5}_{i}_branch{1,2a,2b,2c}_{w,bn_s,bn_b}``, and
    caffe2's ``*_momentum`` blobs, which detectron2 drops."""
    blobs = {}
    suffix = {"s": "s", "b": "b", "weight": "gamma", "bias": "beta",
              "running_mean": "running_mean", "running_var": "running_var"}

    def add_bn(prefix, bn):
        for key, value in bn.items():
            blobs[f"{prefix}_{suffix[key]}"] = value.astype(np.float32)

    blobs["conv1_w"] = net["stem"]["conv"].astype(np.float32)
    add_bn("res_conv1_bn", net["stem"]["bn"])
    for stage, layer in enumerate(net["stages"]):
        for i, unit in enumerate(layer):
            prefix = f"res{stage + 2}_{i}"
            for key, value in unit.items():
                if key == "downsample":
                    blobs[f"{prefix}_branch1_w"] = value[0].astype(np.float32)
                    add_bn(f"{prefix}_branch1_bn", value[1])
                else:
                    branch = "branch2" + "abc"[int(key[-1]) - 1]
                    if key.startswith("conv"):
                        blobs[f"{prefix}_{branch}_w"] = value.astype(np.float32)
                        blobs[f"{prefix}_{branch}_w_momentum"] = np.zeros_like(value, np.float32)
                    else:
                        add_bn(f"{prefix}_{branch}_bn", value)
    blobs["fc1000_w"] = net["fc"]["weight"].astype(np.float32)
    blobs["fc1000_b"] = net["fc"]["bias"].astype(np.float32)
    return blobs


def write_keras_h5(path, net):
    """Writes ``net`` (statistics-form BN) as the ``.h5`` of Keras applications' ``ResNet50``:
    ``layer_names`` at the root, one group per layer whose ``weight_names`` end in ``:0``;
    ``conv1_conv``, ``conv1_bn``, ``conv{2-5}_block{j}_{1,2,3}_{conv,bn}`` and ``_0_`` for the
    projection shortcut; HWIO kernels, every conv with a bias (zero here, so that the network is
    ``net``'s), BN as gamma, beta, moving_mean, moving_variance with Keras' eps 1.001e-5 standing
    for ``net``'s 1e-5 (the variances are stored 1e-8 smaller)."""
    layers = {}

    def add(name, conv, bn):
        layers[f"{name}_conv"] = {"kernel": conv.transpose(2, 3, 1, 0),
                                  "bias": np.zeros(conv.shape[0])}
        layers[f"{name}_bn"] = {"gamma": bn["weight"], "beta": bn["bias"],
                                "moving_mean": bn["running_mean"],
                                "moving_variance": bn["running_var"] - 1e-8}

    add("conv1", net["stem"]["conv"], net["stem"]["bn"])
    for stage, layer in enumerate(net["stages"]):
        for i, unit in enumerate(layer):
            prefix = f"conv{stage + 2}_block{i + 1}"
            if "downsample" in unit:
                add(f"{prefix}_0", *unit["downsample"])
            for n in range(1, 4 if "conv3" in unit else 3):
                add(f"{prefix}_{n}", unit[f"conv{n}"], unit[f"bn{n}"])
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [name.encode() for name in layers]
        for name, weights in layers.items():
            group = f.create_group(name)
            group.attrs["weight_names"] = [f"{name}/{w}:0".encode() for w in weights]
            for w, value in weights.items():
                group[f"{name}/{w}:0"] = np.asarray(value, np.float32)


# -- torch.save's zip layout -------------------------------------------------------------------

_STORAGE_NAMES = {
    np.dtype(np.float32): "FloatStorage",
    np.dtype(np.float64): "DoubleStorage",
    np.dtype(np.float16): "HalfStorage",
    np.dtype(np.int64): "LongStorage",
}


class _Global:
    """``module.name`` written as pickle's GLOBAL opcode without importing it (torch is absent).

    Callable only so that the pickler accepts it as the function of a reduce tuple.
    """

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):
        raise TypeError("a stand-in for a torch global")


class _Storage:
    def __init__(self, key, dtype, numel):
        self.key, self.dtype, self.numel = key, dtype, numel


class _Tensor:
    """Pickles as ``torch.Tensor.__reduce_ex__`` does: ``_rebuild_tensor_v2(storage, offset,
    size, stride, requires_grad, OrderedDict())`` with the storage as a persistent id."""

    def __init__(self, storage, offset, shape, stride):
        self.args = (storage, offset, tuple(shape), tuple(stride), False)

    def __reduce_ex__(self, protocol):
        return (_GLOBALS[("torch._utils", "_rebuild_tensor_v2")],
                (*self.args, collections.OrderedDict()))


_GLOBALS = {("torch._utils", "_rebuild_tensor_v2"): _Global("torch._utils", "_rebuild_tensor_v2")}
_GLOBALS.update({("torch", n): _Global("torch", n) for n in _STORAGE_NAMES.values()})


class _TorchPickler(pickle._Pickler):  # the Python pickler, whose dispatch table can be extended
    dispatch = dict(pickle._Pickler.dispatch)

    def _save_global_ref(self, obj):
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[_Global] = _save_global_ref

    def persistent_id(self, obj):
        # torch/serialization.py _save: ("storage", storage_type, key, location, numel).
        if isinstance(obj, _Storage):
            storage_type = _GLOBALS[("torch", _STORAGE_NAMES[obj.dtype])]
            return ("storage", storage_type, obj.key, "cpu", obj.numel)
        return None


def torch_pickle(obj):
    """``obj`` pickled as ``torch.save`` does (protocol 2), tensors as ``_Tensor``."""
    import io

    buffer = io.BytesIO()
    _TorchPickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


def write_torch_zip(path, state, *, archive="archive", one_storage=False, data_pkl=None):
    """Writes the ``{name: array}`` ``state`` as ``torch.save(state_dict, path)`` does.

    ``<archive>/data.pkl`` (the pickled ``OrderedDict``, with the ``_metadata`` attribute
    ``Module.state_dict()`` sets), ``<archive>/byteorder``, one raw little-endian record
    ``<archive>/data/<key>`` per storage, ``<archive>/version``. With ``one_storage`` all float32
    tensors are views of a single storage, at increasing offsets and with reversed (Fortran)
    strides, as slices and transposes of one tensor are saved. ``data_pkl`` replaces the pickle.
    """
    records = {}
    tensors = collections.OrderedDict()
    shared = [] if one_storage else None
    for name, value in state.items():
        value = np.asarray(value)
        if shared is not None and value.dtype == np.float32:
            offset = sum(a.size for a in shared)
            shared.append(value.ravel(order="F"))
            stride = np.cumprod((1, *value.shape[:-1])).tolist() if value.ndim else []
            tensors[name] = (None, offset, value.shape, stride)
            continue
        key = str(len(records))
        records[key] = value.astype(value.dtype.newbyteorder("<")).tobytes()
        storage = _Storage(key, value.dtype, value.size)
        stride = [int(np.prod(value.shape[i + 1:])) for i in range(value.ndim)]
        tensors[name] = (storage, 0, value.shape, stride)
    if shared:
        key = str(len(records))
        flat = np.concatenate(shared)
        records[key] = flat.astype("<f4").tobytes()
        storage = _Storage(key, np.dtype(np.float32), flat.size)
        tensors = collections.OrderedDict(
            (n, (storage if s is None else s, o, shape, stride))
            for n, (s, o, shape, stride) in tensors.items()
        )
    state_dict = collections.OrderedDict(
        (name, _Tensor(*args)) for name, args in tensors.items()
    )
    state_dict._metadata = collections.OrderedDict({"": {"version": 1}})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as f:
        f.writestr(f"{archive}/data.pkl", data_pkl or torch_pickle(state_dict))
        f.writestr(f"{archive}/byteorder", "little")
        for key, raw in records.items():
            f.writestr(f"{archive}/data/{key}", raw)
        f.writestr(f"{archive}/version", "3\n")
