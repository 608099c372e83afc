"""Write a cntscope spec file (SPEC section 3) from a PyTorch model's code.

The model is traced with ``torch.fx`` and every node becomes what the graph
of SPEC 1 says it is:

* ``Conv2d``, ``Linear``: weighted entries (stride, padding, dilation, groups);
  a conv's ``padding_mode`` other than zeros is a ``pad`` entry before it;
  ``padding="same"`` with an even kernel, and timm's ``Conv2dSame``,
  ``MaxPool2dSame`` and ``AvgPool2dSame`` (TensorFlow's 'SAME', computed
  from the input's size), pad one cell more after: ``padding_after``;
* ``F.pad`` and the padding modules (zeros, reflect, replicate, circular):
  ``pad`` entries (a pad of nothing is no entry);
* ECA's ``Conv1d`` of one input channel across a pooled vector viewed as a
  row (``y.view(N, 1, C)``): its entry reads the vector with ``view``;
* ``PixelShuffle`` / ``PixelUnshuffle`` read by a ``Conv2d``: that conv
  reads with ``pixel_shuffle`` / ``pixel_unshuffle`` (no entry of its own);
* ``ConvTranspose2d`` / ``ConvTranspose1d``: weighted entries with
  ``transposed = true`` and their ``output_padding`` (from the traced
  output grid, so a forward given ``output_size`` is read right);
* ``Conv1d``, ``MaxPool1d``, ``AvgPool1d``, ``AdaptiveAvgPool1d`` (and the
  functional forms): the 2-D layers over a 1 x L grid (a ``(C, L)`` input
  is written ``input = [C, 1, L]``);
* ``BatchNorm1d/2d``: folded into the weighted layer right before it (``norm``)
  when that layer's output feeds nothing else, else a BatchNorm-only entry;
  a subclass of these or of ``Linear`` (timm's ``BatchNormAct2d``,
  ``Linear``) is read as the class it extends, with a note;
* weights kept as weight norm or spectral norm (``torch.nn.utils.weight_norm``
  / ``spectral_norm`` and their ``parametrizations`` versions) or pruned
  (``torch.nn.utils.prune``'s ``weight_orig`` and ``weight_mask``): the layer's
  ``weight`` as usual, which cntscope computes from the stored parts, with
  a note; another parametrization is an error naming the module;
* ``nn.Upsample`` / ``F.interpolate`` (nearest, nearest-exact, (bi)linear,
  bicubic, with ``align_corners`` and a given ``scale_factor``): fixed
  ``interpolate`` entries whose links are the interpolation's
  coefficients; ``area`` is the adaptive average pool it is;
* ``MaxPool2d``, ``AvgPool2d``, ``AdaptiveAvgPool2d`` (and their functional
  forms), ``x.mean((2, 3))`` / ``torch.mean``: fixed entries (the mean over
  both spatial axes is a global average pool);
* activations, dropout, torchvision's stochastic depth, ``Flatten`` /
  ``torch.flatten`` / ``view`` / ``reshape`` / ``squeeze``: no entry (a
  node is the same node after them);
  a view, reshape or squeeze must keep the shape or flatten each sample
  (``x.view(x.size(0), -1)``, a pooled ``x.squeeze()``); shape queries
  (``x.size(0)``, ``x.shape[0]``) are not nodes;
* ``x + y`` / ``torch.add``: a residual sum. An operand computed only for the
  sum is written straight into the sum's set (``to``); an operand used
  elsewhere too (a block's input) reaches it through an ``identity`` entry;
* ``torch.cat(..., 1)``: a concatenation. Concatenations that extend one
  another (a DenseNet block) are one set, filled channel range by channel
  range (``offset``) and read by ranges (``from_channels``);
* ``x[:, a:b]``, ``torch.split(x, sizes, 1)``, ``x.chunk(k, 1)``: channel
  slices;
* ``x.permute(0, 2, 3, 1)`` and back (``0, 3, 1, 2``): a map with its
  channels last (ConvNeXt's blocks); a ``Linear`` on it applies at every
  pixel, the 1x1 convolution it is (``per_pixel``);
* ``x * gamma`` / ``x.mul(gamma.reshape(1, -1, 1, 1))`` with ``gamma`` a
  parameter of one factor per channel, right after a weighted layer (a
  layer scale), or ``x * 0.17`` by a number there (Inception-ResNet's
  and ESRGAN's residual branches): folded into that layer (``scale``), as
  a BatchNorm is;
* ShuffleNet's channel shuffle (``x.view(N, g, C // g, H, W)``,
  ``transpose(1, 2)``, ``view(N, C, H, W)``) of a set only it reads: the
  set's writers write interleaved, straight into the shuffled order
  (``channel_step``);
* ``LayerNorm`` / ``GroupNorm`` (and their subclasses, torchvision's and
  timm's ``LayerNorm2d``; ``F.layer_norm``): normalisations by each
  sample's own statistics, not layers of the weight graph (as discovery
  reads them): no entry, and a note names them; ConvNeXt V2's global
  response norms (timm's ``GlobalResponseNorm``) likewise, with a note of
  their own;
* ``x * torch.sigmoid(x)`` and other products of a tensor with an
  activation of itself: an activation (no entry);
* ``x * s`` / ``torch.mul`` with ``s`` a per-channel gate computed from
  ``x`` (squeeze-and-excitation: pool, two 1x1 convs, a sigmoid): the gate
  scales by values computed from the data, not by weights, so, as an
  activation, it keeps ``x``'s nodes; the gate's branch is measured and
  ends in its own node set, which no layer reads. The spec says so in a
  ``# Note:`` comment, ``spec_from_module`` in a ``TraceNote`` warning and
  the command line on standard error.

Anything else is an error naming the node. Needs torch, and nothing of
cntscope's native module: installed, ``python -m cntscope.torch_to_spec``
and ``from cntscope.torch_to_spec import spec_from_module``; from a
checkout that was never built, ``python/torch_to_spec.py`` runs this file::

    python -m cntscope.torch_to_spec torchvision.models.resnet18 --input 3,224,224 -o resnet18.toml
    python python/torch_to_spec.py torchvision.models.resnet18 --input 3,224,224 -o resnet18.toml

or, from Python, ``spec_from_module(model, (3, 224, 224))``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import operator
import sys
import textwrap
import warnings
from dataclasses import dataclass, field

import torch
import torch.fx
import torch.nn as nn
import torch.nn.functional as F

PASSTHROUGH_MODULES = (
    nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.LeakyReLU,
    nn.ELU, nn.SELU, nn.Mish, nn.Softplus, nn.PReLU, nn.Dropout, nn.Dropout2d, nn.AlphaDropout, nn.Identity,
    nn.Flatten, nn.Softmax, nn.LogSoftmax,
)
PASSTHROUGH_FUNCTIONS = {
    F.relu, F.relu6, F.gelu, F.silu, F.sigmoid, F.tanh, F.hardswish, F.hardsigmoid, F.leaky_relu, F.elu,
    F.dropout, F.softmax, F.log_softmax, torch.relu, torch.sigmoid, torch.tanh, torch.flatten, torch.squeeze,
    torch.nn.functional.dropout2d,
}
PASSTHROUGH_METHODS = {
    "relu", "relu_", "sigmoid", "tanh", "view", "reshape", "flatten", "squeeze", "contiguous", "clone",
}


class TraceError(ValueError):
    """The model has a node this tool cannot express as a spec entry."""


# What the command line adds to a TraceError: the analysis that needs no spec.
NO_SPEC_HINT = ("hint: a model that no spec can describe (a transformer's attention, say) is still measured layer "
                "by layer: give cntscope its checkpoint without --spec (discovery, README \"Without a spec\"); "
                "each layer is then a graph of its own")


class TraceNote(UserWarning):
    """What the spec assumes that the model's code does not say (also a
    ``# Note:`` comment at the top of the spec)."""


@dataclass
class Ref:
    """What a traced value is in the spec: a set (by name) and a channel range."""

    set: str
    range: tuple[int, int] | None = None
    channels: int = 0


@dataclass
class Entry:
    fields: dict = field(default_factory=dict)
    # The fx node whose value this entry's output is (None for identities).
    node: object = None
    # How many channels (or features) it writes.
    channels: int = 0


