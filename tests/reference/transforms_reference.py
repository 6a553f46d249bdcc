"""Reference outputs for tests/transforms_reference.rs: torchvision.transforms.v2 on the
images and cases the Rust test wrote.

Usage: python transforms_reference.py DIR
Reads DIR/inputs.safetensors (each image as uint8 [C, H, W]) and DIR/cases.json; writes DIR/reference.safetensors: each case's float32 [C, H, W] output.

Case kinds:
- pipeline: the list of transforms as the config spells it, each built as
  `getattr(v2, name)(**params)` (our names and parameters are torchvision's). As in `train`,
  images stay uint8 until the first ColorJitter or Normalize, then become x / 255 in float32.
  torchvision's ToDtype(scale=True) multiplies by 1/255 instead, which differs by at most
  one float32 ulp; dividing here keeps the exact operations (crop, flip, normalize)
  comparable bit for bit.
- resized_crop: v2.functional.resized_crop with the given box (RandomResizedCrop's
  transform once its parameters are drawn), bilinear with antialias, on uint8.
- jitter: ColorJitter's transform with its draws made: the adjust_* kernels in `order`
  with `factors`, on the image as x / 255 in float32 (the same numbers as ours: both
  divisions are correctly rounded).
"""
import json
import sys

import torch
from safetensors.torch import load_file, save_file
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

out = sys.argv[1]
inputs = load_file(f"{out}/inputs.safetensors")
with open(f"{out}/cases.json") as f:
    cases = json.load(f)


def to_float(x):
    return x.to(torch.float32) / 255


reference = {}
for name, case in cases.items():
    if case["kind"] == "pipeline":
        x = tv_tensors.Image(inputs[case["image"]])
        floated = False
        for step in case["steps"]:
            ((cls, params),) = step.items()
            if cls in ("ColorJitter", "Normalize") and not floated:
                x, floated = tv_tensors.Image(to_float(x)), True
            x = getattr(v2, cls)(**params)(x)
        y = x if floated else to_float(x)
    elif case["kind"] == "resized_crop":
        top, left, height, width = case["box"]
        x = F.resized_crop(inputs[case["image"]], top, left, height, width, case["size"], antialias=True)
        y = to_float(x)
    elif case["kind"] == "jitter":
        y = to_float(inputs[case["image"]])
        kernels = [F.adjust_brightness, F.adjust_contrast, F.adjust_saturation]
        for which in case["order"]:
            if case["factors"][which] is not None:
                y = kernels[which](y, case["factors"][which])
    else:
        raise ValueError(f"unknown case kind {case['kind']}")
    reference[name] = torch.as_tensor(y).to(torch.float32).contiguous()

save_file(reference, f"{out}/reference.safetensors")
