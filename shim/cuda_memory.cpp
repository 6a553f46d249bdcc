// What tch does not bind of libtorch: the device caching allocator's statistics, emptying
// its cache, the device's free/total memory as the allocator sees it, and the CUDA
// autocast dtype.
//
// Only device-generic libtorch headers are used (c10::DeviceAllocator, at::autocast), so
// this compiles without CUDA's headers and works with whichever libtorch tch links; where
// no CUDA allocator is registered (no GPU, CPU-only libtorch) every call reports failure.
// Errors follow shim/error.h: a status, and the message in `err`.

#include <ATen/autocast_mode.h>
#include <c10/core/CachingDeviceAllocator.h>

#include <cstdint>
#include <stdexcept>

#include "error.h"

namespace {

// The CUDA allocator; with `initialized`, one that has allocated already (its statistics
// exist). Throws where there is none.
c10::DeviceAllocator* cuda_allocator(bool initialized) {
  auto* alloc = c10::getDeviceAllocator(c10::DeviceType::CUDA);
  if (alloc == nullptr) throw std::runtime_error("no CUDA allocator is registered (no GPU, or a CPU-only libtorch)");
  if (initialized && !alloc->initialized()) throw std::runtime_error("the CUDA allocator is not initialized");
  return alloc;
}

}  // namespace

extern "C" {

// Allocated, reserved and peak-allocated bytes on `device`.
int train_cuda_memory_stats(int device, int64_t* allocated, int64_t* reserved, int64_t* peak_allocated, char** err) {
  return train_shim::guarded(err, -1, [&]() -> int {
    auto stats = cuda_allocator(true)->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    // Index 0 of each StatArray aggregates all pools.
    *allocated = stats.allocated_bytes[0].current;
    *reserved = stats.reserved_bytes[0].current;
    *peak_allocated = stats.allocated_bytes[0].peak;
    return 0;
  });
}

// Resets the peak statistics of `device`.
int train_cuda_reset_peak(int device, char** err) {
  return train_shim::guarded(err, -1, [&]() -> int {
    cuda_allocator(true)->resetPeakStats(static_cast<c10::DeviceIndex>(device));
    return 0;
  });
}

// Returns cached, unused blocks to the driver (torch.cuda.empty_cache()).
int train_cuda_empty_cache(char** err) {
  return train_shim::guarded(err, -1, [&]() -> int {
    cuda_allocator(true)->emptyCache();
    return 0;
  });
}

// Free and total bytes of `device` (cudaMemGetInfo, through the allocator).
int train_cuda_mem_info(int device, int64_t* free_bytes, int64_t* total_bytes, char** err) {
  return train_shim::guarded(err, -1, [&]() -> int {
    auto info = cuda_allocator(false)->getMemoryInfo(static_cast<c10::DeviceIndex>(device));
    *free_bytes = static_cast<int64_t>(info.first);
    *total_bytes = static_cast<int64_t>(info.second);
    return 0;
  });
}

// Makes CUDA autocast compute in bfloat16 (libtorch's default is float16).
int train_cuda_autocast_bf16(char** err) {
  return train_shim::guarded(err, -1, [&]() -> int {
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    return 0;
  });
}

}  // extern "C"
