"""Hugging Face transformers models built from small configs (random weights: no model hub
is reached), for tests/user_models.rs.

  python hf_models.py export OUT_DIR
      Writes OUT_DIR/bert.pt, a BertForSequenceClassification traced to take input_ids,
      attention_mask and labels by keyword and return {"loss", "logits"}, with
      OUT_DIR/bert.npz (input_ids, attention_mask, labels: the class is the first token
      modulo 3); and OUT_DIR/gpt2.pt, a GPT2LMHeadModel taking input_ids and labels, with
      OUT_DIR/gpt2.npz (input_ids: counting sequences modulo 64, which a language model
      learns). Each archive carries its model's state_dict keys (extra file
      `state_dict_keys`), so checkpoints leave out the non-persistent buffers.
  python hf_models.py check MODEL SCRIPTED CHECKPOINT DATA VAL_FRACTION EXPECTED_VAL_LOSS
      Loads a `train` checkpoint into the Hugging Face model (`bert` or `gpt2`) with
      load_state_dict(strict=True) and checks that the traced module given the same state
      returns the same logits (to 1e-5), and that the validation loss is the one `train` logged.
"""
import sys

import numpy as np
import torch
import transformers


def bert():
    cfg = transformers.BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=32, num_labels=3, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    return transformers.BertForSequenceClassification(cfg)


def gpt2():
    cfg = transformers.GPT2Config(
        vocab_size=64, n_positions=32, n_embd=32, n_layer=2, n_head=2,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False,
    )
    return transformers.GPT2LMHeadModel(cfg)


def inputs(name, data, rows):
    d = {k: torch.from_numpy(data[k][rows]) for k in data.files}
    if name == "bert":
        return {"input_ids": d["input_ids"], "attention_mask": d["attention_mask"], "labels": d["labels"]}
    return {"input_ids": d["input_ids"], "labels": d["input_ids"]}


def export(out):
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, t = 192, 16
    ids = rng.integers(1, 64, size=(n, t)).astype(np.int64)
    lengths = rng.integers(8, t + 1, size=n)
    mask = (np.arange(t)[None, :] < lengths[:, None]).astype(np.int64)
    ids = ids * mask
    np.savez(f"{out}/bert.npz", input_ids=ids, attention_mask=mask, labels=(ids[:, 0] % 3).astype(np.int64))
    starts = rng.integers(0, 64, size=(n, 1))
    steps = rng.integers(1, 4, size=(n, 1))
    np.savez(f"{out}/gpt2.npz", input_ids=((starts + steps * np.arange(t)[None, :]) % 64).astype(np.int64))
    for name, make in (("bert", bert), ("gpt2", gpt2)):
        model = make()
        data = np.load(f"{out}/{name}.npz")
        example = inputs(name, data, slice(0, 4))
        # check_trace=False: GPT-2's graph names its submodules differently on a second trace
        # (a mangling counter), which the check reports as different graphs.
        traced = torch.jit.trace(model, example_kwarg_inputs=example, strict=False, check_trace=False)
        torch.jit.save(traced, f"{out}/{name}.pt", _extra_files={"state_dict_keys": "\n".join(model.state_dict())})


def check(name, scripted, ckpt, data_path, val_fraction, expected):
    from safetensors.torch import load_file

    state = {k: v for k, v in load_file(ckpt).items() if not k.startswith("optimizer/")}
    model = {"bert": bert, "gpt2": gpt2}[name]()
    model.load_state_dict(state, strict=True)
    model.eval()
    traced = torch.jit.load(scripted)
    traced.load_state_dict(state, strict=False)  # its state also holds the non-persistent buffers
    traced.eval()
    data = np.load(data_path)
    n = data[data.files[0]].shape[0]
    val = max(1, round(n * val_fraction))
    batch = inputs(name, data, slice(n - val, n))
    with torch.no_grad():
        out = model(**batch, return_dict=True)
        diff = (out.logits - traced(**batch)["logits"]).abs().max().item()
    loss = out.loss.item()
    print(f"val_loss {loss:.6f} max_logit_diff {diff:.2e}")
    assert diff <= 1e-5, f"Hugging Face and TorchScript logits differ by {diff}"
    assert abs(loss - expected) <= 1e-4 * max(1.0, abs(expected)), f"val loss {loss} vs train's {expected}"


if __name__ == "__main__":
    if sys.argv[1] == "export":
        export(sys.argv[2])
    else:
        check(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5], float(sys.argv[6]), float(sys.argv[7]))
