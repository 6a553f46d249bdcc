"""Loads a `train` checkpoint of the resnet18 from export_vision.py into torchvision's own
resnet18 with load_state_dict(strict=True), and checks it: the TorchScript module given the
same state returns the same logits (to 1e-5), and the validation loss is the one `train`
logged (so the BatchNorm running statistics came along).

Usage: python check_vision.py CHECKPOINT SCRIPTED_MODULE DATA VAL_FRACTION EXPECTED_VAL_LOSS
"""
import sys

import torch
import torchvision
from safetensors.torch import load_file

ckpt, scripted, data = sys.argv[1], sys.argv[2], sys.argv[3]
val_fraction, expected = float(sys.argv[4]), float(sys.argv[5])
state = {k: v for k, v in load_file(ckpt).items() if not k.startswith("optimizer/")}
model = torchvision.models.resnet18(num_classes=4)
model.load_state_dict(state, strict=True)
model.eval()
module = torch.jit.load(scripted)
module.load_state_dict(state, strict=True)
module.eval()
d = load_file(data)
n = d["x"].shape[0]
val = max(1, round(n * val_fraction))
x, y = d["x"][n - val:], d["y"][n - val:]
with torch.no_grad():
    logits = model(x)
    diff = (logits - module(x)).abs().max().item()
    loss = torch.nn.functional.cross_entropy(logits, y).item()
print(f"val_loss {loss:.6f} max_logit_diff {diff:.2e}")
assert diff <= 1e-5, f"torchvision and TorchScript logits differ by {diff}"
assert abs(loss - expected) <= 1e-4 * max(1.0, abs(expected)), f"val loss {loss} vs train's {expected}"