def _pair(v):
    return list(v) if isinstance(v, (tuple, list)) else [v, v]


def _scalar_or_pair(v):
    v = _pair(v)
    return v[0] if v[0] == v[1] else v


def _channels(node) -> int:
    meta = node.meta.get("tensor_meta")
    if meta is None or len(meta.shape) < 2:
        raise TraceError(f"node `{node.name}`: no shape recorded")
    return int(meta.shape[1])


def _owner(node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    keys = list(stack.values())
    return keys[-1][0] if keys else ""


# Positional parameters of the functional pools, as torch declares them.
POOL_PARAMETERS = {
    F.max_pool2d: ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"],
    F.avg_pool2d: ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad",
                   "divisor_override"],
    F.max_pool1d: ["input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices"],
    F.avg_pool1d: ["input", "kernel_size", "stride", "padding", "ceil_mode", "count_include_pad"],
}
RESHAPE_METHODS = {"view", "reshape", "flatten", "squeeze"}
# Modules that are a spec entry each (or fold into one).
ENTRY_MODULES = (
    nn.Conv1d, nn.Conv2d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.Linear, nn.BatchNorm1d, nn.BatchNorm2d,
    nn.MaxPool1d, nn.MaxPool2d, nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.Upsample,
)
# Padding modules (torch's `F.pad` in module form), their mode.
PAD_MODULES = {
    cls: mode
    for names, mode in ((("ZeroPad1d", "ZeroPad2d", "ConstantPad1d", "ConstantPad2d"), "constant"),
                        (("ReflectionPad1d", "ReflectionPad2d"), "reflect"),
                        (("ReplicationPad1d", "ReplicationPad2d"), "replicate"),
                        (("CircularPad1d", "CircularPad2d"), "circular"))
    for cls in (getattr(nn, name, None) for name in names) if cls is not None
}
PAD_PARAMETERS = ["input", "pad", "mode", "value"]
# Normalisations by each sample's own statistics (not layers of the weight
# graph, as discovery reads them): kept whole, their nodes their input's.
SAMPLE_NORMS = (nn.LayerNorm, nn.GroupNorm)
SAMPLE_NORM_FUNCTIONS = {F.layer_norm, F.group_norm}


def _pixel_shuffle(n, modules) -> tuple | None:
    """`("pixel_shuffle" | "pixel_unshuffle", r)` of a pixel (un)shuffle
    node (`nn.PixelShuffle`, `F.pixel_shuffle`, ...), else None. Its nodes
    are its input's, rearranged (see `_check_pixel_shuffles`)."""
    if n.op == "call_module" and isinstance(modules[n.target], (nn.PixelShuffle, nn.PixelUnshuffle)):
        m = modules[n.target]
        found = ("pixel_shuffle", m.upscale_factor) if isinstance(m, nn.PixelShuffle) else (
            "pixel_unshuffle", m.downscale_factor)
    elif n.op == "call_function" and n.target in (F.pixel_shuffle, F.pixel_unshuffle):
        r = n.args[1] if len(n.args) > 1 else next(iter(n.kwargs.values()))
        found = ("pixel_shuffle" if n.target is F.pixel_shuffle else "pixel_unshuffle", int(_value(r)))
    else:
        return None
    return found


def _check_pixel_shuffles(nodes, kinds, modules):
    """Only a conv (which the spec says reads them rearranged) or the
    network's output may read a pixel shuffle's nodes, through activations
    (SRGAN's PReLU after its shuffle) but not another shuffle."""
    for n in nodes:
        found = _pixel_shuffle(n, modules)
        todo = list(n.users) if found else []
        while todo:
            u = todo.pop()
            if kinds.get(u) == "pass" and not _pixel_shuffle(u, modules):
                todo.extend(u.users)
            elif not (u.op == "output" or (u.op == "call_module" and type(modules[u.target]) is nn.Conv2d)):
                raise TraceError(f"node `{n.name}`: a {found[0]} read by something other than a Conv2d (node "
                                 f"`{u.name}`): only a conv, or the output, may read its rearranged nodes")


def _rearranged(node, kinds, modules) -> tuple | None:
    """The pixel (un)shuffle between `node` and the value it carries
    (through activations), if any."""
    while kinds.get(node) == "pass":
        found = _pixel_shuffle(node, modules)
        if found:
            return found
        node = node.args[0]
    return None


def _is_global_response_norm(m: nn.Module) -> bool:
    """ConvNeXt V2's global response normalisation (timm's
    `GlobalResponseNorm`: `x + beta + gamma * x * N(x)`, `N(x)` each
    channel's L2 norm over the pixels against their mean over channels):
    a sample's own statistics, as a LayerNorm's, scale each channel."""
    return type(m).__name__ == "GlobalResponseNorm" and type(m).__module__.startswith("timm.")
# `x.permute(...)` of an N x C x H x W map to channels last, and back.
TO_CHANNELS_LAST, TO_CHANNELS_FIRST = [0, 2, 3, 1], [0, 3, 1, 2]


def _shape(node) -> list[int]:
    meta = node.meta.get("tensor_meta")
    if meta is None:
        raise TraceError(f"node `{node.name}`: no shape recorded")
    return [int(d) for d in meta.shape]


def _is_vector(shape: list[int], size: int) -> bool:
    """True when `shape` (the trace's batch of 1 included) holds one sample
    as a vector of `size` values: every other axis of length 1."""
    return [d for d in shape if d != 1] == ([size] if size != 1 else [])


def _value(v):
    """An argument as the traced run computed it: a node's recorded value
    (a size read off a tensor's shape), inside lists and tuples too."""
    if isinstance(v, torch.fx.Node):
        if "value" not in v.meta:
            raise TraceError(f"node `{v.name}`: a tensor where a number was expected")
        v = v.meta["value"]
    if isinstance(v, (list, tuple)):
        return [_value(x) for x in v]
    return int(v) if isinstance(v, getattr(torch, "SymInt", ())) else v


def _arguments(node, params: list[str]) -> dict:
    """A functional call's arguments by name (`params`: its positional
    parameters, as torch declares them), as the traced run computed them,
    the input left out."""
    given = dict(zip(params, node.args)) | dict(node.kwargs)
    return {k: _value(v) for k, v in given.items() if k != "input"}


def _check_reshape(node, modules=None):
    """A view, reshape, flatten or squeeze is no entry only when it keeps
    the shape or makes each sample one vector (the batch of the trace is
    1): a map reshaped to another grid would be read on the wrong grid."""
    if _param(node) is not None:
        return  # a parameter shaped to broadcast (gamma.reshape(1, -1, 1, 1))
    before, after = _shape(node.args[0]), _shape(node)
    size = 1
    for d in before[1:]:
        size *= d
    # One vector per sample on the channel axis: [N, size], [N, size, 1, 1],
    # or [size] (a squeeze of the trace's batch of 1). [N, 1, size] only for
    # a Conv1d of one input channel across the vector's values (ECA's),
    # which reads it as the row it is (`view`); anything else there would
    # take the values for positions of one channel.
    on_channels = (len(after) >= 2 and after[1] == size and all(d == 1 for d in after[2:])) or after == [size]
    if after == before or (on_channels and _is_vector(after, size)):
        return
    if after == [before[0], 1, size] and _is_vector(before, size) and modules is not None and node.users and all(
            u.op == "call_module" and isinstance(modules[u.target], nn.Conv1d) and modules[u.target].in_channels == 1
            for u in node.users):
        return
    raise TraceError(f"node `{node.name}`: reshapes {before} to {after}: only flattening each sample "
                     "(x.view(x.size(0), -1)) is supported")


def _pool(fields: dict, node, what: str, pool: str, kernel, stride, padding, *, dilation=1, ceil_mode=False,
          count_include_pad=True, divisor_override=None):
    """A max or average pool's entry fields (torch's arguments)."""
    if _pair(dilation) != [1, 1]:
        raise TraceError(f"node `{node.name}`: {what} is dilated (not supported)")
    if divisor_override is not None:
        raise TraceError(f"node `{node.name}`: {what} has a divisor_override")
    fields["pool"] = pool
    fields["kernel"] = _scalar_or_pair(kernel)
    # torch: no stride (None, or an empty list in the functional form) is the kernel.
    stride = kernel if stride is None or (isinstance(stride, (list, tuple)) and not stride) else stride
    if _pair(stride) != _pair(kernel):
        fields["stride"] = _scalar_or_pair(stride)
    if _pair(padding) != [0, 0]:
        fields["padding"] = _scalar_or_pair(padding)
    if pool == "avg" and not count_include_pad:
        fields["count_include_pad"] = False
    if ceil_mode:
        fields["ceil_mode"] = True


