"""cntscope.torch_to_spec (run from python/torch_to_spec.py) on the idioms of
hand-written models: functional pools, views that flatten by the tensor's
size, spatial means, ceil-mode pools, 'same' padding. Needs torch (skipped
where it is not installed, as in CI); the specs it writes for such models
are checked against torch's own strengths by tests/torch_fixtures.rs (the
`functional_tiny` fixture)."""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from torch_to_spec import TraceError, spec_from_module  # noqa: E402


def entries(model, shape):
    """The spec's entries without their names (which follow the code's)."""
    spec = tomllib.loads(spec_from_module(model, shape))
    keep = ("weight", "bias", "pool", "kernel", "stride", "padding", "count_include_pad", "output")
    return [{k: v for k, v in e.items() if k in keep} for e in spec["layers"]]


class Modules(nn.Module):
    def __init__(self, pool):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.pool = pool
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc(torch.flatten(self.gap(self.pool(F.relu(self.conv(x)))), 1))


class Functional(Modules):
    def __init__(self, pool, flatten):
        super().__init__(None)
        self.f, self.flatten = pool, flatten

    def forward(self, x):
        x = self.f(F.relu(self.conv(x)))
        return self.fc(self.flatten(x))


@pytest.mark.parametrize(
    "module, functional, flatten",
    [
        (nn.MaxPool2d(2), lambda x: F.max_pool2d(x, 2), lambda x: x.mean((2, 3)).view(x.size(0), -1)),
        (nn.MaxPool2d(3, 2, 1), lambda x: F.max_pool2d(x, kernel_size=3, stride=2, padding=1),
         lambda x: torch.mean(x, dim=[-1, -2])),
        (nn.AvgPool2d(3, 1, 1, count_include_pad=False),
         lambda x: F.avg_pool2d(x, 3, 1, 1, False, False), lambda x: x.mean((3, 2), keepdim=True).flatten(1)),
        (nn.AvgPool2d(2), lambda x: F.avg_pool2d(x, [2, 2], []),
         lambda x: x.mean([2, 3], True).reshape(x.shape[0], -1)),
        (nn.MaxPool2d(3, 2, ceil_mode=True), lambda x: F.max_pool2d(x, 3, 2, ceil_mode=True),
         lambda x: x.mean((2, 3))),
        (nn.AvgPool2d(3, 2, 1, ceil_mode=True), lambda x: F.avg_pool2d(x, 3, 2, 1, True),
         lambda x: x.mean((2, 3))),
        (nn.MaxPool2d(2), lambda x: F.max_pool2d(x, 2),
         lambda x: F.adaptive_avg_pool2d(x, 1).squeeze(-1).squeeze(-1)),
        (nn.MaxPool2d(2), lambda x: F.max_pool2d(x, 2),
         lambda x: torch.squeeze(F.adaptive_avg_pool2d(x, (1, 1))).squeeze(-1)),
    ],
)
def test_functional_forms_write_the_modules_spec(module, functional, flatten):
    assert entries(Functional(functional, flatten), (3, 12, 11)) == entries(Modules(module), (3, 12, 11))


class Odd(nn.Module):
    def __init__(self, f, features):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.f = f
        self.fc = nn.Linear(features, 3)

    def forward(self, x):
        return self.fc(torch.flatten(self.f(self.conv(x)), 1))


@pytest.mark.parametrize(
    "f, features, message",
    [
        # ShuffleNet's channel shuffle (its transpose is refused too, later).
        (lambda x: x.view(x.size(0), 2, 2, 8, 8).sum(1), 128, r"node `view`: reshapes \[1, 4, 8, 8\] to"),
        # The same values on another grid: a conv or pool after it would read them wrong.
        (lambda x: x.view(x.size(0), 4, 4, 16), 256, r"reshapes \[1, 4, 8, 8\] to \[1, 4, 4, 16\]"),
        (lambda x: x.mean(1), 64, r"node `mean`: a mean over axes 1 of a \[1, 4, 8, 8\] tensor"),
        (lambda x: x.mean(3), 32, "node `mean`: a mean over axes 3"),
        (lambda x: F.max_pool2d(x, 2, 1, 1, dilation=2), 256, "node `max_pool2d`: .* is dilated"),
        (lambda x: F.avg_pool2d(x, 3, 1, 1, divisor_override=4), 256, "node `avg_pool2d`: .* divisor_override"),
    ],
)
def test_what_the_spec_cannot_say_is_an_error_naming_the_node(f, features, message):
    with pytest.raises(TraceError, match=message):
        spec_from_module(Odd(f, features), (4, 8, 8))


def test_ceil_mode_is_written_into_the_spec():
    spec = tomllib.loads(spec_from_module(Modules(nn.MaxPool2d(3, 2, ceil_mode=True)), (3, 12, 11)))
    assert [e.get("ceil_mode") for e in spec["layers"]] == [None, True, None, None]


