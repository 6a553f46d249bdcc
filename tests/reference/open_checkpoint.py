"""Opens a `train` checkpoint with Python's safetensors and torch, as a user would.

Usage: python open_checkpoint.py CHECKPOINT HIDDEN
Loads the weights into an equivalent torch.nn MLP (784 -> HIDDEN -> 10, layers fc1 and out)
with strict=True, and prints JSON: metadata, tensor names, dtypes, shapes and the SHA-256
of each tensor's bytes.
"""
import hashlib
import json
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file

path, hidden = sys.argv[1], int(sys.argv[2])
tensors = load_file(path)
with safe_open(path, framework="pt") as f:
    metadata = f.metadata()

weights = {k: v for k, v in tensors.items() if not k.startswith("optimizer/")}
model = torch.nn.Sequential()
model.add_module("fc1", torch.nn.Linear(784, hidden))
model.add_module("out", torch.nn.Linear(hidden, 10))
model.load_state_dict(weights, strict=True)
logits = model(torch.zeros(1, 784))

print(json.dumps({
    "metadata": metadata,
    "tensors": {
        k: {"dtype": str(v.dtype), "shape": list(v.shape), "sha256": hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest()}
        for k, v in tensors.items()
    },
    "logits_finite": bool(torch.isfinite(logits).all()),
}))
