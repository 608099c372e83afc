"""The paper's populations at the paper's design, on scikit-learn's digits.

"Characterizing Learning Dynamics of Deep Neural Networks via Complex
Networks" (ICTAI 2021) and its code (CNT-DNNs) train Keras networks with one
hidden layer: fully connected with 8 / 256 / 2000 hidden units (small /
medium / big) and CNNs with 10 / 64 / 256 3x3 filters, initialised
RandomNormal(std 0.05, 0.5, 5.0) and with other initialisers, SGD with
learning rate 0.01, batch 16, 10 epochs, about a thousand networks per
setting. Here the data are the digits that ship with scikit-learn (8x8, no
download at run time); everything else follows that design:

- architectures: fc-small/medium/big (64-H-10, ReLU, softmax) and
  cnn-small/medium/big (1x8x8 -> F 3x3 filters, valid, ReLU -> 10);
- initialisers: normal-0.05, normal-0.5, normal-5.0 (RandomNormal),
  uniform-0.05 (RandomUniform(-0.05, 0.05), Keras' default range) and
  fan_avg (VarianceScaling(1, fan_avg, normal): Glorot normal); biases 0;
- SGD, learning rate 0.01, batch 16, 10 epochs, softmax cross-entropy;
- every network is trained by NumPy with its own initialisation seed and
  its own shuffles, a cache-sized chunk of networks side by side (see
  `CHUNK_BYTES`); the tensors do not depend on the chunking or `--jobs`;
- a checkpoint of every network at the end, and of the first
  `--dynamics-runs` networks of each setting after every epoch, as
  safetensors in torch layout (dense [out, in], conv [F, 1, 3, 3]) with
  metadata `accuracy` (test accuracy), `epoch`, `seed`, `init`, `scale`,
  `size`, `arch`, `run`.

    python3 examples/paper/train_population.py OUT [--per-setting 200]

With 200 networks per (architecture, size, initialiser) that is 1000
networks per architecture and size, 3000 per architecture (6000 in all).
Then:

    cntscope scan 'OUT/fc/*/*-e10.safetensors' -o scan-fc              # final checkpoints
    cntscope scan 'OUT/cnn/*/*-e10.safetensors' --input 1,8,8 -o scan-cnn
    cntscope ensemble scan-fc -o study-fc --within init,size
    cntscope dynamics OUT/fc -o dynamics-fc                           # runs along training

Time on the 2-core development machine (NumPy's BLAS, one worker process
per core): the full design (--per-setting 200, 6000 networks) takes 9
minutes; cnn-big (about 2 minutes of one core a setting) and fc-big (45 s)
are most of it. The README's section "The paper's study, replicated"
gives the studies run on it and their numbers.
"""

import argparse
import ctypes
import multiprocessing as mp
import os
import time
from functools import partial

# One BLAS thread per worker process: the networks are the parallel axis.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
from safetensors.numpy import save_file  # noqa: E402
from sklearn.datasets import load_digits  # noqa: E402

SIZES = {"fc": {"small": 8, "medium": 256, "big": 2000}, "cnn": {"small": 10, "medium": 64, "big": 256}}
INITS = ["normal-0.05", "normal-0.5", "normal-5.0", "uniform-0.05", "fan_avg"]
LR, BATCH, EPOCHS = 0.01, 16, 10


def data():
    d = load_digits()
    x = (d.data / 16.0).astype(np.float32)
    y = d.target.astype(np.int64)
    order = np.random.default_rng(0).permutation(len(y))
    x, y = x[order], y[order]
    n = int(0.8 * len(y))
    return x[:n], y[:n], x[n:], y[n:]


def init(rng, name, shape, fan_in, fan_out):
    """Weights of `shape` (leading axis: the networks) as Keras draws them."""
    kind, _, scale = name.partition("-")
    if kind == "normal":
        return rng.normal(0.0, float(scale), shape).astype(np.float32)
    if kind == "uniform":
        return rng.uniform(-float(scale), float(scale), shape).astype(np.float32)
    if kind == "fan_avg":
        return rng.normal(0.0, np.sqrt(2.0 / (fan_in + fan_out)), shape).astype(np.float32)
    raise ValueError(name)


def scale_of(name):
    return name.partition("-")[2] or "glorot"


def patches(x):
    """(N, 64) images -> (N, 36, 9) 3x3 patches, valid padding, row-major."""
    img = x.reshape(-1, 8, 8)
    cols = [img[:, dy : dy + 6, dx : dx + 6].reshape(-1, 36) for dy in range(3) for dx in range(3)]
    return np.stack(cols, axis=-1)


