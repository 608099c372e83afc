#!/usr/bin/env python3
"""Train a population of small networks on scikit-learn's bundled digits
data (8x8 images, no download) and save a checkpoint every epoch.

Two architectures, saved with PyTorch state_dict naming (nn.Sequential):
- mlp: Linear 64-32, ReLU, Linear 32-16, ReLU, Linear 16-10
  (net.0, net.2, net.4);
- cnn: Conv 1->8 3x3 pad 1, ReLU, Conv 8->16 3x3 stride 2 pad 1, ReLU,
  flatten (c, y, x), Linear 256-10 (net.0, net.2, net.5; geometry in
  examples/zoo/cnn.toml).

and two trained with PyTorch (real torch modules, saved from their
state_dict; specs written from the code by python/torch_to_spec.py):
- bncnn: Conv 1->8 3x3 pad 1, BatchNorm, ReLU, MaxPool 2, Conv 8->16 3x3
  pad 1, BatchNorm, ReLU, MaxPool 2, flatten, Linear 64-10
  (examples/zoo/bncnn.toml);
- resnet: Conv 1->8 + BatchNorm stem, a basic residual block (identity
  skip), a downsampling block (stride 2, 1x1 conv + BatchNorm skip), global
  average pool, Linear 16-10 (examples/zoo/resnet.toml).

Seeds x init scales (He-normal std times 0.3, 1 and 3) x epochs, SGD with
momentum, on the CPU (JAX for mlp/cnn, PyTorch for bncnn/resnet). Every file carries `accuracy` (test),
`epoch`, `seed`, `init`, `arch` and `run` in its `__metadata__`. Under-
trained (early epochs, bad init scales) and accurate networks both appear.

    pip install "jax[cpu]" torch numpy scikit-learn safetensors
    python3 examples/make_zoo.py examples/zoo            # the shipped subset
    python3 examples/make_zoo.py examples/zoo --arch bncnn resnet   # only those
    python3 examples/make_zoo.py /data/zoo --seeds 20 --epochs 30
"""

import argparse
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

INITS = {"small": 0.3, "he": 1.0, "large": 3.0}


def init_params(arch, key, scale):
    import jax
    import jax.numpy as jnp

    def he(key, shape, fan_in):
        return scale * jax.random.normal(key, shape) * jnp.sqrt(2.0 / fan_in)

    k = jax.random.split(key, 3)
    if arch == "mlp":
        sizes = [64, 32, 16, 10]
        return {
            f"net.{2 * i}": {"weight": he(k[i], (o, n), n), "bias": jnp.zeros(o)}
            for i, (n, o) in enumerate(zip(sizes, sizes[1:]))
        }
    return {
        "net.0": {"weight": he(k[0], (8, 1, 3, 3), 9), "bias": jnp.zeros(8)},
        "net.2": {"weight": he(k[1], (16, 8, 3, 3), 72), "bias": jnp.zeros(16)},
        "net.5": {"weight": he(k[2], (10, 256), 256), "bias": jnp.zeros(10)},
    }


def forward(arch, p, x):
    import jax

    if arch == "mlp":
        h = jax.nn.relu(x @ p["net.0"]["weight"].T + p["net.0"]["bias"])
        h = jax.nn.relu(h @ p["net.2"]["weight"].T + p["net.2"]["bias"])
        return h @ p["net.4"]["weight"].T + p["net.4"]["bias"]
    h = x.reshape(-1, 1, 8, 8)
    conv = lambda h, w, s: jax.lax.conv_general_dilated(h, w, (s, s), ((1, 1), (1, 1)), dimension_numbers=("NCHW", "OIHW", "NCHW"))
    h = jax.nn.relu(conv(h, p["net.0"]["weight"], 1) + p["net.0"]["bias"][None, :, None, None])
    h = jax.nn.relu(conv(h, p["net.2"]["weight"], 2) + p["net.2"]["bias"][None, :, None, None])
    return h.reshape(h.shape[0], -1) @ p["net.5"]["weight"].T + p["net.5"]["bias"]


