"""The package against `train` itself: what one writes, the other loads and continues, to the
same numbers. `train` runs as users run it (the binary, a TorchScript export of a PyTorch
module, a safetensors data file); the Python side uses torchvision's and PyTorch's own
classes."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch
import torchvision
from conftest import REPO_ROOT, assert_same_tensors, run_train, same_bits
from safetensors.torch import save_file as st_save

import train_ckpt


class MLP(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 16)
        self.fc2 = torch.nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


#: 40 examples: `train` holds out the last tenth (4) for validation and trains on the first 36.
EXAMPLES, TRAIN_EXAMPLES = 40, 36


def mlp_setup(d):
    """Writes mlp.pt (a TorchScript export, as the README's recipe makes one) and data.safetensors
    into ``d``; returns the Python module and the training split."""
    torch.manual_seed(0)
    model = MLP()
    torch.jit.save(
        torch.jit.script(model), d / "mlp.pt", _extra_files={"state_dict_keys": "\n".join(model.state_dict().keys())}
    )
    g = torch.Generator().manual_seed(1)
    x = torch.randn(EXAMPLES, 8, generator=g)
    y = torch.randint(0, 3, (EXAMPLES,), generator=g)
    st_save({"x": x, "y": y}, str(d / "data.safetensors"))
    return model, x[:TRAIN_EXAMPLES], y[:TRAIN_EXAMPLES]


def mlp_settings(*extra):
    sets = [
        "run.device=cpu",
        "model.kind=torchscript",
        "model.torchscript.path=mlp.pt",
        "data.kind=tensors",
        "data.path=data.safetensors",
        "memory.compress_checkpoints=true",
        *extra,
    ]
    return [arg for s in sets for arg in ("--set", s)]


def weights(path):
    return {k: v for k, v in train_ckpt.load_file(path).items() if not k.startswith("optimizer/")}


def test_python_adamw_takes_the_same_next_step_as_train(tmp_path, train_bin):
    d = tmp_path
    _, x, y = mlp_setup(d)
    # One full batch per epoch, so both sides step on the same examples whatever the order.
    settings = mlp_settings(f"training.batch_size={TRAIN_EXAMPLES}", "training.optimizer.kind=adamw")
    run_train(train_bin, d, "--output-dir", "run", *settings, "--set", "training.epochs=3")
    shutil.copy(d / "run/checkpoints/latest.tckpt", d / "after3.tckpt")
    _, log = run_train(train_bin, d, "--output-dir", "run", *settings, "--set", "training.epochs=4")
    assert "resumed" in log, log

    module = torch.jit.load(str(d / "mlp.pt"))
    opt = torch.optim.AdamW(module.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    got = train_ckpt.load_checkpoint_memory_efficient(module, opt, d / "after3.tckpt")
    assert got[0] == 3 and got.step == 3 and got.optimizer_restored
    assert all(float(s["step"]) == 3 for s in opt.state_dict()["state"].values())
    opt.zero_grad()
    torch.nn.functional.cross_entropy(module(x), y).backward()
    opt.step()

    expected = weights(d / "run/checkpoints/latest.tckpt")
    worst = 0.0
    for name, p in module.named_parameters():
        ref = expected[name]
        worst = max(worst, ((p.detach() - ref).abs() / ref.abs().clamp_min(1e-12)).max().item())
    print(f"AdamW next step, Python against train: max relative difference {worst:.2e}")
    assert worst <= 1e-6


def test_a_pytorch_script_saves_and_train_resumes_with_adam_step_counts_intact(tmp_path, train_bin):
    d = tmp_path
    model, x, y = mlp_setup(d)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for i in range(3):  # one epoch of batches of 12
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(model(x[i * 12:(i + 1) * 12]), y[i * 12:(i + 1) * 12])
        loss.backward()
        opt.step()
    train_ckpt.save_checkpoint(d / "python.tckpt", model, opt, epoch=1, train_loss=loss.item(), compress=True)
    verified = subprocess.run([str(train_bin), "ckpt", "verify", "python.tckpt"], cwd=d, capture_output=True, text=True)
    assert verified.returncode == 0, verified.stderr

    settings = mlp_settings("training.batch_size=12", "training.optimizer.kind=adam", "training.epochs=2")
    _, log = run_train(train_bin, d, "--output-dir", "run", *settings, "--resume", "python.tckpt")
    assert "optimizer starts fresh" not in log, log
    assert "step=3" in log and "resumed" in log, log
    latest = train_ckpt.load_file(d / "run/checkpoints/latest.tckpt")
    steps = {k: int(v) for k, v in latest.items() if k.endswith("/step")}
    assert steps and set(steps.values()) == {6}, f"3 steps in Python, then 3 in train: {steps}"
    meta = train_ckpt.safe_open(d / "run/checkpoints/latest.tckpt").metadata()
    assert (meta["epoch"], meta["step"]) == ("2", "6")


@pytest.fixture(scope="module")
def resnet_run(tmp_path_factory, train_bin):
    """torchvision's resnet18 exported and trained by `train` for an epoch, compressed; returns
    the folder, the checkpoint and `train eval`'s figures for it."""
    d = tmp_path_factory.mktemp("resnet")
    script = REPO_ROOT / "tests/reference/export_vision.py"
    subprocess.run([sys.executable, str(script), str(d)], check=True)
    sets = [
        "run.device=cpu",
        "model.kind=torchscript",
        "model.torchscript.path=resnet18.pt",
        "data.kind=tensors",
        "data.path=images.safetensors",
        "training.batch_size=16",
        "training.epochs=1",
        "memory.compress_checkpoints=true",
    ]
    args = [arg for s in sets for arg in ("--set", s)]
    run_train(train_bin, d, "--output-dir", "run", *args)
    ckpt = d / "run/checkpoints/latest.tckpt"
    out, _ = run_train(train_bin, d, "eval", "--checkpoint", ckpt, "--json", *args)
    figures = json.loads(out)
    return d, ckpt, figures


def test_a_train_checkpoint_loads_strictly_into_torchvision_with_trains_logits_and_accuracy(resnet_run):
    d, ckpt, figures = resnet_run
    model = torchvision.models.resnet18(num_classes=4)
    epoch, _ = train_ckpt.load_model_only(model, ckpt, strict=True)
    assert epoch == 1
    scripted = torch.jit.load(str(d / "resnet18.pt"))
    train_ckpt.load_model_only(scripted, ckpt, strict=True)
    data = train_ckpt.load_file(d / "images.safetensors")
    n = data["x"].shape[0]
    val = round(n * 0.1)
    x, y = data["x"][n - val:], data["y"][n - val:]
    model.eval(), scripted.eval()
    with torch.no_grad():
        logits = model(x)
        assert (logits - scripted(x)).abs().max().item() <= 1e-5, "torchvision's module and train's agree"
        loss = torch.nn.functional.cross_entropy(logits, y).item()
    accuracy = (logits.argmax(1) == y).float().mean().item()
    assert figures["examples"] == val
    assert accuracy == pytest.approx(figures["accuracy"], abs=1e-9)
    assert loss == pytest.approx(figures["loss"], rel=1e-5)
    for name, t in model.state_dict().items():
        assert same_bits(t, scripted.state_dict()[name]), name


def test_a_sharded_checkpoint_loads_as_one_file_does(tmp_path, train_bin):
    """A 2-rank job with sharded state (ZeRO-2) writes an index and a shard per rank; the
    package loads the index as it loads one file: the same weights and optimizer state as the
    file `train ckpt convert` consolidates it into."""
    import pathlib
    import socket

    torchrun = pathlib.Path(sys.executable).parent / "torchrun"
    if not torchrun.exists():
        pytest.skip(f"no torchrun beside {sys.executable}")
    d = tmp_path
    mlp_setup(d)
    settings = mlp_settings(
        "training.batch_size=6",
        "training.optimizer.kind=adamw",
        "training.epochs=2",
        "distributed.shard=optimizer_and_gradients",
        "run.threads=1",
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TRAIN_", "SLURM_", "TORCHELASTIC_"))}
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    job = [str(torchrun), "--nproc-per-node", "2", "--master-addr", "127.0.0.1", "--master-port", str(port)]
    done = subprocess.run([*job, "--no-python", str(train_bin), "--output-dir", "run", *settings],
                          cwd=d, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    index = d / "run/checkpoints/latest.index.json"
    shards = sorted(p.name for p in (d / "run/checkpoints").glob("latest.step-*"))
    assert len(shards) == 2, shards
    converted = subprocess.run([str(train_bin), "ckpt", "convert", str(index), str(d / "whole.tckpt")],
                               capture_output=True, text=True)
    assert converted.returncode == 0, converted.stderr

    assert_same_tensors(train_ckpt.load_file(index), train_ckpt.load_file(d / "whole.tckpt"))
    loaded = []
    for path in (index, d / "whole.tckpt"):
        module = torch.jit.load(str(d / "mlp.pt"))
        opt = torch.optim.AdamW(module.parameters(), lr=1e-3, weight_decay=0.01)
        got = train_ckpt.load_checkpoint_memory_efficient(module, opt, path)
        assert got[0] == 2 and got.optimizer_restored
        loaded.append((module.state_dict(), opt.state_dict()["state"]))
    (w_index, s_index), (w_whole, s_whole) = loaded
    assert all(same_bits(w_index[k], w_whole[k]) for k in w_whole)
    for i, slots in s_whole.items():
        assert all(same_bits(torch.as_tensor(s_index[i][k]), torch.as_tensor(v)) for k, v in slots.items())