class Nets:
    """R networks of one architecture, trained side by side."""

    def __init__(self, arch, width, init_name, seeds):
        self.arch, self.width, self.r = arch, width, len(seeds)
        rngs = [np.random.default_rng(s) for s in seeds]
        if arch == "fc":
            shapes = [((64, width), 64, width), ((width, 10), width, 10)]
        else:
            shapes = [((9, width), 9, width), ((36 * width, 10), 36 * width, 10)]
        self.w = [np.stack([init(g, init_name, s, fi, fo) for g in rngs]) for s, fi, fo in shapes]
        self.b = [np.zeros((self.r, width), np.float32), np.zeros((self.r, 10), np.float32)]

    def hidden_input(self, x):
        """(R, B, in) per-network inputs to the first layer."""
        return patches(x.reshape(-1, 64)).reshape(self.r, -1, 36, 9) if self.arch == "cnn" else x

    def forward(self, x):
        if self.arch == "fc":
            z1 = np.matmul(x, self.w[0])
            z1 += self.b[0][:, None, :]
            h = np.maximum(z1, 0)
            flat = h
        else:
            p = x  # (R, B, 36, 9)
            z1 = np.matmul(p, self.w[0][:, None])  # (R, B, 36, F)
            z1 += self.b[0][:, None, None, :]
            h = np.maximum(z1, 0)
            # torch's flatten order of a [F, 6, 6] map: channel, then position.
            flat = h.transpose(0, 1, 3, 2).reshape(self.r, h.shape[1], -1)
        logits = np.matmul(flat, self.w[1]) + self.b[1][:, None, :]
        return z1, h, flat, logits

    def step(self, x, y):
        z1, h, flat, logits = self.forward(x)
        logits = logits - logits.max(-1, keepdims=True)
        p = np.exp(logits)
        p /= p.sum(-1, keepdims=True)
        p[np.arange(self.r)[:, None], np.arange(y.shape[1])[None, :], y] -= 1.0
        g = p / y.shape[1]  # (R, B, 10)
        gw1 = np.matmul(flat.transpose(0, 2, 1), g)
        gb1 = g.sum(1)
        gflat = np.matmul(g, self.w[1].transpose(0, 2, 1))
        if self.arch == "fc":
            gz = gflat * (z1 > 0)
            gw0 = np.matmul(x.transpose(0, 2, 1), gz)
            gb0 = gz.sum(1)
        else:
            # The ReLU's gradient in the flattened (channel, position) order,
            # where both factors are contiguous, then turned to (position, channel).
            gz = gflat * (flat > 0)
            gz = np.ascontiguousarray(gz.reshape(self.r, -1, self.width, 36).transpose(0, 1, 3, 2))  # (R, B, 36, F)
            gw0 = np.matmul(x.reshape(self.r, -1, 9).transpose(0, 2, 1), gz.reshape(self.r, -1, self.width))
            gb0 = gz.sum((1, 2))
        for w, gw in ((self.w[0], gw0), (self.w[1], gw1)):
            w -= LR * gw
        self.b[0] -= LR * gb0
        self.b[1] -= LR * gb1

    def accuracy(self, x, y, chunk=40):
        right = np.zeros(self.r)
        finite = np.ones(self.r, bool)
        for a in range(0, len(y), chunk):
            xs, ys = x[a : a + chunk], y[a : a + chunk]
            inp = np.broadcast_to(xs, (self.r,) + xs.shape)
            _, _, _, logits = self.forward(self.hidden_input(inp))
            right += (logits.argmax(-1) == ys[None, :]).sum(1)
            finite &= np.isfinite(logits).all(axis=(1, 2))
        ok = right / len(y)
        # A diverged network (NaN or infinite outputs) has no accuracy.
        ok[~finite] = np.nan
        return ok

    def tensors(self, i):
        """Network i in torch layout."""
        if self.arch == "fc":
            return {
                "fc1.weight": np.ascontiguousarray(self.w[0][i].T),
                "fc1.bias": self.b[0][i].copy(),
                "fc2.weight": np.ascontiguousarray(self.w[1][i].T),
                "fc2.bias": self.b[1][i].copy(),
            }
        return {
            "conv.weight": np.ascontiguousarray(self.w[0][i].T.reshape(self.width, 1, 3, 3)),
            "conv.bias": self.b[0][i].copy(),
            "fc.weight": np.ascontiguousarray(self.w[1][i].T),
            "fc.bias": self.b[1][i].copy(),
        }


# A chunk's weights, gradients and activations should stay in a core's cache
# for all of its training steps: networks are trained a chunk at a time, each
# chunk through every epoch, rather than all networks of a setting one step at
# a time (which streams every weight through memory at every step).
CHUNK_BYTES = 1 << 20


def net_bytes(arch, width):
    """Bytes of one network's per-step working set (weights, gradients, activations)."""
    if arch == "fc":
        return 4 * (3 * (64 * width + 10 * width) + 4 * BATCH * width)
    return 4 * (3 * (9 * width + 36 * width * 10) + 4 * BATCH * 36 * width)


