"""Exports a small PyTorch model with torch.jit.script, and writes a safetensors data set it
can learn, for tests/training_engine.rs (the README's TorchScript example, made real).

Usage: python export_torchscript.py OUT_DIR
Writes OUT_DIR/model.pt (an MLP 8 -> 16 -> 3) and OUT_DIR/data.safetensors (x: [240, 8]
float32, y: [240] int64, the class being which of three fixed directions x points along).
"""
import sys

import torch
from safetensors.torch import save_file

out = sys.argv[1]
torch.manual_seed(0)


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 16)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.head(torch.relu(self.fc(x)))


torch.jit.script(Net()).save(f"{out}/model.pt")

directions = torch.randn(3, 8)
y = torch.randint(0, 3, (240,))
x = directions[y] * 2.0 + 0.3 * torch.randn(240, 8)
save_file({"x": x.contiguous(), "y": y}, f"{out}/data.safetensors")
