"""Reference numbers for tests/optim_reference.rs: torch.optim on fixed inputs.

Usage: python optim_reference.py OUT_DIR
Writes OUT_DIR/reference.safetensors (initial parameters, the gradient of every step, and
each case's parameters and optimizer state after the last step) and OUT_DIR/cases.json
(each case's optimizer class and keyword arguments). Single-tensor code paths
(foreach=False), float32, CPU.
"""
import json
import sys

import torch
from safetensors.torch import save_file

out = sys.argv[1]
torch.manual_seed(0)
shapes = {"a.weight": (5, 3), "a.bias": (5,), "b.weight": (2, 5)}
init = {n: torch.randn(s, dtype=torch.float32) for n, s in shapes.items()}
STEPS = 6
grads = [{n: torch.randn(s, dtype=torch.float32) for n, s in shapes.items()} for _ in range(STEPS)]

cases = {
    "sgd_plain": ("sgd", dict(lr=0.1, momentum=0.0)),
    "sgd_momentum_dampening_wd": ("sgd", dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    "sgd_nesterov": ("sgd", dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.001)),
    "adam": ("adam", dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-8)),
    "adam_l2": ("adam", dict(lr=1e-2, betas=(0.8, 0.999), eps=1e-6, weight_decay=0.1)),
    "adamw": ("adamw", dict(lr=1e-2, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.1)),
}
classes = {"sgd": torch.optim.SGD, "adam": torch.optim.Adam, "adamw": torch.optim.AdamW}

tensors = {f"init/{n}": t for n, t in init.items()}
for k, g in enumerate(grads):
    for n, t in g.items():
        tensors[f"grad/{k}/{n}"] = t
for case, (kind, kw) in cases.items():
    params = {n: torch.nn.Parameter(t.clone()) for n, t in init.items()}
    opt = classes[kind](list(params.values()), foreach=False, **kw)
    for g in grads:
        for n, p in params.items():
            p.grad = g[n].clone()
        opt.step()
    for n, p in params.items():
        tensors[f"{case}/param/{n}"] = p.detach().clone()
        for slot, v in opt.state[p].items():
            tensors[f"{case}/state/{n}/{slot}"] = v.detach().clone() if torch.is_tensor(v) else torch.tensor(v)

save_file(tensors, f"{out}/reference.safetensors")
with open(f"{out}/cases.json", "w") as f:
    json.dump({case: {"kind": kind, **kw} for case, (kind, kw) in cases.items()}, f)
