"""The module-level API (the seed guide's method 2) on models nobody here wrote: torchvision's
resnet18 and a transformers GPT-2, with PyTorch's own optimizers and schedulers as the
reference for what a load must restore."""

import copy
import logging

import pytest
import torch
import torchvision
from conftest import same_bits

import train_ckpt

FORMATS = [pytest.param(True, ".tckpt", id="tckpt"), pytest.param(False, ".safetensors", id="plain")]


def trained_resnet(optimizer="adamw", steps=3, seed=0):
    """torchvision's resnet18 (4 classes), an optimizer and a StepLR after ``steps`` steps."""
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=4)
    if optimizer == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    elif optimizer == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    else:
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    x, y = batch(seed)
    for _ in range(steps):
        step(model, opt, x, y)
        sched.step()
    return model, opt, sched


def batch(seed=0):
    g = torch.Generator().manual_seed(100 + seed)
    return torch.randn(4, 3, 32, 32, generator=g), torch.randint(0, 4, (4,), generator=g)


def step(model, opt, x, y):
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()


def fresh(optimizer="adamw", seed=7):
    """The same architecture and optimizer kind with other weights and no state."""
    model, opt, sched = trained_resnet(optimizer, steps=0, seed=seed)
    return model, opt, sched


def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        assert same_bits(sa[k], sb[k]), k


def assert_same_optimizer(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["state"].keys() == sb["state"].keys()
    for i, slots in sa["state"].items():
        assert slots.keys() == sb["state"][i].keys(), i
        for slot, t in slots.items():
            assert same_bits(t, sb["state"][i][slot]), (i, slot)
    for ga, gb in zip(sa["param_groups"], sb["param_groups"]):
        assert {k: v for k, v in ga.items() if k != "params"} == {k: v for k, v in gb.items() if k != "params"}


def snapshot(model, opt=None):
    return copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()) if opt is not None else None


def assert_untouched(model, opt, before):
    state, opt_state = before
    for k, t in model.state_dict().items():
        assert same_bits(t, state[k]), f"{k} changed"
    if opt is not None:
        now = opt.state_dict()
        assert now["state"].keys() == opt_state["state"].keys()
        for i, slots in opt_state["state"].items():
            for slot, t in slots.items():
                assert same_bits(now["state"][i][slot], t), f"optimizer state {i}/{slot} changed"


@pytest.mark.parametrize("kind", ["adamw", "adam", "sgd"])
@pytest.mark.parametrize("compress,suffix", FORMATS)
def test_a_saved_run_loads_back_exactly_and_takes_the_same_next_step(tmp_path, kind, compress, suffix):
    model, opt, sched = trained_resnet(kind)
    path = tmp_path / f"run{suffix}"
    train_ckpt.save_checkpoint(path, model, opt, epoch=3, train_loss=0.5, val_loss=0.75, compress=compress, scheduler=sched)
    assert train_ckpt.verify(path)["integrity"] == "checked"

    model2, opt2, sched2 = fresh(kind)
    got = train_ckpt.load_checkpoint_memory_efficient(model2, opt2, path, scheduler=sched2)
    epoch, train_loss, val_loss = got
    assert (epoch, train_loss, val_loss) == (3, 0.5, 0.75)
    assert got.optimizer_restored and got.scheduler_restored and got.integrity == "checked"
    assert got.step == (0 if kind == "sgd" else 3), "the global step is Adam's step count"
    assert_same_state(model, model2)
    assert_same_optimizer(opt, opt2)
    assert sched2.state_dict() == sched.state_dict()
    assert opt2.param_groups[0]["lr"] == opt.param_groups[0]["lr"] == 0.5e-3 if kind != "sgd" else True

    x, y = batch(1)
    step(model, opt, x, y)
    step(model2, opt2, x, y)
    assert_same_state(model, model2)


def test_step_counts_are_stored_as_train_stores_them(tmp_path):
    model, opt, _ = trained_resnet("adam", steps=2)
    path = tmp_path / "s.tckpt"
    train_ckpt.save_checkpoint(path, model, opt, epoch=1, train_loss=1.0)
    tensors = train_ckpt.load_file(path)
    step_t = tensors["optimizer/conv1.weight/step"]
    assert step_t.dtype == torch.int64 and step_t.shape == () and int(step_t) == 2
    meta = train_ckpt.safe_open(path).metadata()
    assert meta["step"] == "2" and meta["epoch"] == "1" and meta["has_optimizer_state"] == "true"
    assert '"kind":"adam"' in meta["optimizer"].replace(" ", "")


