"""Exports a small PyTorch model with torch.jit.script, and writes a safetensors data set it
can learn, for tests/training_engine.rs (the README's TorchScript example, made real).

Usage: python export_torchscript.py OUT_DIR
Writes OUT_DIR/model.pt (an MLP 8 -> 16 -> 3), OUT_DIR/traced_eval.pt (the same with
BatchNorm and dropout, traced with torch.jit.trace in eval mode, as a user following a trace
recipe would: its mode is frozen) and OUT_DIR/data.safetensors (x: [240, 8] float32, y: [240]
int64, the class being which of three fixed directions x points along).
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


class NormNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 16)
        self.bn = torch.nn.BatchNorm1d(16)
        self.drop = torch.nn.Dropout(0.1)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.bn(self.fc(x)))))


torch.jit.trace(NormNet().eval(), torch.randn(4, 8)).save(f"{out}/traced_eval.pt")

directions = torch.randn(3, 8)
y = torch.randint(0, 3, (240,))
x = directions[y] * 2.0 + 0.3 * torch.randn(240, 8)
save_file({"x": x.contiguous(), "y": y}, f"{out}/data.safetensors")