def test_a_linear_layer_over_the_last_axis_of_a_map_is_an_error():
    # nn.Linear on an N x C x H x W tensor maps each row's W values: not a
    # dense layer on the flattened map.
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Linear(6, 5))
    with pytest.raises(TraceError, match=r"Linear `1` reads a \[1, 4, 6, 6\] tensor"):
        spec_from_module(model, (3, 8, 8))


def test_same_padding_and_negative_cat_axes_are_read_as_torch_means_them():
    class Net(nn.Module):
        def __init__(self, padding):
            super().__init__()
            self.a = nn.Conv2d(3, 4, 3, padding=padding)
            self.b = nn.Conv2d(3, 2, 5, dilation=2, padding="same" if padding == "same" else 4)
            self.fc = nn.Linear(6 * 8 * 8, 2)

        def forward(self, x):
            return self.fc(torch.flatten(torch.cat([self.a(x), self.b(x)], dim=-3), 1))

    assert entries(Net("same"), (3, 8, 8)) == entries(Net(1), (3, 8, 8))
    # An even kernel: torch pads the odd cell after (no nodes: `padding_after`).
    conv = nn.Conv2d(3, 4, (2, 5), padding="same", dilation=(1, 2))
    [entry] = tomllib.loads(spec_from_module(nn.Sequential(conv), (3, 8, 8)))["layers"]
    assert (entry.get("padding"), entry.get("padding_after")) == ([0, 4], [1, 4])
    x = torch.randn(1, 3, 8, 8)
    got = F.conv2d(F.pad(x, [4, 4, 0, 1]), conv.weight, conv.bias, dilation=(1, 2))
    assert torch.allclose(got, conv(x), atol=1e-6)


def test_arguments_computed_from_shapes_are_read_as_the_run_computed_them():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1)
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            x = F.relu(self.conv(x))
            x = x[:, : x.size(1) // 2]  # a channel split
            x = F.avg_pool2d(x, x.size()[2:])  # a global average pool by the map's size
            return self.fc(x.view(x.size(0), -1))

    spec = tomllib.loads(spec_from_module(Net(), (3, 6, 5)))
    pool = spec["layers"][1]
    assert (pool["pool"], pool["kernel"], pool["from_channels"]) == ("avg", [6, 5], [0, 4])


class Gated(nn.Module):
    """A conv, a gate on its output, a conv after the gate."""

    def __init__(self, gate):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc1, self.fc2 = nn.Conv2d(4, 2, 1), nn.Conv2d(2, 4, 1)
        self.gate = gate
        self.out = nn.Conv2d(4, 5, 1)

    def forward(self, x):
        x = F.relu(self.conv(x))
        return self.out(self.gate(self, x))


def squeeze_excite(m, x):
    return torch.sigmoid(m.fc2(F.relu(m.fc1(x.mean((2, 3), keepdim=True))))) * x


def test_a_channel_gate_keeps_its_inputs_nodes_and_ends_its_branch_with_a_note():
    from torch_to_spec import TraceNote, notes_of

    with pytest.warns(TraceNote, match="1 channel gates"):
        text = spec_from_module(Gated(squeeze_excite), (3, 6, 5))
    spec = tomllib.loads(text)
    assert [(e["name"], e.get("from")) for e in spec["layers"]] == [
        ("conv", None), ("mean", None), ("fc1", None), ("fc2", None), ("out", "conv")]
    # Either operand order, torch.mul and x.mul read alike.
    for gate in (lambda m, x: x * squeeze_excite(m, x) / x, lambda m, x: torch.mul(x, squeeze_excite(m, x) / x)):
        with pytest.raises(TraceError):  # (a quotient is no gate)
            spec_from_module(Gated(gate), (3, 6, 5))
    for gate in (lambda m, x: x.mul(torch.sigmoid(m.fc2(F.relu(m.fc1(x.mean((2, 3), keepdim=True)))))),
                 lambda m, x: torch.mul(x, torch.sigmoid(m.fc2(F.relu(m.fc1(x.mean((2, 3), keepdim=True))))))):
        assert tomllib.loads(spec_from_module(Gated(gate), (3, 6, 5)))["layers"] == spec["layers"]
    [note] = notes_of(text)
    assert note.startswith("1 channel gates x * s (squeeze-and-excitation)") and note.endswith("reads: fc2")


def test_a_gate_from_a_sibling_branch_of_the_same_map_is_a_channel_gate():
    # LR-ASPP's head: a conv of a map, gated by a pooled branch of that map.
    class Head(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.cbr = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1)
            self.scale = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(4, 4, 1), nn.Sigmoid())
            self.out = nn.Conv2d(4, 5, 1)

        def forward(self, x):
            x = F.relu(self.conv(x))
            return self.out(self.cbr(x) * self.scale(x))

    from torch_to_spec import TraceNote

    with pytest.warns(TraceNote, match="1 channel gates"):
        spec = tomllib.loads(spec_from_module(Head(), (3, 7, 6)))
    assert [(e["name"], e.get("from")) for e in spec["layers"]] == [
        ("conv", None), ("cbr", None), ("scale.0", "conv"), ("scale.1", None), ("out", "cbr")]


