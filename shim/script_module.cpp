// A TorchScript module as `train` drives it: loaded on a device, its parameters *and
// buffers* by dotted name (tch binds only the parameters, so BatchNorm's running statistics
// fell out of checkpoints), its train/eval mode, and `forward` with positional or named
// inputs whose output is unpacked by the contract README.md states:
//
//   - a tensor: the logits;
//   - a tuple: the logits first, or `(loss, logits, ...)` when labels were passed and the
//     first element is a 0-d tensor (Hugging Face's `return_dict=False` habit);
//   - a dict: its "logits" entry, and its "loss" entry when present.
//
// Tensors cross as `at::Tensor*` allocated with `new`, the convention of tch's own wrapper
// (torch-sys's libtch), so Rust owns them with `tch::Tensor::from_ptr`. Errors follow
// shim/error.h: a status, and the message in `err`; no C++ exception crosses into Rust.

#include <torch/script.h>

#include <string>
#include <vector>

#include "error.h"

using train_shim::guarded;

namespace {

std::string kind_of(const c10::IValue& v) { return v.tagKind(); }

}  // namespace

extern "C" {

using NamedTensorFn = void (*)(void* ctx, const char* name, at::Tensor* tensor);

// Loads the archive at `path` onto `device` (-1: CPU, else the CUDA index) into `*out`.
int train_script_load(const char* path, int device, void** out, char** err) {
  *out = nullptr;
  return guarded(err, -1, [&]() -> int {
    c10::Device dev = device < 0 ? c10::Device(c10::kCPU) : c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(device));
    *out = new torch::jit::Module(torch::jit::load(path, dev));
    return 0;
  });
}

void train_script_free(void* module) { delete static_cast<torch::jit::Module*>(module); }

// Calls `fn` with each parameter (buffers == 0) or buffer (buffers != 0), recursively, by
// dotted name, in the module's own order. The tensors share storage with the module.
int train_script_named_tensors(void* module, int buffers, void* ctx, NamedTensorFn fn, char** err) {
  return guarded(err, -1, [&]() -> int {
    auto* m = static_cast<torch::jit::Module*>(module);
    if (buffers != 0) {
      for (const auto& item : m->named_buffers(/*recurse=*/true)) fn(ctx, item.name.c_str(), new at::Tensor(item.value));
    } else {
      for (const auto& item : m->named_parameters(/*recurse=*/true)) fn(ctx, item.name.c_str(), new at::Tensor(item.value));
    }
    return 0;
  });
}

int train_script_set_training(void* module, int on, char** err) {
  return guarded(err, -1, [&]() -> int {
    static_cast<torch::jit::Module*>(module)->train(on != 0);
    return 0;
  });
}

// Runs `forward` on `n` inputs: `names[i]` null passes input i by position (positional ones
// come first), else as the keyword argument of that name. `with_labels` says whether one
// of the keyword inputs is the labels, which lets a tuple's first element be the loss.
// On success `*logits` is set, and `*loss` when the module returned one (else null).
int train_script_forward(void* module, at::Tensor* const* inputs, const char* const* names, int n, int with_labels,
                         at::Tensor** logits, at::Tensor** loss, char** err) {
  *logits = nullptr;
  *loss = nullptr;
  return guarded(err, -1, [&]() -> int {
    auto* m = static_cast<torch::jit::Module*>(module);
    std::vector<c10::IValue> args;
    std::unordered_map<std::string, c10::IValue> kwargs;
    for (int i = 0; i < n; ++i) {
      if (names[i] == nullptr) {
        args.emplace_back(*inputs[i]);
      } else {
        kwargs.emplace(names[i], *inputs[i]);
      }
    }
    c10::IValue out = m->get_method("forward")(std::move(args), kwargs);
    c10::IValue logits_value, loss_value;
    if (out.isTensor()) {
      logits_value = out;
    } else if (out.isTuple()) {
      const auto& elements = out.toTupleRef().elements();
      if (elements.empty()) throw std::runtime_error("forward returned an empty tuple");
      bool loss_first = with_labels != 0 && elements.size() >= 2 && elements[0].isTensor() &&
                        elements[0].toTensor().dim() == 0;
      if (loss_first) {
        loss_value = elements[0];
        logits_value = elements[1];
      } else {
        logits_value = elements[0];
      }
    } else if (out.isGenericDict()) {
      for (const auto& entry : out.toGenericDict()) {
        if (!entry.key().isString()) continue;
        const std::string& key = entry.key().toStringRef();
        if (key == "logits") logits_value = entry.value();
        if (key == "loss") loss_value = entry.value();
      }
      if (logits_value.isNone()) throw std::runtime_error("forward returned a dict without a \"logits\" entry");
    } else {
      throw std::runtime_error("forward returned " + kind_of(out));
    }
    if (!logits_value.isTensor()) throw std::runtime_error("forward's logits are a " + kind_of(logits_value) + ", not a Tensor");
    if (!loss_value.isNone() && !loss_value.isTensor()) {
      throw std::runtime_error("forward's loss is a " + kind_of(loss_value) + ", not a Tensor");
    }
    *logits = new at::Tensor(logits_value.toTensor());
    if (loss_value.isTensor()) *loss = new at::Tensor(loss_value.toTensor());
    return 0;
  });
}

}  // extern "C"
