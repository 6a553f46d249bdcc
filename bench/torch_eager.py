"""The PyTorch eager reference that `train_speed.py` races `train` against.

One process trains one of `train`'s built-in models (mlp, cnn, gpt; same layer sizes as
src/model.rs) or torchvision's resnet18 (which `train` runs as a TorchScript export of the
same module, `--prepare` below) with the work `train` does per step, then prints one JSON
line on stdout:

    {"first_step_unix": <time.time() at the end of step 1>,
     "step_end": [<perf_counter() seconds at the end of step 1, 2, ...>], "batch": B, ...}

What "the same work" means here (see src/training.rs, src/data/mod.rs, src/optim/adam.rs):

- data: the whole data set loaded as `train` loads it (both IDX splits, gunzipped, as float
  images / 255; the text file as int64 windows of `context` bytes, the last
  `val_fraction` held out; or, for resnet18, the safetensors file's `x` float32 and `y`
  int64, the last `val_fraction` held out), then each batch gathered with `index_select`
  from the in-memory tensors along a seeded permutation;
- step: `zero_grad(set_to_none=False)` (train zeroes the gradients in place), forward,
  cross-entropy, backward, `loss.item()` (train reads the loss back with `double_value`
  every step too), `optimizer.step()`;
- optimizer: `torch.optim.AdamW(lr, betas, eps, weight_decay, foreach=False)`: the
  single-tensor path that `train`'s AdamW follows operation for operation. On the CPU,
  foreach=False is also what PyTorch picks by default.

- device (`--device cuda`): the model lives on the device; each batch is gathered on the
  host and copied over, as `train`'s prefetch thread does (src/data/mod.rs, `Split::batch`).

Weight initialisation follows PyTorch's defaults (`train`'s differ slightly); it does not
change the cost of a step. resnet18 starts from the very weights `train` starts from:

    python torch_eager.py --model resnet18 --prepare DIR --train-examples N --seed S

writes, once, DIR/resnet18.pt (`torch.jit.script` of torchvision's resnet18(num_classes=10),
seeded random weights, with the `state_dict_keys` extra file, as README.md's TorchScript
recipe does), DIR/resnet18_init.safetensors (the same module's `state_dict()`, which the
eager run loads with `--init`) and DIR/resnet18_data.safetensors (synthetic CIFAR-sized
images, x [M, 3, 32, 32] float32 and y [M] int64, M chosen so that N examples are left for
training after `train` holds out the last `--val-fraction`).
"""

import argparse
import gzip
import json
import math
import os
import struct
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

RESNET_CLASSES = 10


