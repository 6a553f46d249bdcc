"""torch.save files holding optimizer state, as PyTorch training scripts write them, for
crates/train-ckpt's optimizer-import tests (tests/pytorch_optimizer.rs).

Usage: python make_pytorch_optimizers.py OUT_DIR
The model: nn.Sequential(Conv2d(3, 4, 3), BatchNorm2d(4), ReLU, Flatten, Linear(64, 5),
Linear(5, 3)); in the Adam and AdamW files the last Linear is frozen (requires_grad False),
so its parameters sit in param_groups with no state, as fine-tuning scripts leave them.
Writes:
  OUT_DIR/adamw.pth    the seed guide's dict: {'epoch': 4, 'model_state_dict',
                       'optimizer_state_dict', 'loss': torch.tensor(0.25), 'val_loss':
                       torch.tensor(0.125, dtype=torch.float16)} after 3 AdamW
                       steps over two param groups (weights with weight decay, biases and
                       BatchNorm without), the last Linear frozen
  OUT_DIR/adam.pth     the same with Adam (one param group), 'loss' as a Python float, and
                       the steps rewritten as an int (parameter 0) and a float (parameter 1),
                       as torch before 1.12 and some hand-edited files have them
  OUT_DIR/sgd.pt       torch.save(opt.state_dict()) alone, SGD with momentum 0.9, nesterov
  OUT_DIR/broken.pth   a model and an optimizer state dict whose param group lacks `params`
  OUT_DIR/expected.json  per file: the param_groups (params and hyper-parameters), the
                       parameters' names and shapes in the optimizer's numbering ("names",
                       "shapes") and in model.named_parameters() order ("named_parameters"),
                       and for each state entry its shape, dtype, bytes (hex) and the step
"""
import json
import sys

import torch

out = sys.argv[1]


def make_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(64, 5),
        torch.nn.Linear(5, 3),
    )


def train(model, opt, steps):
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(6, 3, 6, 6)).pow(2).mean().backward()
        opt.step()


def raw(t):
    return (t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"").hex()


def describe(model, opt, sd):
    groups = []
    for g in sd["param_groups"]:
        groups.append({k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()})
    state = {}
    for index, entries in sd["state"].items():
        st = {"tensors": {}, "step": None}
        for name, value in entries.items():
            if name == "step":
                st["step"] = float(value)
                if torch.is_tensor(value):
                    st["tensors"]["step"] = {"shape": list(value.shape), "dtype": str(value.dtype), "hex": raw(value)}
            elif torch.is_tensor(value):
                st["tensors"][name] = {"shape": list(value.shape), "dtype": str(value.dtype), "hex": raw(value)}
        state[str(index)] = st
    # PyTorch numbers parameters over the groups in order (named_parameters() order when
    # there is one group of model.parameters()).
    flat = [p for g in opt.param_groups for p in g["params"]]
    names = {id(p): n for n, p in model.named_parameters()}
    return {
        "param_groups": groups,
        "names": [names[id(p)] for p in flat],
        "shapes": [list(p.shape) for p in flat],
        "named_parameters": [[n, list(p.shape)] for n, p in model.named_parameters()],
        "state": state,
    }


expected = {}

# AdamW, two groups: decayed weights, then biases and BatchNorm; the last Linear frozen.
model = make_model()
model[5].requires_grad_(False)
decay = [p for n, p in model.named_parameters() if n.endswith("weight") and p.dim() > 1]
no_decay = [p for n, p in model.named_parameters() if not (n.endswith("weight") and p.dim() > 1)]
opt = torch.optim.AdamW(
    [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
    lr=3e-3,
    betas=(0.8, 0.95),
    eps=1e-7,
)
train(model, opt, 3)
sd = opt.state_dict()
torch.save(
    {
        "epoch": 4,
        "model_state_dict": model.state_dict(),
        "optimizer_state_dict": sd,
        "loss": torch.tensor(0.25),
        "val_loss": torch.tensor(0.125, dtype=torch.float16),
    },
    f"{out}/adamw.pth",
)
expected["adamw.pth"] = describe(model, opt, sd)

# Adam, one group; steps stored as an int and as a float.
model = make_model()
model[5].requires_grad_(False)
opt = torch.optim.Adam(model.parameters(), lr=1e-3)
train(model, opt, 2)
sd = opt.state_dict()
sd["state"][0]["step"] = 2
sd["state"][1]["step"] = 2.0
torch.save({"epoch": 2, "model_state_dict": model.state_dict(), "optimizer_state_dict": sd, "loss": 0.5}, f"{out}/adam.pth")
expected["adam.pth"] = describe(model, opt, sd)

# SGD with Nesterov momentum, the optimizer state dict alone.
model = make_model()
opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4)
train(model, opt, 2)
sd = opt.state_dict()
torch.save(sd, f"{out}/sgd.pt")
expected["sgd.pt"] = describe(model, opt, sd)

# A state dict no torch writes: a param group without `params`.
broken = {"state": {0: {"momentum_buffer": torch.zeros(3)}}, "param_groups": [{"lr": 0.1}]}
torch.save({"model_state_dict": model.state_dict(), "optimizer_state_dict": broken}, f"{out}/broken.pth")

with open(f"{out}/expected.json", "w") as f:
    json.dump(expected, f, indent=1)
