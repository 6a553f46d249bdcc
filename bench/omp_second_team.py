"""Why `train` trails PyTorch on the mlp row: a second OpenMP team, reproduced in PyTorch.

`train`'s batch-prefetch thread gathers each batch with `index_select`. For a float image
batch of 128 x 784 values that op is above ATen's grain size (32768 elements), so it runs an
OpenMP parallel region, and the prefetch thread gets an OpenMP team of its own (a second
thread named `batch-prefetch` appears). libgomp then manages more threads than the machine
has CPUs and switches every wait to "throttled" spinning (a few hundred spins, then sleep on
a futex), so each parallel region of the training step pays for waking its worker. The
gpt row (int64 windows, 128 x 64 < 32768) and batch 32 keep a single team.

This script does the same thing to a plain PyTorch loop: the mlp step, then the mlp step
while a thread that once ran one parallel `index_select` stays alive (it does nothing else),
then after that thread exits. Run it on an idle machine:

    ~/.cache/train/torch-2.11.0/bin/python bench/omp_second_team.py --threads 2
"""

import argparse
import sys
import threading
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_eager import Mlp, load_idx  # noqa: E402


def ms_per_step(x, y, batch: int, steps: int, warmup: int = 20) -> float:
    torch.manual_seed(0)
    model = Mlp(784, [256, 128], 10)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01, foreach=False)
    order = torch.randperm(x.shape[0])
    for s in range(steps):
        if s == warmup:
            start = time.perf_counter()
        idx = order[s * batch : (s + 1) * batch]
        xs, ys = x.index_select(0, idx), y.index_select(0, idx)
        opt.zero_grad(set_to_none=False)
        loss = F.cross_entropy(model(xs), ys)
        loss.backward()
        loss.item()
        opt.step()
    return (time.perf_counter() - start) / (steps - warmup) * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    x, y = load_idx(a.data_dir)

    print(f"one OpenMP team:                {ms_per_step(x, y, a.batch, a.steps):.2f} ms/step")
    release = threading.Event()

    def second_team():
        x.index_select(0, torch.arange(a.batch))  # the prefetch thread's gather, once
        release.wait()

    t = threading.Thread(target=second_team, daemon=True)
    t.start()
    time.sleep(0.2)
    print(f"+ an idle second team:          {ms_per_step(x, y, a.batch, a.steps):.2f} ms/step")
    release.set()
    t.join()
    print(f"after its thread exited:        {ms_per_step(x, y, a.batch, a.steps):.2f} ms/step")


if __name__ == "__main__":
    main()