def read_idx(directory: str, stem: str) -> torch.Tensor:
    """An IDX file (`stem` or `stem.gz`) as a uint8 tensor shaped by its header (no numpy:
    the GPU machine's torch environment may not have it)."""
    plain = os.path.join(directory, stem)
    if os.path.exists(plain):
        with open(plain, "rb") as f:
            data = f.read()
    else:
        with gzip.open(plain + ".gz", "rb") as f:
            data = f.read()
    zero, dtype, ndim = struct.unpack(">HBB", data[:4])
    assert zero == 0 and dtype == 0x08, f"{stem}: only unsigned-byte IDX files are expected"
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    return torch.frombuffer(bytearray(data), dtype=torch.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_idx(directory: str):
    """Both splits, as `train` loads them; returns the training inputs and targets."""
    splits = {}
    for split in ("train", "t10k"):
        images = read_idx(directory, f"{split}-images-idx3-ubyte")
        labels = read_idx(directory, f"{split}-labels-idx1-ubyte")
        n, h, w = images.shape
        x = images.view(n, 1, h, w).to(torch.float32) / 255.0
        y = labels.to(torch.int64)
        splits[split] = (x, y)
    return splits["train"]


def load_text(path: str, context: int, val_fraction: float):
    """Non-overlapping windows of `context` bytes and their next bytes; the training part."""
    with open(path, "rb") as f:
        data = f.read()
    windows = (len(data) - 1) // context
    # Rust's f64::round (half away from zero), not Python's round (half to even).
    val = max(math.floor(windows * val_fraction + 0.5), 1)
    tokens = torch.frombuffer(bytearray(data[: windows * context + 1]), dtype=torch.uint8).to(torch.int64)
    x = tokens[: windows * context].view(windows, context)
    y = tokens[1 : windows * context + 1].view(windows, context)
    t = windows - val
    return x[:t], y[:t]


def val_count(n: int, val_fraction: float) -> int:
    """`train`'s validation count (src/data/mod.rs): Rust's f64::round, at least one."""
    return max(math.floor(n * val_fraction + 0.5), 1)


def prepare_resnet18(out: str, train_examples: int, val_fraction: float, seed: int) -> None:
    """Writes resnet18.pt, resnet18_init.safetensors and resnet18_data.safetensors (see the
    module docstring). Imports torchvision and safetensors only here and for resnet18 runs."""
    import torchvision
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=RESNET_CLASSES)
    keys = list(model.state_dict().keys())
    torch.jit.save(
        torch.jit.script(model), os.path.join(out, "resnet18.pt"), _extra_files={"state_dict_keys": "\n".join(keys)}
    )
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(out, "resnet18_init.safetensors"))
    n = train_examples
    while n - val_count(n, val_fraction) < train_examples:
        n += 1
    # Learnable on purpose (the class is a brighter band of one colour channel), like
    # tests/reference/export_vision.py; every class occurs, so `train` counts 10 classes.
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % RESNET_CLASSES
    y = y[torch.randperm(n, generator=g)]
    x = 0.5 * torch.randn(n, 3, 32, 32, generator=g)
    for c in range(RESNET_CLASSES):
        rows = (y == c).nonzero().flatten()
        x[rows, c % 3, (c // 3) * 8 : (c // 3) * 8 + 8, :] += 1.5
    save_file({"x": x.contiguous(), "y": y.to(torch.int64)}, os.path.join(out, "resnet18_data.safetensors"))


def load_tensors(path: str, val_fraction: float):
    """The safetensors file's `x` (float32) and `y` (int64), as `train`'s data.kind tensors
    loads them; the training part (all but the last `val_fraction`)."""
    from safetensors.torch import load_file

    arrays = load_file(path)
    x, y = arrays["x"].to(torch.float32), arrays["y"].to(torch.int64)
    t = x.shape[0] - val_count(x.shape[0], val_fraction)
    return x[:t], y[:t]


class Mlp(nn.Module):
    def __init__(self, inputs: int, hidden: list, outputs: int):
        super().__init__()
        widths = [inputs, *hidden]
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(widths, widths[1:]))
        self.out = nn.Linear(widths[-1], outputs)

    def forward(self, x):
        h = x.flatten(1)
        for layer in self.hidden:
            h = layer(h).relu()
        return self.out(h)


class Cnn(nn.Module):
    def __init__(self, c: int, h: int, w: int, channels: list, hidden: int, outputs: int):
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(c, c1, 3, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.fc1 = nn.Linear(c2 * (h // 4) * (w // 4), hidden)
        self.out = nn.Linear(hidden, outputs)

    def forward(self, x):
        x = F.max_pool2d(self.conv1(x).relu(), 2)
        x = F.max_pool2d(self.conv2(x).relu(), 2)
        return self.out(self.fc1(x.flatten(1)).relu())


class Block(nn.Module):
    def __init__(self, d: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(d)
        self.c_attn = nn.Linear(d, 3 * d)
        self.attn_proj = nn.Linear(d, d)
        self.ln_2 = nn.LayerNorm(d)
        self.c_fc = nn.Linear(d, 4 * d)
        self.mlp_proj = nn.Linear(4 * d, d)


class Gpt(nn.Module):
    """src/model.rs's Gpt: pre-norm blocks, causal SDPA, exact GELU, output tied to wte."""

    def __init__(self, vocab: int, context: int, width: int, depth: int, heads: int):
        super().__init__()
        self.wte = nn.Embedding(vocab, width)
        self.wpe = nn.Embedding(context, width)
        nn.init.normal_(self.wte.weight, std=0.02)
        nn.init.normal_(self.wpe.weight, std=0.02)
        self.h = nn.ModuleList(Block(width) for _ in range(depth))
        self.ln_f = nn.LayerNorm(width)
        self.heads = heads

    def forward(self, tokens):
        b, t = tokens.shape
        positions = torch.arange(t, device=tokens.device)
        x = self.wte(tokens) + self.wpe(positions)
        d = x.shape[2]
        hd = d // self.heads
        for blk in self.h:
            qkv = blk.c_attn(blk.ln_1(x))
            q, k, v = (qkv.narrow(2, i * d, d).view(b, t, self.heads, hd).transpose(1, 2) for i in range(3))
            y = F.scaled_dot_product_attention(q, k, v, dropout_p=0.0, is_causal=True)
            x = x + blk.attn_proj(y.transpose(1, 2).contiguous().view(b, t, d))
            x = x + blk.mlp_proj(F.gelu(blk.c_fc(blk.ln_2(x))))
        return self.ln_f(x).matmul(self.wte.weight.t())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", choices=["mlp", "cnn", "gpt", "resnet18"], required=True)
    p.add_argument("--steps", type=int)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--text", help="text file for gpt")
    p.add_argument("--data", help="resnet18: the safetensors data file (x, y) that --prepare wrote")
    p.add_argument("--init", help="resnet18: the initial state_dict (safetensors) that --prepare wrote")
    p.add_argument("--prepare", metavar="DIR", help="resnet18: write the model, its weights and data to DIR, then exit")
    p.add_argument("--train-examples", type=int, default=2048, help="with --prepare: training examples (default 2048)")
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--mlp-hidden", default="256,128")
    p.add_argument("--cnn-channels", default="32,64")
    p.add_argument("--cnn-hidden", type=int, default=128)
    p.add_argument("--context", type=int, default=64)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--betas", default="0.9,0.999")
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--foreach", action="store_true", help="AdamW's multi-tensor path instead")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default cpu)")
    a = p.parse_args()

    if a.prepare:
        if a.model != "resnet18":
            p.error("--prepare is for --model resnet18")
        prepare_resnet18(a.prepare, a.train_examples, a.val_fraction, a.seed)
        return
    if a.steps is None:
        p.error("--steps is required")
    if a.model == "resnet18" and not (a.data and a.init):
        p.error("--model resnet18 needs --data and --init (from --prepare)")

    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    if a.model == "gpt":
        x, y = load_text(a.text, a.context, a.val_fraction)
        model = Gpt(256, a.context, a.width, a.depth, a.heads)

        def loss_fn(out, target):
            return F.cross_entropy(out.view(-1, out.shape[-1]), target.view(-1))

    elif a.model == "resnet18":
        import torchvision
        from safetensors.torch import load_file

        x, y = load_tensors(a.data, a.val_fraction)
        model = torchvision.models.resnet18(num_classes=RESNET_CLASSES)
        # The exported module's own initial weights and BatchNorm buffers.
        model.load_state_dict(load_file(a.init), strict=True)
        loss_fn = F.cross_entropy
    else:
        x, y = load_idx(a.data_dir)
        classes = int(y.max()) + 1
        if a.model == "mlp":
            hidden = [int(v) for v in a.mlp_hidden.split(",")]
            model = Mlp(math.prod(x.shape[1:]), hidden, classes)
        else:
            channels = [int(v) for v in a.cnn_channels.split(",")]
            model = Cnn(*x.shape[1:], channels, a.cnn_hidden, classes)
        loss_fn = F.cross_entropy

    device = torch.device(a.device)
    model.to(device)
    n = x.shape[0]
    if a.steps * a.batch > n:
        sys.exit(f"{a.steps} steps of {a.batch} need {a.steps * a.batch} examples; the data has {n}")
    betas = tuple(float(v) for v in a.betas.split(","))
    opt = torch.optim.AdamW(
        model.parameters(), lr=a.lr, betas=betas, eps=a.eps, weight_decay=a.weight_decay, foreach=a.foreach
    )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(a.seed))
    model.train()

    step_end = []
    first_step_unix = None
    for s in range(a.steps):
        idx = order[s * a.batch : (s + 1) * a.batch]
        xs, ys = x.index_select(0, idx).to(device), y.index_select(0, idx).to(device)
        opt.zero_grad(set_to_none=False)
        loss = loss_fn(model(xs), ys)
        loss.backward()
        loss.item()
        opt.step()
        step_end.append(time.perf_counter())
        if first_step_unix is None:
            first_step_unix = time.time()
    result = {
        "first_step_unix": first_step_unix,
        "step_end": step_end,
        "batch": a.batch,
        "threads": torch.get_num_threads(),
        "foreach": a.foreach,
        "device": str(device),
        "torch": torch.__version__,
        "last_loss": loss.item(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
