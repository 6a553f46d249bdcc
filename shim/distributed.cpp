// libtorch's distributed engine (c10d) for data-parallel training: the TCPStore
// rendezvous, a process group (ProcessGroupGloo on the CPU, ProcessGroupNCCL on CUDA), and
// the few collectives a data-parallel step needs. Rust side: src/distributed/engine.rs.
//
// Tensors arrive as `at::Tensor*`: what tch's `Tensor::as_ptr()` points to (torch-sys's C
// wrapper keeps an `at::Tensor*` behind its `tensor` handle).
//
// Errors follow shim/error.h: every function catches C++ exceptions (c10d reports lost
// peers, timeouts and refused sockets by throwing) and returns -1 with the message in
// `err`; none may cross into Rust.
//
// Gloo's own headers: the PyPI wheel ships ProcessGroupGloo.hpp but not gloo/*.h, which it
// includes; Debian's libgloo-dev supplies them (scripts/lib.sh installs it, build.rs names
// it when missing). Mixing those headers with the gloo compiled into libtorch_cpu.so is
// safe as long as no gloo type is laid out or called from this file, and none is:
// ProcessGroupGloo holds gloo objects only through shared_ptr (so its size does not depend
// on gloo's headers), its Options come from the out-of-line `create_default`, and after
// construction it is used only through c10d::Backend's virtual interface. No gloo function
// is called here.
//
// Gradients, two ways (`distributed.overlap`):
// - c10d::Reducer, DDP's own engine: hooks on the parameters' gradient accumulators all-reduce
//   each bucket as soon as backward has produced its gradients, overlapping communication
//   with the rest of backward, and average them. tch's backward is libtorch's autograd
//   engine, so the hooks fire as under Python; `train_dist_reducer_prepare` is DDP's
//   prepare_for_forward/prepare_for_backward, called before the last micro-batch's backward
//   only (DDP's no_sync for the ones before). Built as DDP's gradient_as_bucket_view=True:
//   each parameter's `.grad` is a view of its bucket, not a second copy of every gradient
//   (measured: 240 MB less at the peak for 216 MB of gradients, bench/README.md).
//   A parameter that gets no gradient in that backward (not used for the loss, on one rank
//   or all) keeps its bucket from ever being ready: the bucket is never all-reduced and the
//   step would go on with each rank's own gradients. With `distributed.find_unused_parameters`
//   the Reducer is built as DDP's find_unused_parameters=True (it searches the loss's graph
//   before backward and marks the parameters it cannot reach ready, with zeros); without,
//   `train_dist_reducer_finished` tells after backward whether every bucket went out, and
//   `train_dist_reached` which parameters the loss's graph reaches, to name the others.
// - bucketed all-reduce after backward (`train_dist_allreduce_grads`): the same buckets, all
//   issued together once backward is done, no overlap.
// bench/README.md measures both.

#include <ATen/ATen.h>
#include <c10/util/Exception.h>
#include <torch/csrc/autograd/function.h>
#include <torch/csrc/autograd/grad_mode.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/logger.hpp>
#include <torch/csrc/distributed/c10d/reducer.hpp>
#ifdef TRAIN_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <string>
#include <unordered_set>
#include <vector>

#include "error.h"

using train_shim::guarded;