@pytest.mark.parametrize(
    "gate, message",
    [
        (lambda m, x: x * 0.5 + x, "constant 0.5 scales a value that is not one weighted layer's output alone"),
        (lambda m, x: x * m.fc2(m.fc1(x)), r"a product of shapes \[1, 4, 6, 5\] and \[1, 4, 6, 5\]"),
        (lambda m, x: m.fc2(m.fc1(x)) * m.fc2(F.relu(m.fc1(x))), "a product of two independent tensors"),
    ],
)
def test_products_other_than_channel_gates_are_errors_naming_the_node(gate, message):
    with pytest.raises(TraceError, match=f"node `mul`: {message}"):
        spec_from_module(Gated(gate), (3, 6, 5))


def test_a_product_of_a_tensor_and_its_own_activation_is_an_activation():
    # A swish written by hand reads as F.silu: no entry, no gate.
    by_hand = Gated(lambda m, x: x * torch.sigmoid(x))
    with_silu = Gated(lambda m, x: F.silu(x))
    assert tomllib.loads(spec_from_module(by_hand, (3, 6, 5))) == tomllib.loads(spec_from_module(with_silu, (3, 6, 5)))
    assert tomllib.loads(spec_from_module(Gated(lambda m, x: torch.sigmoid(x) * x), (3, 6, 5)))["layers"] == \
        tomllib.loads(spec_from_module(with_silu, (3, 6, 5)))["layers"]


class Branches(nn.Module):
    """Two convs on the channel halves of a map, concatenated (MixNet's
    mixed conv, CSPNet's split)."""

    def __init__(self, part):
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.a, self.b = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(2, 3, 5, padding=2)
        self.part = part

    def forward(self, x):
        x = self.stem(x)
        first, second = self.part(x)
        return torch.cat([self.a(first), self.b(second)], 1)


def branch_layers(part):
    """The spec entries of `Branches` with `part` splitting its map."""
    return tomllib.loads(spec_from_module(Branches(part), (3, 7, 6)))["layers"]


def test_splits_and_chunks_on_channels_are_channel_slices():
    sliced = branch_layers(lambda x: (x[:, :2], x[:, 2:]))
    assert [e.get("from_channels") for e in sliced] == [None, [0, 2], [2, 4]]
    for part in (lambda x: torch.split(x, [2, 2], dim=1), lambda x: x.split(2, 1), lambda x: x.chunk(2, dim=-3),
                 lambda x: torch.chunk(x, 2, 1)):
        assert branch_layers(part) == sliced
    with pytest.raises(TraceError, match=r"node `split`: a split of a \[1, 4, 7, 6\] tensor on axis 2"):
        spec_from_module(nn.Sequential(nn.Conv2d(3, 4, 1), Lambda(lambda x: torch.split(x, 3, dim=2)[0])), (3, 7, 6))


class Lambda(nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f = f

    def forward(self, x):
        return self.f(x)


def test_a_batchnorm_subclass_is_read_as_a_batchnorm_with_a_note():
    from torch_to_spec import TraceNote, notes_of

    class BatchNormAct(nn.BatchNorm2d):  # timm's BatchNormAct2d, in short
        def forward(self, x):
            return F.relu(super().forward(x))

    def net(bn):
        return nn.Sequential(nn.Conv2d(3, 4, 3), bn(4), nn.Conv2d(4, 2, 1))

    with pytest.warns(TraceNote, match="BatchNormAct as BatchNorm2d"):
        text = spec_from_module(net(BatchNormAct), (3, 6, 6))
    assert tomllib.loads(text)["layers"] == tomllib.loads(spec_from_module(net(nn.BatchNorm2d), (3, 6, 6)))["layers"]
    assert any(n.startswith("subclasses read as the class they extend") for n in notes_of(text))


def test_a_channel_slice_may_name_the_whole_spatial_axes():
    assert branch_layers(lambda x: (x[:, :2, :, :], x[:, 2:, :])) == branch_layers(lambda x: (x[:, :2], x[:, 2:]))
    with pytest.raises(TraceError, match="node `getitem`: only channel slices"):
        spec_from_module(nn.Sequential(nn.Conv2d(3, 4, 1), Lambda(lambda x: x[:, :2, 1:]), nn.Conv2d(2, 3, 1)),
                         (3, 7, 6))


class ChannelsLastBlock(nn.Module):
    """A ConvNeXt block as timm writes it: a depthwise conv, then per pixel
    a LayerNorm and two Linears on the channels-last map, a layer scale
    `gamma` and a residual sum."""

    def __init__(self, f=None):
        super().__init__()
        self.conv_dw = nn.Conv2d(4, 4, 7, padding=3, groups=4)
        self.norm = nn.LayerNorm(4)
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 4)
        self.gamma = nn.Parameter(torch.full((4,), 0.5))
        self.wide = nn.Parameter(torch.ones(8))  # one factor per column, for an error case
        self.head = nn.Linear(4, 3)
        self.f = f

    def forward(self, x):
        shortcut = x
        x = self.conv_dw(x).permute(0, 2, 3, 1)
        x = self.fc2(F.gelu(self.fc1(self.norm(x)))).permute(0, 3, 1, 2)
        x = x.mul(self.gamma.reshape(1, -1, 1, 1)) + shortcut
        return self.head(x.mean((2, 3)) if self.f is None else self.f(self, x))


