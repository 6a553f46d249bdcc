"""safe_open, verify, metadata and devices: the safetensors-style API beyond round trips."""

import pytest
import torch
from conftest import same_bits

import train_ckpt


@pytest.fixture
def saved(tmp_path):
    tensors = {
        "w": torch.arange(60, dtype=torch.float32).reshape(6, 10),
        "b": torch.randn(10).bfloat16(),
        "optimizer/w/step": torch.tensor(7.0),
    }
    path = tmp_path / "m.tckpt"
    train_ckpt.save_file(tensors, path, metadata={"epoch": "5", "val_loss": "1.5", "run": "abc"})
    return path, tensors


def test_safe_open_reads_keys_metadata_and_tensors_one_at_a_time(saved):
    path, tensors = saved
    with train_ckpt.safe_open(path, framework="pt") as f:
        assert f.keys() == list(tensors)
        meta = f.metadata()
        assert (meta["epoch"], meta["val_loss"], meta["run"]) == ("5", "1.5", "abc")
        assert meta["format"] == "train.checkpoint" and "metadata_xxh3" in meta
        for name, t in tensors.items():
            assert same_bits(f.get_tensor(name), t)
        with pytest.raises(KeyError, match="nope"):
            f.get_tensor("nope")
        with pytest.raises(KeyError, match="nope"):
            f.get_slice("nope")
    with pytest.raises(ValueError, match="closed"):
        f.keys()


def test_get_slice_gives_shape_dtype_and_any_index(saved):
    path, tensors = saved
    w = tensors["w"]
    with train_ckpt.safe_open(path, framework="pt") as f:
        s = f.get_slice("w")
        assert (s.get_shape(), s.get_dtype()) == ([6, 10], "F32")
        assert torch.equal(s[...], w)
        assert torch.equal(s[1:4], w[1:4])
        assert torch.equal(s[2], w[2])
        assert torch.equal(s[:, 3:5], w[:, 3:5])
        part = s[0:1]
        assert part.untyped_storage().nbytes() == part.numel() * 4, "a part does not hold the whole tensor"
        assert f.get_slice("b").get_dtype() == "BF16"


def test_safe_open_refuses_other_frameworks(saved):
    with pytest.raises(ValueError, match="framework"):
        train_ckpt.safe_open(saved[0], framework="np")


def test_verify_reports_what_it_checked(saved, tmp_path):
    assert train_ckpt.verify(saved[0]) == {"tensors": 3, "integrity": "checked"}
    torch.save({"a": torch.ones(2)}, tmp_path / "p.pt")
    assert train_ckpt.verify(tmp_path / "p.pt") == {"tensors": 1, "integrity": "not_checked"}


def test_other_devices_load_to_the_cpu_then_move(saved):
    path, tensors = saved
    cpu = train_ckpt.load_file(path, device="cpu")
    assert all(t.device.type == "cpu" for t in cpu.values())
    # The meta device stands in for an accelerator: the same `.to(device)` path, on any machine.
    moved = train_ckpt.load_file(path, device="meta")
    assert all(t.device.type == "meta" and t.shape == tensors[k].shape for k, t in moved.items())
    with train_ckpt.safe_open(path, device=torch.device("meta")) as f:
        assert f.get_tensor("w").device.type == "meta"


def test_paths_may_be_strings_or_path_objects(saved):
    path, tensors = saved
    assert list(train_ckpt.load_file(str(path))) == list(train_ckpt.load_file(path))


def test_save_file_replaces_a_file_atomically_and_keeps_it_when_the_write_fails(tmp_path):
    path = tmp_path / "a.tckpt"
    train_ckpt.save_file({"x": torch.ones(3)}, path)
    train_ckpt.save_file({"x": torch.zeros(3)}, path)
    assert torch.equal(train_ckpt.load_file(path)["x"], torch.zeros(3))
    with pytest.raises(ValueError, match="U16"):
        train_ckpt.save_file({"u": torch.ones(2, dtype=torch.uint16)}, path)
    assert torch.equal(train_ckpt.load_file(path)["x"], torch.zeros(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.tckpt"], "no temporary file is left"


def test_save_file_takes_tensors_off_other_devices(tmp_path):
    t = torch.randn(4, 4, requires_grad=True)
    train_ckpt.save_file({"t": t * 2}, tmp_path / "g.tckpt")
    assert torch.equal(train_ckpt.load_file(tmp_path / "g.tckpt")["t"], (t * 2).detach())