namespace {

// The Reducer, with one question it keeps protected answered: whether the last armed
// backward reduced every bucket. `require_finalize_` is set when the first gradient of an
// armed backward is ready and cleared when the last bucket has been all-reduced and copied
// back; still set after backward means a bucket waited for a gradient that never came.
struct TrainReducer : c10d::Reducer {
  using c10d::Reducer::Reducer;
  bool finished() const { return !require_finalize_; }
};

struct Dist {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  int device_index;  // -1 on the CPU
  // The Reducer takes a ProcessGroup (the front over the backend), made when attached.
  c10::intrusive_ptr<c10d::ProcessGroup> group;
  std::shared_ptr<TrainReducer> reducer;
  // DDP's Logger for the Reducer: with find_unused_parameters, the Reducer reports through
  // it the first step whose set of unused parameters changed, dereferencing it unchecked
  // (a segfault without one). Python's DDP always makes one; so do we.
  std::shared_ptr<c10d::Logger> logger;
};

// Groups `tensors` into buckets of at most `cap` bytes of one dtype and device (a tensor
// larger than `cap` is a bucket of its own), in order.
std::vector<std::vector<at::Tensor>> buckets_of(const std::vector<at::Tensor>& tensors, int64_t cap) {
  std::vector<std::vector<at::Tensor>> out;
  int64_t bytes = 0;
  for (const auto& t : tensors) {
    int64_t b = t.numel() * static_cast<int64_t>(t.element_size());
    bool fits = !out.empty() && out.back().front().scalar_type() == t.scalar_type() &&
                out.back().front().device() == t.device() && bytes + b <= cap;
    if (!fits) {
      out.emplace_back();
      bytes = 0;
    }
    out.back().push_back(t);
    bytes += b;
  }
  return out;
}

at::Tensor flatten(const std::vector<at::Tensor>& ts) {
  std::vector<at::Tensor> flat;
  flat.reserve(ts.size());
  for (const auto& t : ts) flat.push_back(t.reshape({-1}));
  return at::cat(flat);
}

void unflatten_into(const at::Tensor& flat, std::vector<at::Tensor>& ts) {
  int64_t offset = 0;
  for (auto& t : ts) {
    t.copy_(flat.narrow(0, offset, t.numel()).view(t.sizes()));
    offset += t.numel();
  }
}

// Sharded state (ZeRO): the trainable parameters form buckets (bucket k is
// params[ends[k-1] .. ends[k])); a bucket's flattened elements, padded with zeros to a
// multiple of the world size, are split evenly: rank r owns [r * shard, (r + 1) * shard).
// Rust's src/distributed/partition.rs makes the same split; these only move bytes.
struct BucketSpan {
  std::vector<at::Tensor> params;
  int64_t numel = 0;
  int64_t shard = 0;  // elements each rank owns (padded / world)
};

std::vector<BucketSpan> spans_of(at::Tensor** params, const int64_t* ends, size_t buckets, int64_t world) {
  std::vector<BucketSpan> out(buckets);
  int64_t begin = 0;
  for (size_t k = 0; k < buckets; ++k) {
    for (int64_t i = begin; i < ends[k]; ++i) {
      out[k].params.push_back(*params[i]);
      out[k].numel += params[i]->numel();
    }
    out[k].shard = (out[k].numel + world - 1) / world;
    begin = ends[k];
  }
  return out;
}

// Copies elements [lo, lo + out.numel()) of the concatenated flattened `ts` into `out`
// (zeros past their end).
void copy_range_out(const std::vector<at::Tensor>& ts, int64_t lo, at::Tensor& out) {
  out.zero_();
  int64_t hi = lo + out.numel(), at = 0;
  for (const auto& t : ts) {
    int64_t a = std::max(lo, at), b = std::min(hi, at + t.numel());
    if (a < b) out.narrow(0, a - lo, b - a).copy_(t.reshape({-1}).narrow(0, a - at, b - a));
    at += t.numel();
  }
}

// Copies `src` into elements [lo, lo + src.numel()) of the concatenated flattened `ts`
// (what lies past their end is dropped).
void copy_range_in(const std::vector<at::Tensor>& ts, int64_t lo, const at::Tensor& src) {
  int64_t hi = lo + src.numel(), at = 0;
  for (auto t : ts) {
    int64_t a = std::max(lo, at), b = std::min(hi, at + t.numel());
    if (a < b) t.view({-1}).narrow(0, a - at, b - a).copy_(src.narrow(0, a - lo, b - a));
    at += t.numel();
  }
}

// The sharded collectives move a bucket in chunks of at most this many bytes of each rank's
// shard, at most two chunks in flight: a large parameter (a bucket of its own) never needs a
// flat copy of its whole size, so the memory they add is a few chunks, whatever the model.
constexpr int64_t kChunkBytes = int64_t{16} << 20;

// One chunk: elements [offset, offset + len) of every rank's shard of bucket `bucket`.
struct Chunk {
  size_t bucket;
  int64_t offset, len;
};

std::vector<Chunk> chunks_of(const std::vector<BucketSpan>& spans) {
  std::vector<Chunk> out;
  for (size_t k = 0; k < spans.size(); ++k) {
    auto element = static_cast<int64_t>(spans[k].params.front().element_size());
    int64_t step = std::max<int64_t>(1, kChunkBytes / element);
    for (int64_t off = 0; off < spans[k].shard; off += step)
      out.push_back({k, off, std::min(step, spans[k].shard - off)});
  }
  return out;
}

}  // namespace