def _spatial_mean(fields: dict, node):
    """`x.mean((2, 3))` (either order, negative axes, keepdim or not) of an
    N x C x H x W map: a global average pool."""
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    shape = _shape(node.args[0])
    axes = {d % len(shape) for d in (dims if isinstance(dims, (list, tuple)) else [dims])} if dims is not None else None
    if axes != set(range(2, len(shape))) or len(shape) not in (3, 4) or node.kwargs.get("dtype") is not None:
        raise TraceError(f"node `{node.name}`: a mean over axes {dims} of a {shape} tensor: only the mean over "
                         "both spatial axes (a global average pool) is supported")
    fields["pool"] = "global_avg"


def _transposed(fields: dict, node, m):
    """A transposed conv's entry fields; its `output_padding` as the traced
    run's output grid says (a forward given `output_size` sets it)."""
    grow = _pairs_of(m)
    if m.padding_mode != "zeros":
        raise TraceError(f"node `{node.name}`: conv `{node.target}` padding mode {m.padding_mode!r}: only zero "
                         "padding is supported")
    kernel, stride, dilation = grow(m.kernel_size, 1), grow(m.stride, 1), grow(m.dilation, 1)
    padding = grow(m.padding, 0)
    grid_in, grid_out = _shape(node.args[0])[2:], _shape(node)[2:]
    if len(grid_in) == 1:
        grid_in, grid_out = [1, *grid_in], [1, *grid_out]
    extra = [o - ((i - 1) * s - 2 * p + d * (k - 1) + 1)
             for i, o, s, p, d, k in zip(grid_in, grid_out, stride, padding, dilation, kernel)]
    fields["weight"] = f"{node.target}.weight"
    fields["transposed"] = True
    if m.bias is not None:
        fields["bias"] = f"{node.target}.bias"
    for key, v, default in [("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1),
                            ("output_padding", extra, 0)]:
        if _pair(v) != [default, default]:
            fields[key] = _scalar_or_pair(v)
    if m.groups != 1:
        fields["groups"] = m.groups


def _pad(node, pad, mode="constant", value=None, **_) -> dict | None:
    """A pad entry's fields from torch's `F.pad` arguments (`pad` in
    torch's order, last axis first), or None for a pad of nothing (an
    operation that changes no node: U-Net's `F.pad(x, [0, 0, 0, 0])` when
    the two maps already match)."""
    shape = _shape(node.args[0])
    pad = [int(p) for p in pad]
    if len(shape) not in (3, 4) or len(pad) not in (2, 4) or (len(shape) == 3 and len(pad) != 2):
        raise TraceError(f"node `{node.name}`: pads {shape} by {pad}: only the spatial axes of a map (or the "
                         "length of a signal) can be padded")
    if mode not in ("constant", "reflect", "replicate", "circular") or (mode == "constant" and value not in (None, 0)):
        raise TraceError(f"node `{node.name}`: pads with mode {mode!r}, value {value!r}: only zeros, reflect, "
                         "replicate and circular are supported")
    if not any(pad):
        return None
    fields = {"pad": pad + [0] * (4 - len(pad))}
    if mode != "constant":
        fields["pad_mode"] = mode
    return fields


def _pad_arguments(n, modules) -> tuple:
    """`(pad, mode, value)` of a pad module's or `F.pad`'s node."""
    if n.op == "call_module":
        m = modules[n.target]
        return list(m.padding), PAD_MODULES[type(m)], getattr(m, "value", None)
    a = _arguments(n, PAD_PARAMETERS)
    return a["pad"], a.get("mode", "constant"), a.get("value")


# `F.interpolate`'s parameters, as torch declares them.
INTERPOLATE_PARAMETERS = ["input", "size", "scale_factor", "mode", "align_corners", "recompute_scale_factor",
                          "antialias"]
# torch's modes -> the spec's (a 1-D `linear` is bilinear on the 1 x L grid).
INTERPOLATE_MODES = {"nearest": "nearest", "nearest-exact": "nearest-exact", "linear": "bilinear",
                     "bilinear": "bilinear", "bicubic": "bicubic"}


def _interpolate(fields: dict, node, mode="nearest", align_corners=None, scale_factor=None,
                 recompute_scale_factor=None, antialias=False, **_):
    """`nn.Upsample` / `F.interpolate` (torch's arguments): a fixed layer
    whose links are the interpolation's coefficients; `area` is the
    adaptive average pool torch computes it with."""
    before, after = _shape(node.args[0]), _shape(node)
    if mode == "area":
        _adaptive_pool(fields, node)
        return
    if mode not in INTERPOLATE_MODES or len(before) not in (3, 4) or antialias:
        why = "with antialias" if antialias else f"mode {mode!r}"
        raise TraceError(f"node `{node.name}`: interpolates {before} to {after} {why}: only nearest, "
                         "nearest-exact, (bi)linear, bicubic and area over 1 or 2 axes, without antialias, "
                         "are supported")
    grid_in, grid_out = before[2:], after[2:]
    if len(grid_in) == 1:  # 1-D: the 1 x L grid
        grid_in, grid_out = [1, *grid_in], [1, *grid_out]
    fields["interpolate"] = INTERPOLATE_MODES[mode]
    fields["output"] = [int(d) for d in grid_out]
    if align_corners and fields["interpolate"] in ("bilinear", "bicubic"):
        fields["align_corners"] = True
    if scale_factor is not None and not recompute_scale_factor:
        # torch places outputs on the input grid by 1 / scale_factor: the
        # spec says so where that is not in / out.
        factors = [float(f) for f in (scale_factor if isinstance(scale_factor, (list, tuple))
                                      else [scale_factor] * (len(before) - 2))]
        factors = [1.0, *factors] if len(factors) == 1 else factors
        if any(1.0 / f != i / o for f, i, o in zip(factors, grid_in, grid_out)):
            fields["scale_factor"] = factors


def _adaptive_pool(fields: dict, node):
    """An adaptive average pool's entry fields, from its traced output size."""
    shape = node.meta["tensor_meta"].shape
    out = shape[-2:] if len(shape) == 4 else [1, shape[-1]]  # 1-D: a 1 x n grid
    if list(out) == [1, 1]:
        fields["pool"] = "global_avg"
    else:
        fields["pool"] = "adaptive_avg"
        fields["output"] = [int(out[0]), int(out[1])]


def spec_from_module(model: nn.Module, input_shape, *, layout: str = "torch", bn: str = "fold") -> str:
    """The spec (TOML text) of ``model`` for one sample of ``input_shape``
    (``(C, H, W)`` or ``(features,)``)."""
    model = model.eval()
    traced = torch.fx.GraphModule(model, _Tracer().trace(model))
    from torch.fx.passes.shape_prop import ShapeProp

    class Record(ShapeProp):
        """ShapeProp that also keeps every value that is not a tensor (a
        shape, a size computed from it), so arguments computed in the
        forward pass (`F.avg_pool2d(x, x.size()[2:])`) can be read."""

        def run_node(self, n):
            result = super().run_node(n)
            if not isinstance(result, torch.Tensor):
                n.meta["value"] = result
            return result

    with torch.no_grad():
        Record(traced).propagate(torch.zeros(1, *input_shape))
    modules = dict(traced.named_modules())
    nodes = list(traced.graph.nodes)

    def kind(n):
        if n in shuffle_nodes:
            return "shuffle" if isinstance(shuffle_nodes[n], int) else "pass"
        if n.op == "placeholder":
            return "input"
        if n.op == "output":
            return "output"
        if n.op in ("call_function", "call_method") and n.meta.get("tensor_meta") is None:
            # Not a tensor: a shape query (`x.size(0)`, `x.shape[0]`) or
            # arithmetic on one, an argument of a view rather than a node.
            return "meta"
        if n.op == "call_module":
            m = modules[n.target]
            if isinstance(m, PASSTHROUGH_MODULES):
                if isinstance(m, nn.Flatten):
                    _check_reshape(n)
                return "pass"
            if isinstance(m, SAMPLE_NORMS):
                sample_norms.append(n.target)
                return "pass"
            if _is_global_response_norm(m):
                response_norms.append(n.target)
                return "pass"
            if _pixel_shuffle(n, modules):
                return "pass"
            if type(m) in PAD_MODULES:
                return "pass" if _pad(n, *_pad_arguments(n, modules)) is None else "entry"
            if isinstance(m, ENTRY_MODULES):
                return "entry"
            raise TraceError(f"node `{n.name}`: module `{n.target}` of type {type(m).__name__} has no spec entry")
        if n.op == "call_function":
            if n.target in PASSTHROUGH_FUNCTIONS:
                if n.target in (torch.flatten, torch.squeeze):
                    _check_reshape(n)
                return "pass"
            if n.target in (operator.add, torch.add, operator.iadd):
                return "add"
            if n.target is torch.cat:
                return "cat"
            if n.target is F.pad:
                return "pass" if _pad(n, *_pad_arguments(n, modules)) is None else "entry"
            if _pixel_shuffle(n, modules):
                return "pass"
            if n.target is operator.getitem:
                return "slice"
            if n.target in (torch.split, torch.chunk):
                return "split"
            if n.target in (operator.mul, torch.mul, operator.imul):
                return "scale" if _scaled_by(n) else "gate"
            if n.target in SAMPLE_NORM_FUNCTIONS:
                weight = n.kwargs.get("weight", n.args[2] if len(n.args) > 2 else None)
                sample_norms.append(weight.target.rpartition(".")[0] if isinstance(weight, torch.fx.Node)
                                    and weight.op == "get_attr" else n.name)
                return "pass"
            if n.target is torch.permute:
                permutes[n] = _value(n.args[1] if len(n.args) > 1 else n.kwargs["dims"])
                return "pass"
            if n.target in (F.adaptive_avg_pool2d, F.avg_pool2d, F.max_pool2d, F.adaptive_avg_pool1d, F.avg_pool1d,
                            F.max_pool1d, F.interpolate, torch.mean):
                return "entry"
            if _is_stochastic_depth(n.target):
                # torchvision's (EfficientNet): the identity at inference.
                if n.kwargs.get("training", n.args[3] if len(n.args) > 3 else True) is False:
                    return "pass"
                raise TraceError(f"node `{n.name}`: stochastic depth traced in training mode")
            raise TraceError(f"node `{n.name}`: function {getattr(n.target, '__name__', n.target)} has no spec entry")
        if n.op == "call_method":
            if n.target in PASSTHROUGH_METHODS:
                if n.target in RESHAPE_METHODS:
                    _check_reshape(n, modules)
                return "pass"
            if n.target in ("expand", "expand_as"):
                # A gate broadcast over the map it scales (ECA's
                # `x * y.expand_as(x)`): read as the gate itself.
                if n.users and all(u.target in (operator.mul, torch.mul, "mul", "mul_") for u in n.users):
                    return "pass"
                raise TraceError(f"node `{n.name}`: `{n.target}` other than a gate's before a product")
            if n.target == "mean":
                return "entry"
            if n.target in ("add", "add_"):
                return "add"
            if n.target in ("mul", "mul_"):
                return "scale" if _scaled_by(n) else "gate"
            if n.target in ("split", "chunk"):
                return "split"
            if n.target == "permute":
                dims = [_value(a) for a in n.args[1:]] or _value(n.kwargs["dims"])
                permutes[n] = _value(dims[0]) if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else dims
                return "pass"
            raise TraceError(f"node `{n.name}`: method `{n.target}` has no spec entry")
        if n.op == "get_attr":
            # A parameter: what reads it (a layer scale, a LayerNorm's
            # affine) says what it is; anything else is an error there.
            return "param"
        raise TraceError(f"node `{n.name}`: {n.op} has no spec entry")

    sample_norms: list[str] = []  # LayerNorms and GroupNorms, left out
    response_norms: list[str] = []  # ConvNeXt V2's global response norms, left out
    permutes: dict = {}  # permute node -> its dims
    shuffle_nodes = _channel_shuffles(nodes)  # its views and transpose -> "part", its last view -> groups
    kinds = {n: kind(n) for n in nodes}
    _check_pixel_shuffles(nodes, kinds, modules)
    gated = {n: _gated(n, lambda m: kinds[m] == "pass") for n in nodes if kinds[n] == "gate"}
    last = _channels_last(nodes, kinds, permutes, modules)
    # The node whose value a pass-through node (or a gate) carries.
    root = {}
    for n in nodes:
        root[n] = root[n.args[0]] if kinds[n] == "pass" else root[gated[n][0]] if kinds[n] == "gate" else n
    # Who consumes each root's value (pass-throughs see through; a gate's
    # branch ends at the gate).
    consumers = {n: [] for n in nodes}
    for n in nodes:
        if kinds[n] in ("pass", "meta", "gate"):
            continue
        for a in n.all_input_nodes:
            if root[a] not in (n,) and n not in consumers[root[a]]:
                consumers[root[a]].append(n)

    entries: list[Entry] = []
    ref: dict = {}  # root node -> Ref
    producer: dict = {}  # root node -> Entry writing it
    names: set[str] = {"input"}
    families: list[dict] = []  # concatenation sets: {"set": name, "members": [roots], "channels": n}
    gates: list[str] = []  # the sets that end a gate's branch
    splits: dict = {}  # torch.split / chunk node -> the channel range of each part

    def unique(base: str) -> str:
        name, k = base, 1
        while name in names:
            k += 1
            name = f"{base}_{k}"
        names.add(name)
        return name

    def source(fields: dict, r: Ref):
        """`from` / `from_channels` of an entry reading r (omitted when it is
        what the previous entry wrote)."""
        prev = entries[-1].fields if entries else None
        prev_wrote = None if prev is None else prev.get("to", prev.get("name"))
        if r.range is not None:
            fields["from"] = r.set
            fields["from_channels"] = list(r.range)
        elif prev_wrote != r.set and not (prev is None and r.set == "input"):
            fields["from"] = r.set

    def write_into(r_node, target: str, offset: int) -> bool:
        """Makes the entry producing r_node write into `target` at `offset`;
        false when it cannot (its value is used elsewhere, or it is the input)."""
        e = producer.get(r_node)
        if e is None or "to" in e.fields:
            return False
        others = [c for c in consumers[r_node] if c not in sums_of.get(target, ())]
        if others:
            return False
        e.fields["to"] = target
        if offset:
            e.fields["offset"] = offset
        return True

    sums_of: dict = {}  # target set -> the add/cat nodes it stands for

    def identity_into(r: Ref, target: str, offset: int):
        """An identity entry from r into `target` at `offset` (an operand
        that cannot be written there by the entry producing it)."""
        fields = {"identity": True}
        source(fields, r)
        fields.setdefault("from", r.set)
        fields["to"] = target
        if offset:
            fields["offset"] = offset
        entries.append(Entry(fields, None, r.channels))

    def shuffled(n, groups: int) -> Ref:
        """A channel shuffle (`x.view(N, g, C // g, H, W).transpose(1, 2)
        .reshape(N, C, H, W)`) of a set only it reads: the set's writers
        write straight into the shuffled order, channel k of a writer at
        `offset + k * g` (`channel_step`), so the set is the shuffled map."""
        x = root[n.args[0]]
        r = ref[x]
        c = _channels(n)
        writers = [e for e in entries if e.fields.get("to", e.fields.get("name")) == r.set]
        if r.range not in (None, (0, c)) or consumers[x] != [n] or not writers:
            raise TraceError(f"node `{n.name}`: a channel shuffle of a value used elsewhere too (or of a part of a "
                             "set): not supported")
        per = c // groups
        for e in writers:
            at = e.fields.get("offset", 0)
            group = at // per
            if "to" not in e.fields or (at + e.channels - 1) // per != group:
                raise TraceError(f"node `{n.name}`: a channel shuffle whose groups of {per} channels mix one "
                                 f"layer's outputs (`{e.fields.get('name') or e.fields.get('to')}`; ShuffleNet v1): "
                                 "not supported")
        for e in writers:
            at = e.fields.get("offset", 0)
            group = at // per
            e.fields["offset"] = (at - group * per) * groups + group
            if not e.fields["offset"]:
                del e.fields["offset"]
            e.fields["channel_step"] = groups
        # A later concatenation may not extend the set: its order is the shuffled one now.
        families[:] = [f for f in families if f["set"] != r.set]
        return Ref(r.set, None, c)

    for n in nodes:
        k = kinds[n]
        if k == "input":
            ref[n] = Ref("input", None, int(input_shape[0]))
            continue
        if k in ("pass", "output", "meta"):
            continue
        if k == "param":
            continue
        if k == "shuffle":
            ref[n] = shuffled(n, shuffle_nodes[n])
            continue
        if k == "scale":
            x, p = _scaled_by(n)
            if isinstance(p, torch.fx.Node):
                channels = _shape(x)[-1] if last[x] else _channels(x)
                ps = _shape(p)
                ps = [1] * (len(_shape(x)) - len(ps)) + ps
                axis = len(ps) - 1 if last[x] else 1
                if (len(ps) != len(_shape(x)) or ps[axis] != channels
                        or any(d != 1 for i, d in enumerate(ps) if i != axis)):
                    raise TraceError(f"node `{n.name}`: a product of {_shape(x)} with parameter "
                                     f"`{_param(p).target}` of shape {_shape(p)}: only one factor per channel (a "
                                     "layer scale) is supported")
                what, scale = f"parameter `{_param(p).target}`", _param(p).target
            else:
                what, scale = f"constant {p}", float(p)
            e_prev = producer.get(root[x])
            folds = e_prev is not None and "weight" in e_prev.fields and consumers[root[x]] == [n]
            if not (folds and not {"to", "norm", "scale"} & e_prev.fields.keys()):
                raise TraceError(f"node `{n.name}`: {what} scales a value that is not one weighted layer's output "
                                 "alone: only a scale right after a layer is supported")
            e_prev.fields["scale"] = scale
            producer[n] = e_prev
            ref[n] = ref[e_prev.node]
            e_prev.node = n
            continue
        if k == "gate":
            if gated[n][1] is None:
                continue  # an activation of x: x's nodes, no branch
            gate = ref[root[gated[n][1]]]
            if gate.range is not None or gate.set == "input":
                raise TraceError(f"node `{n.name}`: a gate that is not a layer's whole output")
            gates.append(gate.set)
            continue
        if k == "split":
            splits[n] = _split_ranges(n)
            continue
        if k == "slice" and n.args[0] in splits:
            src, i = n.args
            r = ref[root[src.args[0]]]
            base = r.range[0] if r.range else 0
            start, stop = splits[src][i]
            ref[n] = Ref(r.set, (base + start, base + stop), stop - start)
            continue
        if k == "slice":
            src, idx = n.args
            r = ref[root[src]]
            if isinstance(idx, tuple):
                # Bounds computed in the forward pass (x[:, : x.size(1) // 2]) as the run computed them.
                idx = tuple(slice(*(_value(v) for v in (i.start, i.stop, i.step))) if isinstance(i, slice) else i
                            for i in idx)
            # x[:, a:b], also written x[:, a:b, :, :] (GhostNet's).
            if not (isinstance(idx, tuple) and 2 <= len(idx) <= 4 and idx[0] == slice(None)
                    and isinstance(idx[1], slice) and idx[1].step in (None, 1)
                    and all(i == slice(None) for i in idx[2:])):
                raise TraceError(f"node `{n.name}`: only channel slices x[:, a:b] are supported")
            base = r.range[0] if r.range else 0
            start, stop, _ = idx[1].indices(r.channels)
            ref[n] = Ref(r.set, (base + start, base + stop), stop - start)
            continue
        if k == "entry":
            fields = {}
            if n.op == "call_module":
                m = modules[n.target]
                name = unique(n.target)
                fields["name"] = name
                inp = ref[root[n.args[0]]]
                if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                    if not m.track_running_stats:
                        raise TraceError(f"node `{n.name}`: BatchNorm `{n.target}` keeps no running statistics")
                    e_prev = producer.get(root[n.args[0]])
                    fold_into = (
                        e_prev is not None and "weight" in e_prev.fields and "norm" not in e_prev.fields
                        and "to" not in e_prev.fields and consumers[root[n.args[0]]] == [n]
                    )
                    if fold_into:
                        names.discard(name)
                        e_prev.fields["norm"] = n.target
                        if m.eps != 1e-5:
                            e_prev.fields["eps"] = m.eps
                        producer[n] = e_prev
                        ref[n] = ref[e_prev.node]
                        e_prev.node = n
                        continue
                    fields["norm"] = n.target
                    if m.eps != 1e-5:
                        fields["eps"] = m.eps
                    out_channels = inp.channels
                elif isinstance(m, (nn.Conv1d, nn.Conv2d)):
                    # A Conv1d is the 2-D conv of a 1 x k kernel over the 1 x L grid.
                    grow = _pairs_of(m)
                    kernel, stride, dilation = grow(m.kernel_size, 1), grow(m.stride, 1), grow(m.dilation, 1)
                    padding = m.padding if isinstance(m.padding, str) else grow(m.padding, 0)
                    # Rows then columns: (before, after) each.
                    sides = [(p, p) for p in padding] if not isinstance(padding, str) else [(0, 0)] * 2
                    if padding == "same":
                        # torch pads (dilation x (kernel - 1)) in all, split evenly
                        # where it is even (an odd remainder goes after).
                        total = [d * (k - 1) for d, k in zip(dilation, kernel)]
                        sides = [(t // 2, t - t // 2) for t in total]
                    if _pads_by_input_size(m):
                        # timm's Conv2dSame: TensorFlow's 'SAME', the padding
                        # its forward computes from the input's size (the
                        # extra cell after), then the conv unpadded.
                        sides = _same_sides(_shape(n.args[0])[2:], kernel, stride, dilation)
                    padding = [before for before, _ in sides]
                    if m.padding_mode != "zeros":
                        # torch pads the input (F.pad in this mode), then
                        # convolves it unpadded: a pad entry, then the conv.
                        (top, bottom), (left, right) = sides
                        pad = _pad(n, [left, right] if len(_shape(n.args[0])) == 3 else [left, right, top, bottom],
                                   m.padding_mode)
                        if pad is not None:
                            pad["name"] = unique(f"{n.target}.pad")
                            source(pad, inp)
                            entries.append(Entry(pad, None, inp.channels))
                            inp = Ref(pad["name"], None, inp.channels)
                        padding = 0
                    elif any(before != after for before, after in sides):
                        # Zeros, one cell more after than before: no nodes.
                        fields["padding_after"] = _scalar_or_pair([after for _, after in sides])
                    rearranged = _rearranged(n.args[0], kinds, modules)
                    if rearranged:
                        # Its input's nodes, rearranged by the pixel shuffle before it.
                        fields[rearranged[0]] = rearranged[1]
                    if isinstance(m, nn.Conv1d) and m.in_channels == 1 and inp.channels != 1:
                        # A vector's values read as one row (ECA's `y.view(N, 1, C)`).
                        fields["view"] = [1, 1, inp.channels]
                    fields["weight"] = f"{n.target}.weight"
                    if m.bias is not None:
                        fields["bias"] = f"{n.target}.bias"
                    for key, v, default in [("stride", stride, 1), ("padding", padding, 0), ("dilation", dilation, 1)]:
                        if isinstance(v, str):
                            continue
                        if _pair(v) != [default, default]:
                            fields[key] = _scalar_or_pair(v)
                    if m.groups != 1:
                        fields["groups"] = m.groups
                    out_channels = m.out_channels
                elif isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d)):
                    _transposed(fields, n, m)
                    out_channels = m.out_channels
                elif isinstance(m, nn.Linear) and last[n.args[0]]:
                    # On a channels-last map: the same weights at every pixel.
                    fields["weight"] = f"{n.target}.weight"
                    fields["per_pixel"] = True
                    if m.bias is not None:
                        fields["bias"] = f"{n.target}.bias"
                    out_channels = m.out_features
                elif isinstance(m, nn.Linear):
                    if not _is_vector(_shape(n.args[0]), m.in_features):
                        raise TraceError(f"node `{n.name}`: Linear `{n.target}` reads a {_shape(n.args[0])} "
                                         "tensor: only one vector per sample (flattened) is supported")
                    fields["weight"] = f"{n.target}.weight"
                    if m.bias is not None:
                        fields["bias"] = f"{n.target}.bias"
                    out_channels = m.out_features
                elif _pads_by_input_size(m):
                    # timm's MaxPool2dSame (padded with -inf: never the
                    # maximum) or AvgPool2dSame (padded with zeros, which
                    # count in the divisor), then pooled unpadded.
                    what = f"pool `{n.target}`"
                    if m.ceil_mode:
                        raise TraceError(f"node `{n.name}`: {what} pads as TensorFlow's 'SAME' in ceil mode "
                                         "(not supported)")
                    kernel, stride = _pair(m.kernel_size), _pair(m.stride)
                    dilation = _pair(getattr(m, "dilation", 1))
                    sides = _same_sides(_shape(n.args[0])[2:], kernel, stride, dilation)
                    pool = "max" if isinstance(m, nn.MaxPool2d) else "avg"
                    _pool(fields, n, what, pool, kernel, stride, [before for before, _ in sides], dilation=dilation)
                    if any(before != after for before, after in sides):
                        fields["padding_after"] = _scalar_or_pair([after for _, after in sides])
                    out_channels = inp.channels
                elif isinstance(m, (nn.MaxPool1d, nn.MaxPool2d)):
                    grow = _pairs_of(m)
                    _pool(fields, n, f"pool `{n.target}`", "max", grow(m.kernel_size, 1),
                          None if m.stride is None else grow(m.stride, 1), grow(m.padding, 0),
                          dilation=grow(m.dilation, 1), ceil_mode=m.ceil_mode)
                    out_channels = inp.channels
                elif isinstance(m, (nn.AvgPool1d, nn.AvgPool2d)):
                    grow = _pairs_of(m)
                    _pool(fields, n, f"pool `{n.target}`", "avg", grow(m.kernel_size, 1),
                          None if m.stride is None else grow(m.stride, 1), grow(m.padding, 0),
                          ceil_mode=m.ceil_mode, count_include_pad=m.count_include_pad,
                          divisor_override=getattr(m, "divisor_override", None))
                    out_channels = inp.channels
                elif type(m) in PAD_MODULES:
                    fields.update(_pad(n, *_pad_arguments(n, modules)))
                    out_channels = inp.channels
                elif isinstance(m, nn.Upsample):
                    _interpolate(fields, n, m.mode, m.align_corners, m.scale_factor, m.recompute_scale_factor)
                    out_channels = inp.channels
                else:  # AdaptiveAvgPool1d/2d
                    _adaptive_pool(fields, n)
                    out_channels = inp.channels
            else:
                # functional pools
                name = unique(f"{_owner(n) + '.' if _owner(n) else ''}{n.name}")
                fields["name"] = name
                inp = ref[root[n.args[0]]]
                out_channels = inp.channels
                if n.target in (F.adaptive_avg_pool2d, F.adaptive_avg_pool1d):
                    _adaptive_pool(fields, n)
                elif n.target is F.pad:
                    fields.update(_pad(n, *_pad_arguments(n, modules)))
                elif n.target is F.interpolate:
                    _interpolate(fields, n, **_arguments(n, INTERPOLATE_PARAMETERS))
                elif n.target in (F.max_pool2d, F.avg_pool2d, F.max_pool1d, F.avg_pool1d):
                    a = _arguments(n, POOL_PARAMETERS[n.target])
                    if n.target in (F.max_pool1d, F.avg_pool1d):
                        # A 1-D pool: a 1 x k window over the 1 x L grid.
                        fills = {"kernel_size": 1, "stride": 1, "padding": 0, "dilation": 1}
                        a = {k: _one_row(v, fills[k]) if k in fills and v is not None and v != [] else v
                             for k, v in a.items()}
                    if a.get("return_indices"):
                        raise TraceError(f"node `{n.name}`: a max pool that returns its indices")
                    what = f"functional pool `{n.name}`"
                    if n.target in (F.max_pool2d, F.max_pool1d):
                        _pool(fields, n, what, "max", a["kernel_size"], a.get("stride"), a.get("padding", 0),
                              dilation=a.get("dilation", 1), ceil_mode=a.get("ceil_mode", False))
                    else:
                        _pool(fields, n, what, "avg", a["kernel_size"], a.get("stride"), a.get("padding", 0),
                              ceil_mode=a.get("ceil_mode", False),
                              count_include_pad=a.get("count_include_pad", True),
                              divisor_override=a.get("divisor_override"))
                else:  # x.mean(dims) / torch.mean(x, dims)
                    _spatial_mean(fields, n)
            source(fields, inp)
            e = Entry(fields, n, out_channels)
            entries.append(e)
            producer[n] = e
            ref[n] = Ref(name, None, out_channels)
            continue
        if k == "add":
            operands = [a for a in n.args if isinstance(a, torch.fx.Node)]
            if len(operands) != 2 or len(n.args) != 2 or n.kwargs.get("alpha", 1) != 1:
                raise TraceError(f"node `{n.name}`: only the sum of two tensors is supported")
            _no_parameter(n, operands, kinds, root)
            roots = [root[a] for a in operands]
            channels = _shape(n)[-1] if last[n] else _channels(n)
            owner = _owner(n)
            target = unique(f"{owner}.{n.name.split('_')[0]}" if owner else n.name)
            sums_of[target] = (n,)
            for r_node in roots:
                r = ref[r_node]
                if not (r.range is None and write_into(r_node, target, 0)):
                    identity_into(r, target, 0)
            ref[n] = Ref(target, None, channels)
            continue
        if k == "cat":
            tensors = n.args[0]
            dim = n.args[1] if len(n.args) > 1 else n.kwargs.get("dim", 0)
            if dim % len(_shape(n)) != 1:
                raise TraceError(f"node `{n.name}`: torch.cat on dim {dim}: only channels (dim 1) are supported")
            _no_parameter(n, tensors, kinds, root)
            roots = [root[t] for t in tensors]
            fam = next((f for f in families if f["members"] == roots[: len(f["members"])]), None)
            if fam is None:
                owner = _owner(n)
                fam = {"set": unique(f"{owner}.cat" if owner else n.name), "members": [], "channels": 0}
                families.append(fam)
            sums_of.setdefault(fam["set"], ())
            for r_node in roots[len(fam["members"]):]:
                r = ref[r_node]
                offset = fam["channels"]
                sums_of[fam["set"]] = tuple(c for c in consumers[r_node] if kinds[c] == "cat")
                if not (r.range is None and write_into(r_node, fam["set"], offset)):
                    identity_into(r, fam["set"], offset)
                fam["members"].append(r_node)
                fam["channels"] += r.channels
            total = sum(ref[r].channels for r in roots)
            ref[n] = Ref(fam["set"], (0, total), total)
            continue

    notes = []
    called = [(n.target, modules.get(n.target)) for n in nodes if n.op == "call_module"]
    reparametrized = [f"{name} ({how})" for name, m in called if (how := _reparametrization(name, m))]
    if reparametrized:
        notes.append("weights kept reparametrized, which cntscope computes from their parts as torch does in eval "
                     "mode: " + ", ".join(reparametrized))
    subclasses = sorted({f"{type(m).__name__} as {base.__name__}"
                         for name, m in called
                         for base in (nn.BatchNorm1d, nn.BatchNorm2d, nn.Linear)
                         if isinstance(m, base) and type(m) is not base and not _reparametrization(name, m)})
    if subclasses:
        notes.append("subclasses read as the class they extend, their own forward not traced (what it adds, as "
                     "BatchNormAct2d's activation, makes no links): " + ", ".join(subclasses))
    if sample_norms:
        notes.append(f"{len(sample_norms)} LayerNorms / GroupNorms normalise each sample by its own statistics: not "
                     "layers of the weight graph (as discovery reads them), they keep their input's nodes and their "
                     "tensors are unused: " + ", ".join(sample_norms))
    if response_norms:
        notes.append(f"{len(response_norms)} global response norms (ConvNeXt V2's) scale each channel by statistics "
                     "of the sample's own: as LayerNorms, they keep their input's nodes and their tensors are "
                     "unused: " + ", ".join(response_norms))
    if gates:
        notes.append(f"{len(gates)} channel gates x * s (squeeze-and-excitation) have no weights: as activations, "
                     "they keep x's nodes; each gate's branch ends in a node set that no layer reads: "
                     + ", ".join(gates))
    for note in notes:
        warnings.warn(note, TraceNote, stacklevel=2)
    return _toml(entries, input_shape, layout, bn, notes)


# Subclasses kept whole, as the class they extend: traced into, their
# forward reads the weights as tensors (`F.batch_norm`, `F.linear`), which
# no spec entry says. (Other Conv2d subclasses are traced: their forward
# may pad, as timm's Conv2dSame does; that one is read whole, with the
# padding it computes.)
WHOLE_SUBCLASSES = (nn.modules.batchnorm._BatchNorm, nn.Linear, nn.LayerNorm, nn.GroupNorm)


def _reparametrization(name: str, m: nn.Module | None) -> str | None:
    """How module `name`'s weight is kept reparametrized (weight norm,
    spectral norm: both APIs; a ``torch.nn.utils.prune`` mask), None when
    it is not; another
    parametrization is a TraceError (its checkpoint holds no weight that
    cntscope can compute)."""
    if m is None:
        return None
    if hasattr(m, "weight_g") and hasattr(m, "weight_v"):
        return "weight norm"
    if hasattr(m, "weight_orig") and hasattr(m, "weight_u"):
        return "spectral norm"
    if hasattr(m, "weight_orig") and hasattr(m, "weight_mask"):
        return "pruning mask"
    if not torch.nn.utils.parametrize.is_parametrized(m):
        return None
    for tensor, chain in m.parametrizations.items():
        kinds = [type(p).__name__ for p in chain]
        if tensor != "weight" or kinds not in (["_WeightNorm"], ["_SpectralNorm"]):
            raise TraceError(f"module `{name}`: its `{tensor}` is parametrized by {', '.join(kinds)}; cntscope "
                             "computes weights kept as weight norm or spectral norm only")
    return "weight norm" if kinds == ["_WeightNorm"] else "spectral norm"


def _pads_by_input_size(m: nn.Module) -> bool:
    """timm's `Conv2dSame`, `MaxPool2dSame` and `AvgPool2dSame`: a Conv2d
    or pool whose forward pads its input as TensorFlow's 'SAME' does, by an
    amount computed from the input's size (which its `padding`, 0, does
    not say; its tracing would compute on the traced sizes). It is kept
    whole and read with that padding ([`_same_sides`])."""
    return (isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))
            and type(m).__name__ in ("Conv2dSame", "MaxPool2dSame", "AvgPool2dSame")
            and type(m).__module__.startswith("timm."))


