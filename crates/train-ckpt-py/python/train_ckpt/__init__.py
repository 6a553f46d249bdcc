"""Load and save `train`'s checkpoints as PyTorch tensors and modules, without linking libtorch.

Reads every checkpoint kind `train` reads, through the same Rust reader: ``.tckpt`` (every
format version), ``train``'s own and foreign ``.safetensors`` files, and ``torch.save``
files (``.pt``/``.pth``/``.bin``, read by a pickle reader that executes no code). Writes
``train``'s format (compressed ``.tckpt`` or plain safetensors with per-tensor checksums),
atomically, so that ``train-ckpt verify`` and ``train ckpt verify`` accept it.

Two layers:

- **Modules** (the seed guide's method 2): :func:`load_checkpoint_memory_efficient`,
  :func:`load_model_only`, :func:`smart_load_checkpoint` (the strategy ``train plan`` would
  choose, from the device's free memory) and :func:`save_checkpoint` (what ``train --resume``
  continues from). Tensors are decoded straight into the model's and optimizer's own memory;
  optimizer state is matched to parameters by name.
- **Tensors**, shaped like ``safetensors.torch``: :func:`load_file`, :func:`save_file`,
  :func:`safe_open`, :func:`verify`.

``torch`` is the one you have, imported on the first call, not on ``import train_ckpt``.

Errors: ``FileNotFoundError`` for a missing file, ``ValueError`` for a damaged or malformed
file (the message names the file and, for a checksum failure, the tensor) and for a load
that cannot fit (a size mismatch, another optimizer kind), ``KeyError`` for a name the file
does not hold (:class:`StateDictKeyError` for names that differ under ``strict=True``).
"""

from ._files import load_file, safe_open, save_file, verify
from ._modules import (
    STAGING_BYTES,
    Loaded,
    StateDictKeyError,
    load_checkpoint_memory_efficient,
    load_model_only,
    save_checkpoint,
    smart_load_checkpoint,
)

__all__ = [
    "load_checkpoint_memory_efficient",
    "load_model_only",
    "smart_load_checkpoint",
    "save_checkpoint",
    "load_file",
    "save_file",
    "safe_open",
    "verify",
    "Loaded",
    "StateDictKeyError",
    "STAGING_BYTES",
]
__version__ = "0.1.0"