extern "C" {

// Rendezvous and process group. `is_server`: this process hosts the TCPStore (rank 0,
// unless torchrun's agent already hosts one). `backend`: 0 Gloo, 1 NCCL (on CUDA device
// `device_index`). `prefix` namespaces the keys (a torchrun restart gets fresh ones).
// Returns 0 and `*out`; -2 when the store could not be set up (the address, the port, the
// peers not arriving in time), -3 when NCCL is not compiled in, -1 otherwise.
int train_dist_init(const char* host, int port, int rank, int world, int is_server, int64_t timeout_ms,
                    int backend, int device_index, const char* prefix, void** out, char** err) {
  c10::intrusive_ptr<c10d::Store> store;
  auto timeout = std::chrono::milliseconds(timeout_ms);
  int rc = guarded(err, -2, [&]() -> int {
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = is_server != 0;
    opts.numWorkers = static_cast<std::size_t>(world);
    // Every rank counts itself in (the server waits for all `world` of them); as Python's
    // TCPStore(wait_for_workers=True).
    opts.waitWorkers = true;
    opts.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    store = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), tcp);
    return 0;
  });
  if (rc != 0) return rc;
  return guarded(err, -1, [&]() -> int {
    c10::intrusive_ptr<c10d::Backend> pg;
    if (backend == 0) {
      auto options = c10d::ProcessGroupGloo::Options::create_default(timeout);
      pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
    } else {
#ifdef TRAIN_WITH_NCCL
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, options);
#else
      train_shim::set_error(err, "this build of train has no NCCL (libtorch without CUDA)");
      return -3;
#endif
    }
    *out = new Dist{store, pg, device_index, {}, {}, {}};
    return 0;
  });
}

void train_dist_free(void* dist) {
  try {
    delete static_cast<Dist*>(dist);
  } catch (...) {
  }
}

// Gradient all-reduce: every parameter's `.grad` (zeros where a rank had no examples and so
// no backward) is multiplied by `scale` and summed over the ranks, in buckets of at most
// `bucket_bytes` issued together.
int train_dist_allreduce_grads(void* dist, at::Tensor** params, size_t n, double scale, int64_t bucket_bytes,
                               char** err) {
  return guarded(err, -1, [&]() -> int {
    auto* d = static_cast<Dist*>(dist);
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> grads;
    grads.reserve(n);
    for (size_t i = 0; i < n; ++i) {
      at::Tensor& g = params[i]->mutable_grad();
      if (!g.defined()) g = at::zeros_like(*params[i]);
      grads.push_back(g);
    }
    auto buckets = buckets_of(grads, bucket_bytes);
    std::vector<std::vector<at::Tensor>> flats;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (auto& b : buckets) {
      at::Tensor flat = flatten(b);
      if (scale != 1.0) flat.mul_(scale);
      flats.push_back({flat});
      c10d::AllreduceOptions opts;
      opts.reduceOp = c10d::ReduceOp::SUM;
      works.push_back(d->backend->allreduce(flats.back(), opts));
    }
    for (size_t i = 0; i < works.size(); ++i) {
      works[i]->wait();
      unflatten_into(flats[i][0], buckets[i]);
    }
    return 0;
  });
}

