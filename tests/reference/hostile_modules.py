"""Exports TorchScript modules that pass a two-example eval-mode try and then broke training
(the second hardening report, item 3), a damaged archive, and a torch.save state dict, for
tests/hostile_models.rs.

Usage: python hostile_modules.py OUT_DIR
Writes OUT_DIR/<case>.pt for each case below, OUT_DIR/cut_storage.pt (good.pt with its first
storage record cut to 4 bytes), OUT_DIR/state_dict.pt (torch.save of good's state dict),
OUT_DIR/bn.pt (Linear + BatchNorm1d, scripted) and OUT_DIR/data.safetensors (x: [64, 8]
float32, y: [64] int64 in 3 classes, lengths: [64] int64).
"""
import sys
import zipfile

import torch
from safetensors.torch import save_file

out = sys.argv[1]
torch.manual_seed(0)


class Good(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(x)


class RaisesInTraining(Good):
    def forward(self, x):
        if self.training:
            raise RuntimeError("only in training")
        return self.fc(x)


class NarrowerInTraining(Good):
    def forward(self, x):
        y = self.fc(x)
        if self.training:
            return y[:, :2]
        return y


class DropsARow(Good):
    def forward(self, x):
        y = self.fc(x)
        if x.size(0) > 2:
            return y[1:]
        return y


class ThreeD(Good):
    def forward(self, x):
        return self.fc(x).unsqueeze(-1).expand(-1, 3, 7)


class Integer(Good):
    def forward(self, x):
        return (self.fc(x) * 100).long()


class Boolean(Good):
    def forward(self, x):
        return self.fc(x) > 0


class NoParameters(torch.nn.Module):
    def forward(self, x):
        return x[:, :3] * 2.0


class Detached(Good):
    def forward(self, x):
        return self.fc(x).detach()


class ResizesAParameter(Good):
    def forward(self, x):
        if self.training:
            with torch.no_grad():
                self.fc.weight.set_(torch.zeros(3, 8))
        return self.fc(x)


class ReassignsAParameter(Good):
    def forward(self, x):
        if self.training:
            self.fc.weight = torch.zeros(3, 8)
        return self.fc(x)


class FailsAtTheThirdStep(Good):
    """Counts its train-mode calls in a buffer (which the start-up try puts back), and
    raises at the third: a failure only training meets."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros((), dtype=torch.int64))

    def forward(self, x):
        if self.training:
            self.calls += 1
            if int(self.calls) >= 3:
                raise ValueError("the third call fails")
        return self.fc(x)


class SlowForward(Good):
    """Spends minutes inside libtorch on every call: start-up is stuck in the try, where
    no flag is looked at."""

    def forward(self, x):
        a = torch.ones(256, 256)
        for _ in range(200000):
            a = torch.tanh(a @ a * 0.001)
        return self.fc(x) + a.sum() * 0.0


class TakesLengths(Good):
    """A per-example 1-D input beside the features, as packed sequences take `lengths`."""

    def forward(self, x, lengths):
        return self.fc(x) * (lengths.float().unsqueeze(1) / 10.0)


class WantsThreeChannels(torch.nn.Module):
    """A conv net for RGB images, given one-channel arrays."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 1)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.conv(x.view(x.size(0), 1, 2, 4)).mean((2, 3)))


class Embeds(torch.nn.Module):
    """Token ids through an embedding: it needs int64 ids."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(16, 4)
        self.head = torch.nn.Linear(4, 3)

    def forward(self, x):
        return self.head(self.emb(x).mean(1))


class WithNorm(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 16)
        self.bn = torch.nn.BatchNorm1d(16)
        self.drop = torch.nn.Dropout(0.5)
        self.head = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.bn(self.fc(x)))))


cases = {
    "good": Good,
    "raises_in_training": RaisesInTraining,
    "narrower_in_training": NarrowerInTraining,
    "drops_a_row": DropsARow,
    "three_d": ThreeD,
    "integer": Integer,
    "boolean": Boolean,
    "no_parameters": NoParameters,
    "detached": Detached,
    "resizes_a_parameter": ResizesAParameter,
    "reassigns_a_parameter": ReassignsAParameter,
    "fails_at_the_third_step": FailsAtTheThirdStep,
    "slow_forward": SlowForward,
    "takes_lengths": TakesLengths,
    "wants_three_channels": WantsThreeChannels,
    "embeds": Embeds,
    "bn": WithNorm,
}
for name, cls in cases.items():
    torch.jit.script(cls()).save(f"{out}/{name}.pt")

torch.save(Good().state_dict(), f"{out}/state_dict.pt")

# good.pt with its first storage record (the weight: 24 floats, 96 bytes) cut to 4 bytes.
with zipfile.ZipFile(f"{out}/good.pt") as src, zipfile.ZipFile(f"{out}/cut_storage.pt", "w") as dst:
    cut = [n for n in src.namelist() if n.endswith("/data/0")][0]
    for info in src.infolist():
        data = src.read(info.filename)
        dst.writestr(info, data[:4] if info.filename == cut else data)

directions = torch.randn(3, 8)
y = torch.randint(0, 3, (64,))
x = directions[y] * 2.0 + 0.3 * torch.randn(64, 8)
lengths = torch.randint(5, 15, (64,))
save_file({"x": x.contiguous(), "y": y, "lengths": lengths}, f"{out}/data.safetensors")
