"""Files of each kind whose first bytes a reader could mistake for another's, for
crates/train-ckpt's format-sniffing tests (tests/file_kinds.rs).

Usage: python make_file_kinds.py OUT_DIR
Writes, each holding {'w': torch.arange(16.).reshape(4, 4)}:
  OUT_DIR/p.safetensors   safetensors.torch.save_file with metadata {'pad': 'x' * 38}: a
                          header of 128 bytes, so the file starts with 0x80, a pickle's PROTO
                          (issue #21's reproduction)
  OUT_DIR/legacy.pt       torch.save(..., _use_new_zipfile_serialization=False): a pickle
                          stream, starting with PROTO 2
  OUT_DIR/zip.pt          torch.save(...): a zip archive
"""
import struct
import sys

import torch
from safetensors.torch import save_file

out = sys.argv[1]
state = {"w": torch.arange(16.0).reshape(4, 4)}
save_file(state, f"{out}/p.safetensors", metadata={"pad": "x" * 38})
with open(f"{out}/p.safetensors", "rb") as f:
    header = struct.unpack("<Q", f.read(8))[0]
assert header == 128, header
torch.save(state, f"{out}/legacy.pt", _use_new_zipfile_serialization=False)
torch.save(state, f"{out}/zip.pt")