def test_load_model_only_never_reads_optimizer_bytes(tmp_path):
    model, opt, _ = trained_resnet()
    path = tmp_path / "w.safetensors"
    train_ckpt.save_checkpoint(path, model, opt, epoch=2, train_loss=0.25, compress=False)
    damage_tensor(path, "optimizer/fc.weight/exp_avg")

    model2, opt2, _ = fresh()
    epoch, train_loss = train_ckpt.load_model_only(model2, path, strict=True)
    assert (epoch, train_loss) == (2, 0.25)
    assert_same_state(model, model2)
    # Loading the optimizer too reads the damaged tensor first, and touches nothing.
    model3, opt3, _ = trained_resnet(seed=5, steps=1)
    before = snapshot(model3, opt3)
    with pytest.raises(ValueError, match="optimizer/fc.weight/exp_avg"):
        train_ckpt.load_checkpoint_memory_efficient(model3, opt3, path)
    assert_untouched(model3, opt3, before)


def damage_tensor(path, name):
    """Flips a bit in the middle of tensor ``name`` of a plain (safetensors) file."""
    import json

    data = bytearray(path.read_bytes())
    header_len = int.from_bytes(data[:8], "little")
    start, end = json.loads(data[8:8 + header_len])[name]["data_offsets"]
    data[8 + header_len + (start + end) // 2] ^= 0x10
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("compress,suffix", FORMATS)
@pytest.mark.parametrize("loader", ["model_only", "memory_efficient", "smart"])
def test_a_damaged_file_raises_and_leaves_model_and_optimizer_as_they_were(tmp_path, compress, suffix, loader):
    model, opt, _ = trained_resnet()
    path = tmp_path / f"d{suffix}"
    train_ckpt.save_checkpoint(path, model, opt, epoch=1, train_loss=1.0, compress=compress)
    if compress:
        # layer4's 3x3 convolutions are most of the file: a bit flipped in the middle lands in them.
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))
    else:
        damage_tensor(path, "layer4.1.conv2.weight")
    model2, opt2, _ = trained_resnet(seed=9, steps=1)
    before = snapshot(model2, opt2)
    with pytest.raises(ValueError):
        if loader == "model_only":
            train_ckpt.load_model_only(model2, path)
        elif loader == "memory_efficient":
            train_ckpt.load_checkpoint_memory_efficient(model2, opt2, path)
        else:
            train_ckpt.smart_load_checkpoint(model2, opt2, path)
    assert_untouched(model2, opt2, before)


def test_strict_name_mismatches_are_key_errors_listing_both_sides_and_change_nothing(tmp_path):
    model, opt, _ = trained_resnet()
    path = tmp_path / "n.tckpt"
    train_ckpt.save_checkpoint(path, model, opt, epoch=1, train_loss=1.0)
    other = torchvision.models.resnet18(num_classes=4)
    other.extra = torch.nn.Linear(2, 2)
    del other.fc
    other.fc = torch.nn.Identity()
    before = snapshot(other)
    with pytest.raises(KeyError) as caught:
        train_ckpt.load_model_only(other, path, strict=True)
    message = str(caught.value)
    assert isinstance(caught.value, train_ckpt.StateDictKeyError)
    assert 'Missing key(s) in state_dict: "extra.weight", "extra.bias".' in message
    assert 'Unexpected key(s) in state_dict: "fc.weight", "fc.bias".' in message
    assert_untouched(other, None, before)


def test_lenient_loads_log_and_return_the_differences(tmp_path, caplog):
    model, _, _ = trained_resnet()
    path = tmp_path / "l.tckpt"
    train_ckpt.save_checkpoint(path, model, epoch=1, train_loss=1.0)
    other = torchvision.models.resnet18(num_classes=4)
    other.fc = torch.nn.Identity()
    with caplog.at_level(logging.WARNING, logger="train_ckpt"):
        got = train_ckpt.load_model_only(other, path)
    assert got.missing_keys == [] and got.unexpected_keys == ["fc.weight", "fc.bias"]
    assert "2 unexpected keys [fc.weight, fc.bias]" in caplog.text
    assert same_bits(other.conv1.weight, model.conv1.weight)


def test_a_file_that_matches_nothing_is_refused_even_when_lenient(tmp_path):
    model, _, _ = trained_resnet()
    path = tmp_path / "x.tckpt"
    train_ckpt.save_checkpoint(path, model, epoch=1, train_loss=1.0)
    other = torch.nn.Sequential(torch.nn.Linear(3, 3))
    with pytest.raises(ValueError, match="nothing would be loaded"):
        train_ckpt.load_model_only(other, path, strict=False)


