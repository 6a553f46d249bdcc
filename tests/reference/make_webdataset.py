"""Writes WebDataset tar shards with Python's tarfile, as webdataset's TarWriter lays them
out (key.png or key.jpg, then key.cls), for tests/streamed_data.rs.
Usage: python make_webdataset.py OUT_DIR

- OUT_DIR/shards/train-00000{0..2}.tar: 3 shards of 12 samples; the class is the image's
  dominant colour (learnable); PNG and JPEG alternate; a stray `key.json` rides along.
- OUT_DIR/expected.json: every sample's key and class, in shard order.
- OUT_DIR/broken/: a copy whose second shard's third header is overwritten with garbage.
"""
import io
import json
import os
import random
import shutil
import sys
import tarfile

from PIL import Image

out = sys.argv[1]
os.makedirs(os.path.join(out, "shards"), exist_ok=True)
random.seed(0)
colours = [(220, 40, 40), (40, 220, 40), (40, 40, 220)]
expected = []
for s in range(3):
    path = os.path.join(out, "shards", f"train-{s:06d}.tar")
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as tar:
        for i in range(12):
            key = f"s{s}_{i:04d}"
            cls = (s * 12 + i) % 3
            rgb = tuple(max(0, min(255, v + random.randint(-40, 40))) for v in colours[cls])
            img = Image.new("RGB", (20, 16), rgb)
            buf = io.BytesIO()
            ext = "png" if i % 2 else "jpg"
            img.save(buf, format="PNG" if ext == "png" else "JPEG")
            for name, data in ((f"{key}.{ext}", buf.getvalue()), (f"{key}.cls", str(cls).encode()),
                               (f"{key}.json", b'{"note": 1}')):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            expected.append({"key": key, "class": cls})
with open(os.path.join(out, "expected.json"), "w") as f:
    json.dump(expected, f)

broken = os.path.join(out, "broken")
shutil.copytree(os.path.join(out, "shards"), broken)
victim = os.path.join(broken, "train-000001.tar")
with tarfile.open(victim) as tar:
    third = tar.getmembers()[6].offset  # the third sample's first header
with open(victim, "r+b") as f:
    f.seek(third)
    f.write(b"\xde\xad" * 256)