// ZeRO-2's gradient step: for each bucket, every parameter's `.grad` (zeros where a rank had
// no examples and so no backward), multiplied by `scale`, is reduce-scattered (summed over
// the ranks) into `outs[k]`, this rank's `shard` elements of the bucket, chunk by chunk
// (`chunks_of`); a bucket's whole gradients are released once its last chunk is copied out,
// so after the step each rank holds only its shard's.
int train_dist_reduce_scatter_grads(void* dist, at::Tensor** params, const int64_t* ends, size_t buckets,
                                    at::Tensor** outs, double scale, char** err) {
  return guarded(err, -1, [&]() -> int {
    auto* d = static_cast<Dist*>(dist);
    at::NoGradGuard no_grad;
    int64_t world = d->backend->getSize();
    auto spans = spans_of(params, ends, buckets, world);
    std::vector<std::vector<at::Tensor>> grads(buckets);
    int64_t first = 0;
    for (size_t k = 0; k < buckets; ++k) {
      if (outs[k]->numel() != spans[k].shard) throw std::runtime_error("a shard buffer of the wrong size");
      for (int64_t i = first; i < ends[k]; ++i) {
        at::Tensor g = params[i]->grad();
        grads[k].push_back(g.defined() ? g : at::zeros_like(*params[i]));
      }
      first = ends[k];
    }
    auto chunks = chunks_of(spans);
    std::vector<at::Tensor> ins(chunks.size());
    std::vector<c10::intrusive_ptr<c10d::Work>> works(chunks.size());
    for (size_t c = 0; c < chunks.size(); ++c) {
      auto [k, off, len] = chunks[c];
      // Rank r's part of the chunk is elements [r * shard + off, + len) of the bucket.
      ins[c] = at::empty({len * world}, spans[k].params.front().options());
      for (int64_t r = 0; r < world; ++r) {
        at::Tensor part = ins[c].narrow(0, r * len, len);
        copy_range_out(grads[k], r * spans[k].shard + off, part);
      }
      if (scale != 1.0) ins[c].mul_(scale);
      at::Tensor out = outs[k]->narrow(0, off, len);
      works[c] = d->backend->_reduce_scatter_base(out, ins[c], c10d::ReduceScatterOptions{});
      // The bucket's last chunk is copied out: its whole gradients go.
      if (c + 1 == chunks.size() || chunks[c + 1].bucket != k) {
        grads[k].clear();
        for (int64_t i = k == 0 ? 0 : ends[k - 1]; i < ends[k]; ++i) params[i]->mutable_grad().reset();
      }
      if (c >= 1) {
        works[c - 1]->wait();
        ins[c - 1] = at::Tensor();
      }
    }
    if (!chunks.empty()) works.back()->wait();
    return 0;
  });
}

// After each rank stepped its shard of every bucket (in place, in its parameters): the
// shards are all-gathered chunk by chunk, and every rank's parameters overwritten with them.
int train_dist_allgather_params(void* dist, at::Tensor** params, const int64_t* ends, size_t buckets, char** err) {
  return guarded(err, -1, [&]() -> int {
    auto* d = static_cast<Dist*>(dist);
    at::NoGradGuard no_grad;
    int64_t world = d->backend->getSize(), rank = d->backend->getRank();
    auto spans = spans_of(params, ends, buckets, world);
    auto chunks = chunks_of(spans);
    std::vector<at::Tensor> fulls(chunks.size());
    std::vector<c10::intrusive_ptr<c10d::Work>> works(chunks.size());
    // Copies chunk c's gathered elements into every rank's place in the parameters.
    auto land = [&](size_t c) {
      works[c]->wait();
      auto [k, off, len] = chunks[c];
      for (int64_t r = 0; r < world; ++r)
        copy_range_in(spans[k].params, r * spans[k].shard + off, fulls[c].narrow(0, r * len, len));
      fulls[c] = at::Tensor();
    };
    for (size_t c = 0; c < chunks.size(); ++c) {
      auto [k, off, len] = chunks[c];
      auto options = spans[k].params.front().options();
      at::Tensor mine = at::empty({len}, options);
      copy_range_out(spans[k].params, rank * spans[k].shard + off, mine);
      fulls[c] = at::empty({len * world}, options);
      works[c] = d->backend->_allgather_base(fulls[c], mine, c10d::AllgatherOptions{});
      if (c >= 1) land(c - 1);
    }
    if (!chunks.empty()) land(chunks.size() - 1);
    return 0;
  });
}