def test_size_mismatches_are_refused_before_anything_changes(tmp_path):
    model, opt, _ = trained_resnet()
    path = tmp_path / "m.tckpt"
    train_ckpt.save_checkpoint(path, model, opt, epoch=1, train_loss=1.0)
    ten = torchvision.models.resnet18(num_classes=10)
    before = snapshot(ten)
    with pytest.raises(ValueError, match=r"size mismatch for fc.weight: copying a param with shape \[4, 512\]"):
        train_ckpt.load_model_only(ten, path)
    assert_untouched(ten, None, before)


def test_another_optimizer_kind_is_refused_naming_both(tmp_path):
    model, opt, _ = trained_resnet("adamw")
    path = tmp_path / "k.tckpt"
    train_ckpt.save_checkpoint(path, model, opt, epoch=1, train_loss=1.0)
    model2, sgd, _ = fresh("sgd")
    before = snapshot(model2, sgd)
    with pytest.raises(ValueError, match="adamw optimizer state and the optimizer is a SGD"):
        train_ckpt.load_checkpoint_memory_efficient(model2, sgd, path)
    assert_untouched(model2, sgd, before)


def test_wrapper_prefixes_are_stripped_both_ways(tmp_path):
    model, opt, _ = trained_resnet()
    wrapped = torch.nn.DataParallel(model)  # names start with `module.`
    path = tmp_path / "ddp.tckpt"
    train_ckpt.save_checkpoint(path, wrapped, opt, epoch=1, train_loss=1.0)
    assert "conv1.weight" in train_ckpt.safe_open(path).keys()
    plain, opt2, _ = fresh()
    train_ckpt.load_checkpoint_memory_efficient(plain, opt2, path)
    assert_same_state(model, plain)
    assert_same_optimizer(opt, opt2)
    compiled = torch.compile(fresh()[0])  # names start with `_orig_mod.`; nothing is compiled until called
    assert next(iter(compiled.state_dict())).startswith("_orig_mod.")
    train_ckpt.load_model_only(compiled, path, strict=True)
    assert_same_state(model, compiled._orig_mod)


def test_another_dtype_is_converted_through_staging(tmp_path):
    model, _, _ = trained_resnet()
    path = tmp_path / "bf16.tckpt"
    train_ckpt.save_checkpoint(path, model.to(torch.bfloat16), epoch=1, train_loss=1.0)
    target = fresh()[0]  # float32
    train_ckpt.load_model_only(target, path, strict=True)
    for name, t in model.state_dict().items():
        assert torch.equal(target.state_dict()[name], t.to(target.state_dict()[name].dtype)), name


def test_tied_weights_stay_tied_and_load_in_a_transformers_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=2, n_embd=64, n_head=4, vocab_size=257, n_positions=64)
    model = transformers.GPT2LMHeadModel(config)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    ids = torch.randint(0, 257, (2, 16))
    opt.zero_grad()
    model(ids, labels=ids).loss.backward()
    opt.step()
    path = tmp_path / "gpt2.tckpt"
    train_ckpt.save_checkpoint(path, model, opt, epoch=1, train_loss=1.0)
    torch.manual_seed(1)
    model2 = transformers.GPT2LMHeadModel(config)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3)
    train_ckpt.load_checkpoint_memory_efficient(model2, opt2, path)
    assert model2.lm_head.weight.data_ptr() == model2.transformer.wte.weight.data_ptr(), "still tied"
    assert_same_state(model, model2)
    assert_same_optimizer(opt, opt2)
    model.eval(), model2.eval()
    with torch.no_grad():
        assert torch.equal(model(ids).logits, model2(ids).logits)


def test_a_torch_save_checkpoint_restores_its_optimizer_by_position(tmp_path):
    model, opt, _ = trained_resnet("adam")
    path = tmp_path / "guide.pth"
    torch.save({"epoch": 4, "model_state_dict": model.state_dict(), "optimizer_state_dict": opt.state_dict(), "loss": 0.5}, path)
    model2, opt2, _ = fresh("adam")
    epoch, train_loss, _ = train_ckpt.load_checkpoint_memory_efficient(model2, opt2, path)
    assert (epoch, train_loss) == (4, 0.5)
    assert_same_state(model, model2)
    assert_same_optimizer(opt, opt2)


def test_a_scheduler_without_saved_state_is_left_with_a_warning(tmp_path):
    model, opt, _ = trained_resnet()
    path = tmp_path / "nosched.tckpt"
    train_ckpt.save_checkpoint(path, model, opt, epoch=1, train_loss=1.0)
    model2, opt2, sched2 = fresh()
    before = sched2.state_dict()
    with pytest.warns(UserWarning, match="holds no PyTorch scheduler state"):
        got = train_ckpt.load_checkpoint_memory_efficient(model2, opt2, path, scheduler=sched2)
    assert not got.scheduler_restored and sched2.state_dict() == before