def test_linears_on_channels_last_maps_are_per_pixel_and_layer_scales_fold():
    from torch_to_spec import TraceNote, notes_of

    with pytest.warns(TraceNote, match="1 LayerNorms / GroupNorms normalise each sample"):
        text = spec_from_module(ChannelsLastBlock(), (4, 9, 8))
    layers = tomllib.loads(text)["layers"]
    assert [(e.get("name"), e.get("per_pixel"), e.get("scale"), e.get("to")) for e in layers] == [
        ("conv_dw", None, None, None),
        ("fc1", True, None, None),
        ("fc2", True, "gamma", "add"),
        (None, None, None, "add"),  # the shortcut's identity
        ("mean", None, None, None),
        ("head", None, None, None),
    ]
    assert notes_of(text)[0].endswith("their tensors are unused: norm")
    # torchvision's own ConvNeXt: its LayerNorm2d kept whole, its layer scale [C, 1, 1].
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    with pytest.warns(TraceNote):
        spec = tomllib.loads(spec_from_module(ConvNeXt([CNBlockConfig(8, None, 2)], num_classes=3), (3, 16, 16)))
    assert [(e["name"], e.get("per_pixel"), e.get("scale")) for e in spec["layers"] if "weight" in e] == [
        ("features.0.0", None, None),
        ("features.1.0.block.0", None, None),
        ("features.1.0.block.3", True, None),
        ("features.1.0.block.5", True, "features.1.0.layer_scale"),
        ("features.1.1.block.0", None, None),
        ("features.1.1.block.3", True, None),
        ("features.1.1.block.5", True, "features.1.1.layer_scale"),
        ("classifier.2", None, None),
    ]


def test_a_branch_scaled_by_a_number_folds_into_its_last_layer():
    """Inception-ResNet's (timm's Block35: `out * self.scale + x`) and
    ESRGAN's residual scales: `scale = 0.17` on the branch's last conv (an
    activation between them is no layer, as everywhere in the graph); a
    number scaling a value that other nodes read too is an error naming
    the node."""

    class Block(nn.Module):
        def __init__(self, shared=False):
            super().__init__()
            self.branch, self.conv, self.shared = nn.Conv2d(4, 3, 3, padding=1), nn.Conv2d(3, 4, 1), shared

        def forward(self, x):
            out = self.conv(F.relu(self.branch(x)))
            return F.relu(out * 0.17 + (out if self.shared else x))

    layers = tomllib.loads(spec_from_module(Block(), (4, 6, 5)))["layers"]
    assert [(e.get("name"), e.get("scale"), e.get("to")) for e in layers] == [
        ("branch", None, None), ("conv", 0.17, "add"), (None, None, "add")]
    with pytest.raises(TraceError, match="constant 0.17 scales a value that is not one weighted layer's output"):
        spec_from_module(Block(shared=True), (4, 6, 5))
    timm_irv2 = pytest.importorskip("timm.models.inception_resnet_v2")
    block = timm_irv2.Block35(scale=0.17)
    spec = tomllib.loads(spec_from_module(block, (320, 5, 5)))
    assert [e["name"] for e in spec["layers"] if e.get("scale") == 0.17] == ["conv2d"]


