"""Checkpoints as the old Python workflow writes them, for tests/ckpt_commands.rs.

Usage: python make_pytorch_checkpoints.py OUT_DIR
Writes, for an MLP 784 -> 32 -> 10 (layers fc1, out) trained two Adam steps:
  OUT_DIR/guide.pth       torch.save({'epoch', 'model_state_dict', 'optimizer_state_dict',
                          'train_loss', 'val_loss'}) as the seed guide's code saves it
  OUT_DIR/state_dict.pt   torch.save(model.state_dict())
  OUT_DIR/ddp.pth         guide.pth as a DistributedDataParallel run saves it: every model
                          name prefixed `module.`
  OUT_DIR/partial.pt      torch.save(model.state_dict()) without `out.bias`
  OUT_DIR/dtypes.safetensors  one tensor of every dtype train stores, odd shapes included
  OUT_DIR/expected.json   SHA-256 of every tensor's bytes, by name
"""
import hashlib
import json
import sys

import torch
from safetensors.torch import save_file

out = sys.argv[1]
torch.manual_seed(0)
model = torch.nn.Sequential()
model.add_module("fc1", torch.nn.Linear(784, 32))
model.add_module("out", torch.nn.Linear(32, 10))
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
for _ in range(2):
    opt.zero_grad()
    model(torch.randn(8, 784)).pow(2).mean().backward()
    opt.step()

torch.save(
    {
        "epoch": 3,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": opt.state_dict(),
        "train_loss": 0.5,
        "val_loss": 0.625,
    },
    f"{out}/guide.pth",
)
torch.save(model.state_dict(), f"{out}/state_dict.pt")
torch.save(
    {
        "epoch": 3,
        "model_state_dict": {f"module.{k}": v for k, v in model.state_dict().items()},
        "optimizer_state_dict": opt.state_dict(),
    },
    f"{out}/ddp.pth",
)
torch.save({k: v for k, v in model.state_dict().items() if k != "out.bias"}, f"{out}/partial.pt")

dtypes = {
    "f32": torch.randn(3, 5),
    "f64": torch.randn(7, dtype=torch.float64),
    "f16": torch.randn(2, 3, 4).half(),
    "bf16": torch.randn(9, 1).bfloat16(),
    "i64": torch.arange(-5, 6, dtype=torch.int64),
    "i32": torch.arange(12, dtype=torch.int32).reshape(3, 4),
    "i16": torch.arange(-3, 3, dtype=torch.int16),
    "i8": torch.arange(-8, 8, dtype=torch.int8),
    "u8": torch.arange(0, 255, 7, dtype=torch.uint8),
    "bool": torch.tensor([True, False, True]),
    "scalar": torch.tensor(3.25),
    "empty": torch.zeros(0, 4),
}
save_file(dtypes, f"{out}/dtypes.safetensors")


def sha(t):
    raw = t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
    return hashlib.sha256(raw).hexdigest()


with open(f"{out}/expected.json", "w") as f:
    json.dump(
        {
            "model": {k: sha(v) for k, v in model.state_dict().items()},
            "dtypes": {k: sha(v) for k, v in dtypes.items()},
        },
        f,
    )