def test_schedulers_with_infinite_values_round_trip(tmp_path):
    model, opt, _ = trained_resnet()
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt)  # its `best` starts at inf
    path = tmp_path / "plateau.tckpt"
    train_ckpt.save_checkpoint(path, model, opt, epoch=1, train_loss=1.0, scheduler=plateau)
    model2, opt2, _ = fresh()
    plateau2 = torch.optim.lr_scheduler.ReduceLROnPlateau(opt2, patience=99)
    train_ckpt.load_checkpoint_memory_efficient(model2, opt2, path, scheduler=plateau2)
    assert plateau2.best == float("inf") and plateau2.patience == plateau.patience


def test_smart_load_chooses_by_the_planner_and_says_why(tmp_path):
    model, opt, _ = trained_resnet()
    path = tmp_path / "p.tckpt"
    train_ckpt.save_checkpoint(path, model, opt, epoch=1, train_loss=1.0)
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    plenty, some, little = 100 * weights, int(3.6 * weights), weights // 10
    for free, expected in [(plenty, "standard"), (some, "memory_efficient"), (little, "model_only")]:
        model2, opt2, _ = fresh()
        got = train_ckpt.smart_load_checkpoint(model2, opt2, path, free_bytes=free)
        assert got.strategy == expected, got.reason
        assert got.source == "free_bytes" and got.free_bytes == free
        assert set(got.predicted_peak_bytes) == {"standard", "memory_efficient", "model_only"}
        assert_same_state(model, model2)
        if expected == "model_only":
            assert not got.optimizer_restored and not opt2.state, "model_only starts the optimizer fresh"
            assert "nothing is predicted to fit" in got.reason
        else:
            assert got.optimizer_restored
            assert_same_optimizer(opt, opt2)
    got = train_ckpt.smart_load_checkpoint(*fresh()[:2], path)
    assert "memory" in got.source and got.free_bytes > 0 and got.strategy == "standard", got.reason


def test_smart_load_honours_the_memory_switches(tmp_path):
    model, opt, _ = trained_resnet()
    path = tmp_path / "q.tckpt"
    train_ckpt.save_checkpoint(path, model, opt, epoch=1, train_loss=1.0)
    got = train_ckpt.smart_load_checkpoint(*fresh()[:2], path, checkpoint_memory_efficient=True)
    assert got.strategy == "memory_efficient"
    got = train_ckpt.smart_load_checkpoint(*fresh()[:2], path, load_optimizer_state=False)
    assert got.strategy == "model_only"
    got = train_ckpt.smart_load_checkpoint(*fresh()[:2], path, strategy="memory_efficient")
    assert got.strategy == "memory_efficient" and got.reason.startswith("memory.strategy is memory_efficient")
    with pytest.raises(ValueError, match="memory.strategy is standard but memory.checkpoint_memory_efficient is true"):
        train_ckpt.smart_load_checkpoint(*fresh()[:2], path, strategy="standard", checkpoint_memory_efficient=True)
    with pytest.raises(ValueError, match="strategy `fastest` is none of"):
        train_ckpt.smart_load_checkpoint(*fresh()[:2], path, strategy="fastest")


def test_save_checkpoint_refuses_what_it_cannot_record(tmp_path):
    model, opt, _ = trained_resnet()
    with pytest.raises(ValueError, match="epoch must be a whole number"):
        train_ckpt.save_checkpoint(tmp_path / "e.tckpt", model, opt, epoch=1.5, train_loss=1.0)
    with pytest.raises(ValueError, match="compress=True writes the compressed .tckpt format"):
        train_ckpt.save_checkpoint(tmp_path / "e.safetensors", model, opt, epoch=1, train_loss=1.0)
    stray = torch.optim.Adam([torch.nn.Parameter(torch.zeros(3))])
    stray.param_groups[0]["params"][0].grad = torch.ones(3)
    stray.step()
    with pytest.raises(ValueError, match="that the model does not"):
        train_ckpt.save_checkpoint(tmp_path / "s.tckpt", model, stray, epoch=1, train_loss=1.0)
    assert not list(tmp_path.iterdir()), "nothing was written"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU staging path is checked by scripts/gpu-check")
def test_a_gpu_model_loads_through_pinned_staging(tmp_path):
    model, opt, _ = trained_resnet()
    path = tmp_path / "g.tckpt"
    train_ckpt.save_checkpoint(path, model, opt, epoch=1, train_loss=1.0)
    model2, _, _ = fresh()
    model2 = model2.cuda()
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-3, weight_decay=0.05)
    train_ckpt.load_checkpoint_memory_efficient(model2, opt2, path)
    for k, t in model.state_dict().items():
        assert same_bits(model2.state_dict()[k].cpu(), t), k
    state = opt2.state_dict()["state"]
    assert state[0]["exp_avg"].device.type == "cuda"
