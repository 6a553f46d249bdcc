"""Exports torchvision's resnet18 (random weights, 4 classes) with torch.jit.script, and
writes a small image data set it can learn, for tests/user_models.rs.

Usage: python export_vision.py OUT_DIR
Writes OUT_DIR/resnet18.pt (scripted, carrying the Python module's state_dict keys as the
extra file `state_dict_keys`, the README's export recipe), OUT_DIR/resnet18_init.pth
(`{'model_state_dict': ...}`, a torchvision-style checkpoint to fine-tune from) and
OUT_DIR/images.safetensors (x: [N, 3, 32, 32] float32, y: [N] int64; the class is the
colour channel and quadrant that are brighter).
"""
import sys

import torch
import torchvision
from safetensors.torch import save_file

out = sys.argv[1]
torch.manual_seed(0)
model = torchvision.models.resnet18(num_classes=4)
torch.jit.save(
    torch.jit.script(model),
    f"{out}/resnet18.pt",
    _extra_files={"state_dict_keys": "\n".join(model.state_dict().keys())},
)
torch.manual_seed(1)
other = torchvision.models.resnet18(num_classes=4)
torch.save({"epoch": 3, "model_state_dict": other.state_dict()}, f"{out}/resnet18_init.pth")

n = 160
y = torch.randint(0, 4, (n,))
x = 0.5 * torch.randn(n, 3, 32, 32)
for i in range(n):
    c = int(y[i])
    x[i, c % 3, (c // 3) * 16:(c // 3) * 16 + 16, :] += 1.5
save_file({"x": x.contiguous(), "y": y}, f"{out}/images.safetensors")