def train(arch, seed, init, epochs, data, out, lr=0.02, batch=32):
    import jax
    import jax.numpy as jnp

    x_tr, x_te, y_tr, y_te = [jnp.asarray(a) for a in data]
    params = init_params(arch, jax.random.PRNGKey(seed), INITS[init])
    velocity = jax.tree_util.tree_map(jnp.zeros_like, params)

    def loss(p, x, y):
        return -jnp.mean(jax.nn.log_softmax(forward(arch, p, x))[jnp.arange(len(y)), y])

    @jax.jit
    def step(p, v, x, y):
        g = jax.grad(loss)(p, x, y)
        v = jax.tree_util.tree_map(lambda v, g: 0.9 * v + g, v, g)
        return jax.tree_util.tree_map(lambda p, v: p - lr * v, p, v), v

    accuracy = jax.jit(lambda p: jnp.mean(jnp.argmax(forward(arch, p, x_te), axis=1) == y_te))
    rng = np.random.default_rng(seed)
    run = f"{arch}-{init}-s{seed}"
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(y_tr))
        for i in range(0, len(order), batch):
            b = order[i : i + batch]
            params, velocity = step(params, velocity, x_tr[b], y_tr[b])
        acc = float(accuracy(params))
        tensors = {f"{layer}.{k}": np.asarray(v, dtype=np.float32) for layer, d in params.items() for k, v in d.items()}
        meta = {"accuracy": f"{acc:.4f}", "epoch": str(epoch), "seed": str(seed), "init": init, "arch": arch, "run": run}
        save_file(tensors, str(out / arch / f"{run}-e{epoch:02d}.safetensors"), metadata=meta)
    print(f"{run}: test accuracy {acc:.3f}")


def torch_model(arch):
    """The PyTorch populations' networks."""
    import torch.nn as nn

    if arch == "bncnn":
        return nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64, 10),
        )

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            h = nn.functional.relu(self.bn1(self.conv1(x)))
            h = self.bn2(self.conv2(h))
            return nn.functional.relu(h + (x if self.down is None else self.down(x)))

    class ResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(1, 8, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(8)
            self.block1 = Block(8, 8, 1)
            self.block2 = Block(8, 16, 2)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(16, 10)

        def forward(self, x):
            x = nn.functional.relu(self.bn1(self.conv1(x)))
            x = self.pool(self.block2(self.block1(x)))
            return self.fc(x.flatten(1))

    return ResNet()


def train_torch(arch, seed, init, epochs, data, out, lr=0.02, batch=32):
    import torch
    from safetensors.torch import save_file as save_torch

    torch.manual_seed(seed)
    x_tr, x_te, y_tr, y_te = (torch.as_tensor(a) for a in data)
    x_tr, x_te = x_tr.reshape(-1, 1, 8, 8), x_te.reshape(-1, 1, 8, 8)
    model = torch_model(arch)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0.0, INITS[init] * (2.0 / fan_in) ** 0.5)
                if m.bias is not None:
                    m.bias.zero_()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    rng = np.random.default_rng(seed)
    run = f"{arch}-{init}-s{seed}"
    for epoch in range(1, epochs + 1):
        model.train()
        order = rng.permutation(len(y_tr))
        for i in range(0, len(order), batch):
            b = torch.as_tensor(order[i : i + batch])
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x_tr[b]), y_tr[b]).backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            acc = float((model(x_te).argmax(1) == y_te).float().mean())
        meta = {"accuracy": f"{acc:.4f}", "epoch": str(epoch), "seed": str(seed), "init": init, "arch": arch, "run": run}
        state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
        save_torch(state, str(out / arch / f"{run}-e{epoch:02d}.safetensors"), metadata=meta)
    print(f"{run}: test accuracy {acc:.3f}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out", type=Path)
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--epochs", type=int, default=8)
    ap.add_argument("--arch", nargs="+", default=["mlp", "cnn", "bncnn", "resnet"])
    args = ap.parse_args()
    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32)
    data = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    for arch in args.arch:
        (args.out / arch).mkdir(parents=True, exist_ok=True)
        for init in INITS:
            for seed in range(args.seeds):
                (train if arch in ("mlp", "cnn") else train_torch)(arch, seed, init, args.epochs, data, args.out)
        if arch == "cnn":
            (args.out / "cnn.toml").write_text(CNN_SPEC)
        elif arch in ("bncnn", "resnet"):
            import sys

            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "python"))
            from torch_to_spec import spec_from_module

            (args.out / f"{arch}.toml").write_text(spec_from_module(torch_model(arch), (1, 8, 8)))


CNN_SPEC = """# Geometry of the example CNNs (examples/make_zoo.py).
input = [1, 8, 8]
layout = "torch"

[[layers]]
weight = "net.0.weight"
bias = "net.0.bias"
padding = 1

[[layers]]
weight = "net.2.weight"
bias = "net.2.bias"
stride = 2
padding = 1

[[layers]]
weight = "net.5.weight"
bias = "net.5.bias"
"""

if __name__ == "__main__":
    main()