def units(archs, sizes, inits, per_setting):
    """The work, in a fixed order: (arch, size, init, setting's first seed, chunk's first index, chunk length)."""
    out, seed = [], 0
    for arch in archs:
        for size in sizes:
            chunk = max(1, min(per_setting, CHUNK_BYTES // net_bytes(arch, SIZES[arch][size])))
            for init_name in inits:
                for first in range(0, per_setting, chunk):
                    out.append((arch, size, init_name, seed, first, min(chunk, per_setting - first)))
                seed += per_setting
    return out


def train(unit, out, dynamics_runs):
    """Train one chunk of a setting through every epoch; save its checkpoints."""
    arch, size, init_name, first_seed, first, count = unit
    xtr, ytr, xte, yte = DATA
    t = time.time()
    width = SIZES[arch][size]
    seeds = list(range(first_seed + first, first_seed + first + count))
    nets = Nets(arch, width, init_name, seeds)
    order_rng = [np.random.default_rng(10**6 + s) for s in seeds]
    folder = os.path.join(out, arch, f"{size}-{init_name}")
    os.makedirs(folder, exist_ok=True)

    def save(epoch, which):
        acc = nets.accuracy(xte, yte)
        for i in which:
            meta = {
                "accuracy": f"{acc[i]:.4f}",
                "epoch": str(epoch),
                "seed": str(seeds[i]),
                "init": init_name,
                "scale": scale_of(init_name),
                "size": size,
                "arch": arch,
                "run": f"{arch}-{size}-{init_name}-s{seeds[i]}",
            }
            name = f"{arch}-{size}-{init_name}-s{seeds[i]}-e{epoch:02d}.safetensors"
            save_file(nets.tensors(i), os.path.join(folder, name), metadata=meta)
        return acc

    steps = len(ytr) // BATCH
    # The first `dynamics_runs` networks of the setting are saved every epoch.
    every_epoch = range(max(0, min(dynamics_runs - first, count)))
    with np.errstate(over="ignore", invalid="ignore"):
        for epoch in range(1, EPOCHS + 1):
            perms = np.stack([g.permutation(len(ytr)) for g in order_rng])
            for s in range(steps):
                idx = perms[:, s * BATCH : (s + 1) * BATCH]
                nets.step(nets.hidden_input(xtr[idx]), ytr[idx])
            if epoch == EPOCHS:
                acc = save(epoch, range(count))
            elif len(every_epoch):
                save(epoch, every_epoch)
    return unit, acc, time.time() - t


DATA = None


def keep_freed_memory():
    """Keep freed blocks in the heap for the next step's temporaries.

    glibc hands blocks from 128 KiB up back to the kernel when they are freed,
    so every step's activations would be mapped and zeroed afresh: half of
    cnn-big's time. Elsewhere (not glibc) this does nothing.
    """
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD: glibc's largest
        libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def worker_init():
    global DATA
    keep_freed_memory()
    DATA = data()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out")
    ap.add_argument("--per-setting", type=int, default=200, help="networks per (architecture, initialiser)")
    ap.add_argument("--dynamics-runs", type=int, default=10, help="networks per setting saved every epoch")
    ap.add_argument("--archs", default="fc,cnn")
    ap.add_argument("--sizes", default="small,medium,big")
    ap.add_argument("--inits", default=",".join(INITS))
    ap.add_argument("--jobs", type=int, default=os.cpu_count(), help="worker processes (default: one per CPU)")
    args = ap.parse_args()
    work = units(args.archs.split(","), args.sizes.split(","), args.inits.split(","), args.per_setting)
    pending = {}
    for unit in work:
        pending.setdefault(unit[:3], []).append(unit)
    done = {key: [] for key in pending}
    start = time.time()
    run = partial(train, out=args.out, dynamics_runs=args.dynamics_runs)
    with mp.get_context("fork").Pool(args.jobs, initializer=worker_init) as pool:
        # Chunks come back in order, so settings are reported as they finish.
        for unit, acc, seconds in pool.imap(run, work):
            key = unit[:3]
            done[key].append((acc, seconds))
            if len(done[key]) < len(pending[key]):
                continue
            acc = np.concatenate([a for a, _ in done[key]])
            cpu = sum(s for _, s in done[key])
            finite = acc[np.isfinite(acc)]
            print(
                f"{key[0]}-{key[1]} {key[2]}: {len(acc)} networks, {cpu:.1f} s of one core "
                f"({time.time() - start:.0f} s elapsed), test accuracy "
                f"{np.median(finite) if len(finite) else float('nan'):.3f} median "
                f"({len(acc) - len(finite)} diverged)",
                flush=True,
            )


if __name__ == "__main__":
    main()