@pytest.mark.parametrize(
    "f, message",
    [
        (lambda m, x: x.permute(0, 1, 3, 2).mean((2, 3)),
         r"node `permute_2`: permutes \[1, 4, 9, 8\] by \[0, 1, 3, 2\]"),
        (lambda m, x: x.permute(0, 2, 3, 1).flatten(1)[:, :4], "node `flatten`: flattens a channels-last map"),
        (lambda m, x: F.max_pool2d(x.permute(0, 2, 3, 1), 1).mean((1, 2)), "node `max_pool2d`: reads a channels-last"),
        (lambda m, x: (x + m.gamma.reshape(1, -1, 1, 1)).mean((2, 3)), "node `add_1`: add_1 takes parameter `gamma`"),
        (lambda m, x: (x * m.gamma.reshape(1, -1, 1, 1)).mean((2, 3)),
         "node `mul_1`: parameter `gamma` scales a value that is not one weighted layer's output alone"),
        (lambda m, x: (m.conv_dw(x) * m.wide).mean((2, 3)),
         r"node `mul_1`: a product of \[1, 4, 9, 8\] with parameter `wide` of shape \[8\]"),
    ],
)
def test_what_channels_last_code_cannot_say_is_an_error_naming_the_node(f, message):
    with pytest.raises(TraceError, match=message):
        spec_from_module(ChannelsLastBlock(f), (4, 9, 8))