def _same_sides(grid, kernel, stride, dilation):
    """TensorFlow's 'SAME' padding of a `grid` (timm's `pad_same`): per
    axis `(before, after)`, the odd cell after."""
    sides = []
    for i, k, s, d in zip(grid, kernel, stride, dilation):
        total = max((-(-i // s) - 1) * s + (k - 1) * d + 1 - i, 0)
        sides.append((total // 2, total - total // 2))
    return sides


class _Tracer(torch.fx.Tracer):
    """torch.fx's tracer, which also keeps every subclass of
    `WHOLE_SUBCLASSES` (timm's BatchNormAct2d, a BatchNorm with its
    activation; timm's Linear) and timm's Conv2dSame as one module."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return (isinstance(m, WHOLE_SUBCLASSES) or _pads_by_input_size(m) or _is_global_response_norm(m)
                or super().is_leaf_module(m, qualname))


def _channel_shuffles(nodes) -> dict:
    """ShuffleNet's channel shuffles (`x.view(N, g, C // g, H, W)`, then
    `transpose(1, 2)` or `permute(0, 2, 1, 3, 4)`, `contiguous()`, and
    `view(N, C, H, W)`): each one's first view and transpose mapped to
    "part", its last view to its groups `g`. Views that are not part of one
    stay what they are (errors where they reshape to another grid)."""
    found = {}
    for n in nodes:
        if not (n.op == "call_method" and n.target in ("view", "reshape") and n.meta.get("tensor_meta") is not None):
            continue
        before, after = _shape(n.args[0]), _shape(n)
        if not (len(before) == 4 and len(after) == 5 and after[0] == before[0] and after[1] * after[2] == before[1]
                and after[3:] == before[2:]):
            continue
        users = list(n.users)
        if len(users) != 1:
            continue
        t = users[0]
        dims = [_value(a) for a in t.args[1:]] if t.op == "call_method" else _value(list(t.args[1:]))
        dims = dims[0] if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else dims
        swaps = (t.target in ("transpose", torch.transpose) and sorted(d % 5 for d in dims) == [1, 2]) or (
            t.target in ("permute", torch.permute) and [d % 5 for d in dims] == [0, 2, 1, 3, 4])
        m = t
        while swaps and len(m.users) == 1 and next(iter(m.users)).op == "call_method" and next(
                iter(m.users)).target in ("contiguous", "clone"):
            m = next(iter(m.users))
        last = next(iter(m.users)) if swaps and len(m.users) == 1 else None
        if last is not None and last.op == "call_method" and last.target in ("view", "reshape", "flatten") and (
                _shape(last) == before):
            found[n], found[t], found[last] = "part", "part", after[1]
    return found


def _param(a):
    """The parameter (`get_attr` node) that `a` is, through views and
    reshapes (`gamma.reshape(1, -1, 1, 1)`), or None."""
    while a.op == "call_method" and a.target in RESHAPE_METHODS | {"unsqueeze"}:
        a = a.args[0]
    return a if a.op == "get_attr" else None


def _no_parameter(n, operands, kinds, root):
    """A TraceError when a sum or a concatenation takes a parameter (a
    position embedding, a class token): a value no layer computes."""
    for a in operands:
        if kinds[root[a]] == "param":
            raise TraceError(f"node `{n.name}`: {n.name} takes parameter `{root[a].target}` (a position embedding "
                             "or a class token?): only values layers compute are supported")


def _scaled_by(n):
    """`(x, p)` of a product `x * p` of a value with a parameter (a layer
    scale) or with a number (Inception-ResNet's and ESRGAN's branch
    scales), else None."""
    if len(n.args) != 2 or n.kwargs:
        return None
    for x, p in (n.args, n.args[::-1]):
        number = isinstance(p, (int, float)) and not isinstance(p, bool)
        if isinstance(x, torch.fx.Node) and _param(x) is None and (
                number or isinstance(p, torch.fx.Node) and _param(p) is not None):
            return x, p
    return None


def _channels_last(nodes, kinds, permutes, modules) -> dict:
    """For each node, whether its value is a map permuted to channels last
    (`[N, H, W, C]`, ConvNeXt's blocks): a `Linear` then applies at every
    pixel, a LayerNorm normalises each pixel; what else reads it must be a
    permute back, or an activation."""
    last = {}
    for n in nodes:
        tensors = [a for a in n.all_input_nodes if kinds[a] not in ("param", "meta")]
        if n in permutes:
            dims = [d % 4 for d in permutes[n]] if len(_shape(n)) == 4 else permutes[n]
            if dims == TO_CHANNELS_LAST and not last[n.args[0]]:
                last[n] = True
            elif dims == TO_CHANNELS_FIRST and last[n.args[0]]:
                last[n] = False
            else:
                raise TraceError(f"node `{n.name}`: permutes {_shape(n.args[0])} by {permutes[n]}: only a map to "
                                 "channels last ([0, 2, 3, 1]) and back ([0, 3, 1, 2]) are supported")
            continue
        if kinds[n] == "meta":
            last[n] = False
            continue
        if (n.op == "call_method" and n.target in RESHAPE_METHODS
                or n.op == "call_function" and n.target in (torch.flatten, torch.squeeze)
                or n.op == "call_module" and isinstance(modules[n.target], nn.Flatten)):
            if last[n.args[0]] and _shape(n.args[0])[1] * _shape(n.args[0])[2] != 1:
                raise TraceError(f"node `{n.name}`: flattens a channels-last map: its values would be read in "
                                 "another order than the spec's (channel, row, column)")
            last[n] = False
            continue
        inputs = {last[a] for a in tensors}
        linear = n.op == "call_module" and isinstance(modules[n.target], nn.Linear)
        if kinds[n] in ("pass", "scale", "add") or linear:
            if len(inputs) > 1:
                raise TraceError(f"node `{n.name}`: mixes a channels-last map with a channels-first one")
            last[n] = inputs == {True}
        elif True in inputs:
            raise TraceError(f"node `{n.name}`: reads a channels-last map ([N, H, W, C]); only Linear, "
                             "LayerNorm, activations, a layer scale, sums and a permute back are supported there")
        else:
            last[n] = False
    return last


def _one_row(v, fill):
    """A 1-D module's kernel, stride, padding or dilation (`k` or `(k,)`)
    as the pair of the 2-D layer it is over a 1 x L grid: `(fill, k)`."""
    return (fill, v[0] if isinstance(v, (tuple, list)) else v)


def _pairs_of(m):
    """How module `m`'s kernel, stride, padding and dilation become the
    pairs of a 2-D layer: `_one_row` for a 1-D module, else as they are."""
    one_d = (nn.Conv1d, nn.ConvTranspose1d, nn.MaxPool1d, nn.AvgPool1d)
    return _one_row if isinstance(m, one_d) else (lambda v, fill: v)


def _split_ranges(n) -> list[tuple[int, int]]:
    """The channel range of each part of `torch.split(x, sizes, 1)` /
    `x.chunk(k, 1)` (and their method forms), as the traced run split it;
    a split on another axis is a TraceError naming the node."""
    parts = n.meta.get("tensor_meta") or ()
    shape = _shape(n.args[0])
    dim = n.kwargs.get("dim", n.args[2] if len(n.args) > 2 else 0)
    if len(shape) not in (3, 4) or _value(dim) % len(shape) != 1:
        raise TraceError(f"node `{n.name}`: a split of a {shape} tensor on axis {dim}: only channels (axis 1) "
                         "are supported")
    ranges, at = [], 0
    for part in parts:
        c = int(part.shape[1])
        ranges.append((at, at + c))
        at += c
    return ranges


def _is_stochastic_depth(f) -> bool:
    return getattr(f, "__name__", "") == "stochastic_depth" and getattr(f, "__module__", "").startswith(
        "torchvision.ops")


def _ancestors(node) -> set:
    """`node` and every node it is computed from."""
    seen, todo = set(), [node]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(m.all_input_nodes)
    return seen


def _gated(n, passes):
    """`(x, s)` of a product `x * s` where `s` is a per-channel gate
    computed from `x` (`[N, C, 1, 1]` against `x`'s `[N, C, H, W]`), or
    `(x, None)` where `s` is an activation of `x` itself (a swish written
    `x * torch.sigmoid(x)`: no layer between them, `passes` says which nodes
    make no entry), else a TraceError naming the node."""
    operands = [a for a in n.args if isinstance(a, torch.fx.Node)]
    if len(operands) != 2 or len(n.args) != 2 or n.kwargs:
        raise TraceError(f"node `{n.name}`: a product with a constant: only a channel gate x * s "
                         "(squeeze-and-excitation) is supported")

    def reaches(a, b):
        return b in _ancestors(a)

    a, b = operands
    for x, s in ((a, b), (b, a)):
        m = s
        while m is not x and passes(m) and m.args and isinstance(m.args[0], torch.fx.Node):
            m = m.args[0]
        if m is x:
            return x, None
    x, s = (a, b) if reaches(b, a) else (b, a) if reaches(a, b) else (None, None)
    if x is None:
        # Two branches of one input (LR-ASPP's: a conv of a map gated by
        # a pooled branch of the same map): the gate is the one of shape
        # [N, C, 1, 1], computed from the data (a placeholder).
        from_data = [any(m.op == "placeholder" for m in _ancestors(o)) for o in (a, b)]
        gates = [o for o, d in zip((a, b), from_data) if d and len(_shape(o)) in (3, 4) and _shape(o)[2:] == [1] * (len(_shape(o)) - 2)]
        if not all(from_data) or len(gates) != 1 or _shape(gates[0]) == _shape(a if gates[0] is b else b):
            raise TraceError(f"node `{n.name}`: a product of two independent tensors: only a channel gate x * s, "
                             "s computed from the data (squeeze-and-excitation), is supported")
        s = gates[0]
        x = a if s is b else b
    while s.op == "call_method" and s.target in ("expand", "expand_as"):
        s = s.args[0]  # the gate before its broadcast
    xs, ss = _shape(x), _shape(s)
    if len(xs) not in (3, 4) or ss != [xs[0], xs[1]] + [1] * (len(xs) - 2):
        raise TraceError(f"node `{n.name}`: a product of shapes {xs} and {ss}: only a channel gate x * s, "
                         "s of shape [N, C, 1, 1] (squeeze-and-excitation), is supported")
    return x, s


def _toml(entries, input_shape, layout, bn, notes=()) -> str:
    def value(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return json.dumps(v)
        if isinstance(v, float):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return str(v)

    out = [
        "# Written by python/torch_to_spec.py from the model's code (torch.fx).",
        *("\n".join(textwrap.wrap(note, 76, initial_indent="# Note: ", subsequent_indent="#   ")) for note in notes),
        # A 1-D signal (C, L) is the 1 x L grid of each of its C channels.
        f"input = {value(list(input_shape) if len(input_shape) != 2 else [input_shape[0], 1, input_shape[1]])}",
        f"layout = {value(layout)}",
        f"bn = {value(bn)}",
    ]
    order = ["name", "weight", "transposed", "per_pixel", "bias", "scale", "norm", "eps", "pool", "interpolate",
             "pad", "pad_mode", "kernel", "output", "align_corners", "scale_factor", "view", "pixel_shuffle",
             "pixel_unshuffle", "stride", "padding", "padding_after", "dilation", "output_padding", "groups", "count_include_pad", "ceil_mode", "identity",
             "from", "from_channels", "to", "offset", "channel_step"]
    for e in entries:
        assert e.fields.keys() <= set(order), f"keys the spec writer does not know: {e.fields.keys() - set(order)}"
        out.append("")
        out.append("[[layers]]")
        for key in order:
            if key in e.fields:
                out.append(f"{key} = {value(e.fields[key])}")
    return "\n".join(out) + "\n"


def notes_of(spec_text: str) -> list[str]:
    """The notes a spec written here carries in its header comments (what
    the spec assumes that the model's code does not say)."""
    notes = []
    for line in spec_text.splitlines():
        if line.startswith("# Note: "):
            notes.append(line[len("# Note: "):])
        elif line.startswith("#   ") and notes:
            notes[-1] += " " + line[len("#   "):]
        elif not line.startswith("#"):
            break
    return notes


def _load_model(path: str, kwargs: dict) -> nn.Module:
    module, _, attr = path.rpartition(".") if ":" not in path else path.partition(":")
    if ":" in path:
        module, attr = path.split(":", 1)
    return getattr(importlib.import_module(module), attr)(**kwargs)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="a factory to call, e.g. torchvision.models.resnet18 or mypkg.nets:Net")
    p.add_argument("--input", required=True, help="one sample's shape: C,H,W or FEATURES")
    p.add_argument("--kwargs", default="{}", help="JSON keyword arguments for the factory")
    p.add_argument("--bn", default="fold", choices=["fold", "layer", "ignore"])
    p.add_argument("-o", "--output", help="write here instead of standard output")
    a = p.parse_args(argv)
    shape = tuple(int(x) for x in a.input.replace("x", ",").split(","))
    try:
        with warnings.catch_warnings():
            # Printed below, as notes.
            warnings.simplefilter("ignore", TraceNote)
            text = spec_from_module(_load_model(a.model, json.loads(a.kwargs)), shape, bn=a.bn)
    except TraceError as e:
        print(f"error: {e}", file=sys.stderr)
        print(NO_SPEC_HINT, file=sys.stderr)
        return 2
    for note in notes_of(text):
        print(f"note: {note}", file=sys.stderr)
    if a.output:
        with open(a.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