// Attaches DDP's Reducer to `params` (in the order the model defines them): buckets of at
// most `bucket_bytes` (the first 1 MiB, as DDP's default), in reverse order, as DDP
// assigns them to approximate the order backward produces gradients in. `find_unused`:
// DDP's find_unused_parameters.
int train_dist_reducer_attach(void* dist, at::Tensor** params, size_t n, int64_t bucket_bytes, int find_unused,
                              char** err) {
  return guarded(err, -1, [&]() -> int {
    auto* d = static_cast<Dist*>(dist);
    if (!d->group) {
      bool cuda = d->device_index >= 0;
      auto type = cuda ? c10d::ProcessGroup::BackendType::NCCL : c10d::ProcessGroup::BackendType::GLOO;
      d->group = c10::make_intrusive<c10d::ProcessGroup>(d->store, d->backend->getRank(), d->backend->getSize());
      d->group->setBackend(cuda ? c10::DeviceType::CUDA : c10::DeviceType::CPU, type, d->backend);
      d->group->setDefaultBackend(type);
    }
    std::vector<at::Tensor> ps;
    for (size_t i = 0; i < n; ++i) ps.push_back(*params[i]);
    std::vector<bool> sparse(n, false);
    auto first = static_cast<size_t>(c10d::kDefaultFirstBucketBytes);
    auto assigned = c10d::compute_bucket_assignment_by_size(ps, {first, static_cast<size_t>(bucket_bytes)}, sparse);
    auto buckets = std::get<0>(assigned);
    std::reverse(buckets.begin(), buckets.end());
    d->logger.reset();
    d->reducer.reset();
    d->reducer = std::make_shared<TrainReducer>(ps, buckets, d->group, sparse, bucket_bytes,
                                                /*find_unused_parameters=*/find_unused != 0,
                                                /*gradient_as_bucket_view=*/true,
                                                std::unordered_map<size_t, std::string>{}, static_cast<int64_t>(first),
                                                /*skip_all_reduce_unused_params=*/false,
                                                /*use_python_reducer=*/false, std::vector<int64_t>{});
    d->logger = std::make_shared<c10d::Logger>(d->reducer);
    d->reducer->set_logger(d->logger);
    return 0;
  });
}

// The next backward, of `output`, is the step's last: its gradients are all-reduced
// (averaged) as they are produced. `output` is searched for unused parameters when the
// Reducer was attached with `find_unused`.
int train_dist_reducer_prepare(void* dist, at::Tensor* output, char** err) {
  return guarded(err, -1, [&]() -> int {
    auto* d = static_cast<Dist*>(dist);
    if (!d->reducer) throw std::runtime_error("no Reducer attached");
    d->reducer->prepare_for_forward();
    d->reducer->prepare_for_backward({*output});
    return 0;
  });
}

// After the armed backward: `*finished` is 1 when every bucket was all-reduced and copied
// back, 0 when one still waits for a gradient.
int train_dist_reducer_finished(void* dist, int* finished, char** err) {
  return guarded(err, -1, [&]() -> int {
    auto* d = static_cast<Dist*>(dist);
    if (!d->reducer) throw std::runtime_error("no Reducer attached");
    *finished = d->reducer->finished() ? 1 : 0;
    return 0;
  });
}

// `reached[i]` = 1 when `params[i]`'s gradient accumulator is in `output`'s autograd graph
// (the search the Reducer makes with find_unused_parameters), else 0. The graph's edges
// outlive backward (only saved tensors are released), so this also answers afterwards.
int train_dist_reached(at::Tensor* output, at::Tensor** params, size_t n, uint8_t* reached, char** err) {
  return guarded(err, -1, [&]() -> int {
    std::unordered_set<torch::autograd::Node*> seen;
    std::vector<torch::autograd::Node*> todo;
    if (auto fn = output->grad_fn()) todo.push_back(fn.get());
    while (!todo.empty()) {
      auto* node = todo.back();
      todo.pop_back();
      if (!seen.insert(node).second) continue;
      for (const auto& edge : node->next_edges())
        if (edge.function) todo.push_back(edge.function.get());
    }
    for (size_t i = 0; i < n; ++i) {
      auto acc = torch::autograd::impl::try_get_grad_accumulator(*params[i]);
      reached[i] = acc && seen.count(acc.get()) ? 1 : 0;
    }
    return 0;
  });
}