class Shuffled(nn.Module):
    """Branches of `sizes` channels concatenated, then torchvision's channel
    shuffle in `groups`, then a layer reading the second half of the
    shuffled map (ShuffleNetV2's unit); or, `single`, one grouped conv's
    output shuffled (ShuffleNet v1)."""

    def __init__(self, sizes, groups, single=False):
        super().__init__()
        self.branches = nn.ModuleList(nn.Conv2d(3, n, 1) for n in sizes)
        self.single = nn.Conv2d(3, sum(sizes), 1, groups=3) if single else None
        self.groups, self.total = groups, sum(sizes)
        self.head = nn.Conv2d(self.total - self.total // 2, 5, 1)

    def forward(self, x):
        from torchvision.models.shufflenetv2 import channel_shuffle

        y = self.single(x) if self.single is not None else torch.cat([b(x) for b in self.branches], 1)
        y = channel_shuffle(y, self.groups)
        return self.head(y[:, self.total // 2:])


@pytest.mark.parametrize("sizes", [[4, 4], [2, 2, 2], [3, 3, 3, 3]])
def test_a_channel_shuffle_interleaves_its_writers_as_torch_shuffles_them(sizes):
    from torchvision.models.shufflenetv2 import channel_shuffle

    total, groups = sum(sizes), len(sizes)
    text = spec_from_module(Shuffled(sizes, groups), (3, 5, 4))
    layers = {e.get("name"): e for e in tomllib.loads(text)["layers"]}
    # torchvision's own shuffle of the channels' numbers: where each channel of the concatenation goes.
    order = channel_shuffle(torch.arange(float(total)).view(1, total, 1, 1), groups).flatten().tolist()
    first = 0
    for i, n in enumerate(sizes):
        e = layers[f"branches.{i}"]
        step, at = e.get("channel_step", 1), e.get("offset", 0)
        assert [order[at + k * step] for k in range(n)] == [first + k for k in range(n)], (i, e, order)
        first += n
    assert layers["head"]["from_channels"] == [total // 2, total]


def test_a_channel_shuffle_the_spec_cannot_say_is_an_error_naming_the_node():
    # Groups of the shuffle that mix one layer's outputs: a grouped conv's
    # (ShuffleNet v1), or two branches shuffled in more groups than branches.
    for model in (Shuffled([6], 3, single=True), Shuffled([4, 4], 4)):
        with pytest.raises(TraceError, match="node `view_1`: a channel shuffle whose groups of 2 channels mix"):
            spec_from_module(model, (3, 5, 4))


def test_one_dimensional_layers_are_the_2d_layers_over_one_row():
    modules = nn.Sequential(nn.Conv1d(2, 4, 5, stride=2, padding=1), nn.MaxPool1d(3, 2),
                            nn.AvgPool1d(2, ceil_mode=True, count_include_pad=False),
                            nn.Conv1d(4, 4, 3, padding="same"),
                            nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(4, 3))
    text = spec_from_module(modules, (2, 40))
    assert tomllib.loads(text)["input"] == [2, 1, 40]
    want = [
        {"weight": "0.weight", "bias": "0.bias", "stride": [1, 2], "padding": [0, 1]},
        {"pool": "max", "kernel": [1, 3], "stride": [1, 2]},
        {"pool": "avg", "kernel": [1, 2], "count_include_pad": False},
        {"weight": "3.weight", "bias": "3.bias", "padding": [0, 1]},
        {"pool": "global_avg"},
        {"weight": "6.weight", "bias": "6.bias"},
    ]
    assert entries(modules, (2, 40)) == want
    functional = nn.Sequential(modules[0], Lambda(lambda x: F.max_pool1d(x, 3, 2)),
                               Lambda(lambda x: F.avg_pool1d(x, [2], ceil_mode=True, count_include_pad=False)),
                               modules[3], Lambda(lambda x: x.mean(-1)), modules[6])
    unweighted = lambda es: [{k: v for k, v in e.items() if k not in ("weight", "bias")} for e in es]  # noqa: E731
    assert unweighted(entries(functional, (2, 40))) == unweighted(want)


class Upsampled(nn.Module):
    def __init__(self, up):
        super().__init__()
        self.down, self.head = nn.Conv2d(3, 4, 3, stride=2), nn.Conv2d(4, 2, 1)
        self.up = up

    def forward(self, x):
        return self.head(self.up(self.down(x)))


@pytest.mark.parametrize(
    "up, want",
    [
        (nn.Upsample(scale_factor=2), {"interpolate": "nearest", "output": [8, 6]}),
        (nn.Upsample(scale_factor=(3, 1), mode="nearest-exact"), {"interpolate": "nearest-exact", "output": [12, 3]}),
        (Lambda(lambda x: F.interpolate(x, size=(8, 9))), {"interpolate": "nearest", "output": [8, 9]}),
        (nn.Upsample(scale_factor=2, mode="bilinear"), {"interpolate": "bilinear", "output": [8, 6]}),
        (nn.UpsamplingBilinear2d(size=(7, 5)), {"interpolate": "bilinear", "output": [7, 5], "align_corners": True}),
        (Lambda(lambda x: F.interpolate(x, scale_factor=1.7, mode="bicubic", align_corners=False)),
         {"interpolate": "bicubic", "output": [6, 5], "scale_factor": [1.7, 1.7]}),
        (Lambda(lambda x: F.interpolate(x, None, 1.7, "bilinear", True, True)),
         {"interpolate": "bilinear", "output": [6, 5], "align_corners": True}),
        (Lambda(lambda x: F.interpolate(x, size=(2, 2), mode="area")), {"pool": "adaptive_avg", "output": [2, 2]}),
    ],
)
def test_interpolations_are_written_with_what_places_their_taps(up, want):
    spec = tomllib.loads(spec_from_module(Upsampled(up), (3, 9, 7)))
    [entry] = [e for e in spec["layers"] if "interpolate" in e or "pool" in e]
    assert {k: v for k, v in entry.items() if k not in ("name",)} == want


def test_a_one_dimensional_linear_interpolation_is_bilinear_over_one_row():
    model = nn.Sequential(nn.Conv1d(2, 3, 3), nn.Upsample(scale_factor=2.5, mode="linear"), nn.Conv1d(3, 1, 1))
    spec = tomllib.loads(spec_from_module(model, (2, 11)))
    [entry] = [e for e in spec["layers"] if "interpolate" in e]
    assert (entry["interpolate"], entry["output"], entry["scale_factor"]) == ("bilinear", [1, 22], [1.0, 2.5])


def test_antialiased_interpolations_are_errors_naming_the_node():
    # antialias widens the taps when it shrinks the grid: not torch's interpolation weights that the spec places.
    for mode in ("bilinear", "bicubic"):
        up = Lambda(lambda x, mode=mode: F.interpolate(x, size=(3, 3), mode=mode, antialias=True))
        with pytest.raises(TraceError, match="node `interpolate`: interpolates .* with antialias"):
            spec_from_module(Upsampled(up), (3, 9, 7))


@pytest.mark.parametrize(
    "pad, want",
    [
        (Lambda(lambda x: F.pad(x, [0, 0, 0, 0])), None),  # U-Net's join when sizes match: no entry
        (nn.ZeroPad2d((0, 0, 0, 0)), None),
        (Lambda(lambda x: F.pad(x, [0, 1, 2, 0])), {"pad": [0, 1, 2, 0]}),
        (Lambda(lambda x: F.pad(x, (1, -1), "constant", 0.0)), {"pad": [1, -1, 0, 0]}),
        (nn.ZeroPad2d((1, 2, 3, 0)), {"pad": [1, 2, 3, 0]}),
        (nn.ConstantPad2d(1, 0.0), {"pad": [1, 1, 1, 1]}),
        (nn.ReflectionPad2d(2), {"pad": [2, 2, 2, 2], "pad_mode": "reflect"}),
        (nn.ReplicationPad2d((0, 1, 2, 3)), {"pad": [0, 1, 2, 3], "pad_mode": "replicate"}),
        (Lambda(lambda x: F.pad(x, [1, 1, 1, 1], mode="circular")), {"pad": [1, 1, 1, 1], "pad_mode": "circular"}),
    ],
)
def test_pads_are_written_in_torchs_order_and_a_pad_of_nothing_is_no_entry(pad, want):
    spec = tomllib.loads(spec_from_module(Upsampled(pad), (3, 9, 7)))
    pads = [{k: v for k, v in e.items() if k in ("pad", "pad_mode")} for e in spec["layers"] if "pad" in e]
    assert pads == ([want] if want else [])


def test_a_conv_with_a_padding_mode_reads_a_pad_entry_in_that_mode():
    for mode in ("reflect", "replicate", "circular"):
        conv = nn.Conv2d(3, 4, (3, 5), padding=(1, 2), padding_mode=mode)
        spec = tomllib.loads(spec_from_module(nn.Sequential(conv, nn.Conv2d(4, 2, 1)), (3, 9, 7)))
        pad, first = spec["layers"][:2]
        assert pad == {"name": "0.pad", "pad": [2, 2, 1, 1], "pad_mode": mode}
        assert first["weight"] == "0.weight" and "padding" not in first and "from" not in first
    # 'same' with an even kernel: torch pads the extra cell after.
    conv = nn.Conv1d(2, 3, 4, padding="same", padding_mode="reflect")
    spec = tomllib.loads(spec_from_module(nn.Sequential(conv, nn.Conv1d(3, 1, 1)), (2, 20)))
    assert spec["layers"][0]["pad"] == [1, 2, 0, 0] and "padding" not in spec["layers"][1]


def test_pads_the_spec_cannot_say_are_errors_naming_the_node():
    for pad, why in ((nn.ConstantPad2d(1, 0.5), "value 0.5"), (Lambda(lambda x: F.pad(x, [0, 0, 0, 0, 1, 1])[:, 1:-1]),
                                                            "only the spatial axes")):
        with pytest.raises(TraceError, match=why):
            spec_from_module(Upsampled(pad), (3, 9, 7))


def test_transposed_convs_write_their_output_padding_as_the_run_gave_it():
    class Decoder(nn.Module):
        def __init__(self, conv, up):
            super().__init__()
            self.conv, self.up = conv, up

        def forward(self, x):
            y = self.conv(x)
            return self.up(y, output_size=x.shape[2:])

    two = Decoder(nn.Conv2d(3, 4, 3, 2, 1), nn.ConvTranspose2d(4, 3, 3, 2, 1, groups=1))
    layers = tomllib.loads(spec_from_module(two, (3, 10, 9)))["layers"]
    assert {k: layers[1].get(k) for k in ("transposed", "stride", "padding", "output_padding")} == {
        "transposed": True, "stride": 2, "padding": 1, "output_padding": [1, 0]}
    one = Decoder(nn.Conv1d(2, 4, 4, 3), nn.ConvTranspose1d(4, 2, 4, 3))
    layers = tomllib.loads(spec_from_module(one, (2, 20)))["layers"]
    assert {k: layers[1].get(k) for k in ("transposed", "stride", "padding", "output_padding")} == {
        "transposed": True, "stride": [1, 3], "padding": None, "output_padding": [0, 1]}


def test_the_command_line_points_a_model_no_spec_describes_to_discovery(capsys):
    from torch_to_spec import main

    # torchvision's vision transformer: its tokens are a reshaped map.
    args = ["torchvision.models.VisionTransformer", "--input", "3,8,8", "--kwargs",
            '{"image_size": 8, "patch_size": 4, "num_layers": 1, "num_heads": 2, "hidden_dim": 8, "mlp_dim": 16}']
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: node `reshape`: reshapes") and "without --spec (discovery" in err


@pytest.mark.parametrize("size", [(9, 7), (16, 15)])
def test_timms_same_convs_and_pools_pad_as_their_forwards_pad(size):
    """timm's Conv2dSame, MaxPool2dSame and AvgPool2dSame pad as
    TensorFlow's 'SAME' (the odd cell after), by amounts computed from the
    input's size: `padding` and `padding_after`, no pad entry (padded cells
    are no nodes)."""
    conv2d_same = pytest.importorskip("timm.layers.conv2d_same")
    pool2d_same = pytest.importorskip("timm.layers.pool2d_same")
    conv = conv2d_same.Conv2dSame(3, 4, (3, 4), stride=2, dilation=(1, 2))
    mp, ap = pool2d_same.MaxPool2dSame(3, 2), pool2d_same.AvgPool2dSame((2, 3), (2, 1))
    spec = tomllib.loads(spec_from_module(nn.Sequential(conv, mp, ap, nn.Conv2d(4, 2, 1)), (3, *size)))
    first, maxpool, avgpool = spec["layers"][:3]
    assert first["stride"] == 2 and "pad" not in first and maxpool["pool"] == "max" and avgpool["pool"] == "avg"

    def torch_pad(e):
        """The entry's padding as F.pad's [left, right, top, bottom]."""
        before = e.get("padding", 0)
        before = before if isinstance(before, list) else [before, before]
        after = e.get("padding_after", before)
        after = after if isinstance(after, list) else [after, after]
        return [before[1], after[1], before[0], after[0]]

    # The spec's paddings, then each unpadded, are timm's forwards.
    x = torch.randn(1, 3, *size)
    y = F.conv2d(F.pad(x, torch_pad(first)), conv.weight, conv.bias, 2, 0, (1, 2))
    assert torch.allclose(y, conv(x), atol=1e-6)
    z = F.max_pool2d(F.pad(y, torch_pad(maxpool), value=-float("inf")), 3, 2)
    assert torch.equal(z, mp(y))
    # (AvgPool2dSame pads with zeros, which count in the divisor.)
    assert avgpool.get("count_include_pad", True) is True
    assert torch.allclose(F.avg_pool2d(F.pad(z, torch_pad(avgpool)), (2, 3), (2, 1)), ap(z), atol=1e-6)


def test_ecas_conv1d_across_channels_reads_the_pooled_channels_as_a_row():
    class Eca(nn.Module):
        def __init__(self, across):
            super().__init__()
            self.conv, self.across, self.out = nn.Conv2d(3, 6, 3), across, nn.Conv2d(6, 2, 1)

        def forward(self, x):
            x = self.conv(x)
            y = self.across(x.mean((2, 3)).view(x.shape[0], 1, -1))
            return self.out(x * torch.sigmoid(y).view(x.shape[0], -1, 1, 1).expand_as(x))

    spec = tomllib.loads(spec_from_module(Eca(nn.Conv1d(1, 1, 5, padding=2, bias=False)), (3, 9, 8)))
    [eca] = [e for e in spec["layers"] if e["name"] == "across"]
    assert (eca["view"], eca["padding"]) == ([1, 1, 6], [0, 2])
    # Read by anything but a Conv1d of one input channel, the row is an error.
    with pytest.raises(TraceError, match=r"node `view`: reshapes \[1, 6\] to \[1, 1, 6\]"):
        spec_from_module(Eca(nn.Sequential(nn.AvgPool1d(1), nn.Conv1d(1, 1, 1))), (3, 9, 8))


def test_a_global_response_norm_keeps_its_inputs_nodes_with_a_note():
    grn = pytest.importorskip("timm.layers.grn")
    from torch_to_spec import TraceNote, notes_of

    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.GELU(), grn.GlobalResponseNorm(4, channels_last=False),
                          nn.Conv2d(4, 2, 1))
    with pytest.warns(TraceNote, match="1 global response norms"):
        text = spec_from_module(model, (3, 6, 5))
    assert [e["name"] for e in tomllib.loads(text)["layers"]] == ["0", "3"]
    assert any(n.startswith("1 global response norms (ConvNeXt V2's)") and n.endswith(": 2") for n in notes_of(text))


def test_a_pixel_shuffle_is_read_by_the_conv_after_it_and_by_nothing_else():
    class SubPixel(nn.Module):
        def __init__(self, after):
            super().__init__()
            self.head, self.body, self.after = nn.Conv2d(12, 8, 3, padding=1), nn.Conv2d(8, 16, 1), after

        def forward(self, x):
            return self.after(F.pixel_shuffle(self.body(self.head(F.pixel_unshuffle(x, 2))), 2))

    spec = tomllib.loads(spec_from_module(SubPixel(nn.Conv2d(4, 3, 3)), (3, 8, 6)))
    assert [(e["name"], e.get("pixel_unshuffle"), e.get("pixel_shuffle")) for e in spec["layers"]] == [
        ("head", 2, None), ("body", None, None), ("after", None, 2)]
    # Through an activation (SRGAN's PReLU after its shuffle) too.
    spec = tomllib.loads(spec_from_module(SubPixel(nn.Sequential(nn.PReLU(), nn.Conv2d(4, 3, 3))), (3, 8, 6)))
    assert spec["layers"][-1]["pixel_shuffle"] == 2
    with pytest.raises(TraceError, match="node `pixel_shuffle`: a pixel_shuffle read by something other than a Conv2d"):
        spec_from_module(SubPixel(nn.MaxPool2d(2)), (3, 8, 6))


def test_parametrizations_other_than_weight_norm_spectral_norm_and_pruning_are_errors():
    from torch.nn.utils import parametrizations, prune

    ok = nn.Sequential(parametrizations.weight_norm(nn.Linear(4, 3)), parametrizations.spectral_norm(nn.Linear(3, 2)),
                       prune.random_unstructured(nn.Linear(2, 2), "weight", amount=0.5))
    assert [e["weight"] for e in entries(ok, (4,))] == ["0.weight", "1.weight", "2.weight"]
    notes = " ".join(spec_from_module(ok, (4,)).replace("#", " ").split())
    assert "0 (weight norm), 1 (spectral norm), 2 (pruning mask)" in notes
    bad = nn.Sequential(parametrizations.orthogonal(nn.Linear(4, 4)))
    with pytest.raises(TraceError, match="module `0`: its `weight` is parametrized by _Orthogonal"):
        spec_from_module(bad, (4,))
