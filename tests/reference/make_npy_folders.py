"""Writes `.npy` folders with numpy itself, for tests/streamed_data.rs (issue 19: peer data
files). Usage: python make_npy_folders.py OUT_DIR

- OUT_DIR/same/{x,y}.npy and OUT_DIR/same.safetensors: one data set twice, as a folder of
  arrays (streamed) and as a safetensors file (held in memory): x [N, 12] float32, y [N]
  int64 classes (a learnable rule).
- OUT_DIR/dtypes/<dtype>/{x,y}.npy: x in every numeric dtype np.save writes, little- and
  big-endian, y's classes in the matching integer dtype; OUT_DIR/dtypes/expected.json: what
  numpy reads back (x as float32 values, y as ints) for each.
- OUT_DIR/mm/{x,y}.npy: written through np.lib.format.open_memmap, as numpy.memmap users do.
- OUT_DIR/fortran, OUT_DIR/short, OUT_DIR/structured: what must be refused.
"""
import json
import os
import sys

import numpy as np
from safetensors.numpy import save_file

out = sys.argv[1]
rng = np.random.default_rng(0)


def folder(name, arrays):
    d = os.path.join(out, name)
    os.makedirs(d, exist_ok=True)
    for k, v in arrays.items():
        np.save(os.path.join(d, f"{k}.npy"), v)
    return d


n = 96
x = rng.standard_normal((n, 12)).astype(np.float32)
y = (x[:, 0] + x[:, 1] > 0).astype(np.int64) + 2 * (x[:, 2] > 0)
folder("same", {"x": x, "y": y})
save_file({"x": x, "y": y}, os.path.join(out, "same.safetensors"))

expected = {}
small = rng.integers(0, 100, (8, 3))
for dt in ["bool", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8"]:
    for endian in ["<", ">"]:
        if dt == "bool" or dt.endswith("1"):
            if endian == ">":
                continue
            code = dt if dt == "bool" else "|" + dt
        else:
            code = endian + dt
        xa = (small % 2 if dt == "bool" else small).astype(np.dtype(code))
        ya = np.arange(8).astype(np.dtype(code if dt != "bool" and not dt.startswith("f") else "<i8")) % 4
        name = f"{dt}{'_be' if endian == '>' else ''}"
        folder(f"dtypes/{name}", {"x": xa, "y": ya})
        expected[name] = {"x": xa.astype(np.float32).tolist(), "y": ya.astype(np.int64).tolist()}
with open(os.path.join(out, "dtypes", "expected.json"), "w") as f:
    json.dump(expected, f)

d = os.path.join(out, "mm")
os.makedirs(d, exist_ok=True)
mx = np.lib.format.open_memmap(os.path.join(d, "x.npy"), mode="w+", dtype=np.float32, shape=(20, 4))
mx[:] = np.arange(80, dtype=np.float32).reshape(20, 4)
mx.flush()
my = np.lib.format.open_memmap(os.path.join(d, "y.npy"), mode="w+", dtype=np.int32, shape=(20,))
my[:] = np.arange(20) % 3
my.flush()
del mx, my

folder("fortran", {"x": np.asfortranarray(x), "y": y})
short = folder("short", {"x": x, "y": y})
with open(os.path.join(short, "x.npy"), "r+b") as f:
    f.truncate(os.path.getsize(os.path.join(short, "x.npy")) - 10)
folder("structured", {"x": np.zeros(n, dtype=[("a", "<f4"), ("b", "<i4")]), "y": y})