// In-place all-reduce of one tensor: op 0 sum, 1 max.
int train_dist_allreduce(void* dist, at::Tensor* t, int op, char** err) {
  return guarded(err, -1, [&]() -> int {
    auto* d = static_cast<Dist*>(dist);
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> ts{*t};
    c10d::AllreduceOptions opts;
    opts.reduceOp = op == 1 ? c10d::ReduceOp::MAX : c10d::ReduceOp::SUM;
    d->backend->allreduce(ts, opts)->wait();
    return 0;
  });
}

// Starts an in-place sum of `t` over the ranks; `*work` is the handle that
// train_dist_work_wait waits on (and frees). Lets a small all-reduce run while the step's
// backward does.
int train_dist_allreduce_start(void* dist, at::Tensor* t, void** work, char** err) {
  return guarded(err, -1, [&]() -> int {
    auto* d = static_cast<Dist*>(dist);
    std::vector<at::Tensor> ts{*t};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    *work = new c10::intrusive_ptr<c10d::Work>(d->backend->allreduce(ts, opts));
    return 0;
  });
}

// Waits for a collective started above, and frees its handle (also on failure).
int train_dist_work_wait(void* work, char** err) {
  auto* w = static_cast<c10::intrusive_ptr<c10d::Work>*>(work);
  int rc = guarded(err, -1, [&]() -> int {
    (*w)->wait();
    return 0;
  });
  delete w;
  return rc;
}

// Drops the handle of a collective without waiting: the work keeps its own references to
// its tensors and completes, or fails, with the process group.
void train_dist_work_free(void* work) {
  try {
    delete static_cast<c10::intrusive_ptr<c10d::Work>*>(work);
  } catch (...) {
  }
}

// Rank 0's values of `tensors` copied into every rank's, in place.
int train_dist_broadcast(void* dist, at::Tensor** tensors, size_t n, char** err) {
  return guarded(err, -1, [&]() -> int {
    auto* d = static_cast<Dist*>(dist);
    at::NoGradGuard no_grad;
    std::vector<at::Tensor> ts;
    for (size_t i = 0; i < n; ++i) ts.push_back(*tensors[i]);
    for (auto& b : buckets_of(ts, int64_t{64} << 20)) {
      std::vector<at::Tensor> flat{flatten(b)};
      c10d::BroadcastOptions opts;
      opts.rootRank = 0;
      d->backend->broadcast(flat, opts)->wait();
      unflatten_into(flat[0], b);
    }
    return 0;
  });
}

int train_dist_barrier(void* dist, char** err) {
  return guarded(err, -1, [&]() -> int {
    auto* d = static_cast<Dist*>(dist);
    c10d::BarrierOptions opts;
    if (d->device_index >= 0) opts.device_ids = {d->device_index};
    d->backend->barrier(opts)->wait();
    return 0;
  });
}

// The store's key-value API, for small values every rank must agree on.
int train_dist_store_set(void* dist, const char* key, const uint8_t* value, size_t len, char** err) {
  return guarded(err, -1, [&]() -> int {
    auto* d = static_cast<Dist*>(dist);
    d->store->set(std::string(key), std::vector<uint8_t>(value, value + len));
    return 0;
  });
}

// `*found` = 1 when `key` is set, without waiting.
int train_dist_store_check(void* dist, const char* key, int* found, char** err) {
  return guarded(err, -1, [&]() -> int {
    auto* d = static_cast<Dist*>(dist);
    *found = d->store->check({std::string(key)}) ? 1 : 0;
    return 0;
  });
}

// Blocks until `key` is set (or the store's timeout). `*value` is malloc'ed: free it with
// train_dist_free_bytes.
int train_dist_store_get(void* dist, const char* key, uint8_t** value, size_t* len, char** err) {
  return guarded(err, -1, [&]() -> int {
    auto* d = static_cast<Dist*>(dist);
    auto v = d->store->get(std::string(key));
    *len = v.size();
    *value = static_cast<uint8_t*>(std::malloc(v.size() == 0 ? 1 : v.size()));
    if (*value == nullptr) throw std::bad_alloc();
    std::memcpy(*value, v.data(), v.size());
    return 0;
  });
}

void train_dist_free_bytes(uint8_t* value) { std::free(value); }

}  // extern "C"
