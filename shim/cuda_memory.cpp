// What tch does not bind of libtorch: the device caching allocator's statistics, emptying
// its cache, the device's free/total memory as the allocator sees it, and the CUDA
// autocast dtype.
//
// Only device-generic libtorch headers are used (c10::DeviceAllocator, at::autocast), so
// this compiles without CUDA's headers and works with whichever libtorch tch links; where
// no CUDA allocator is registered (no GPU, CPU-only libtorch) every call reports failure.
// Every function catches C++ exceptions: none may cross into Rust.

#include <ATen/autocast_mode.h>
#include <c10/core/CachingDeviceAllocator.h>

#include <cstdint>

namespace {
c10::DeviceAllocator* cuda_allocator() {
  return c10::getDeviceAllocator(c10::DeviceType::CUDA);
}
}  // namespace

extern "C" {

// Allocated, reserved and peak-allocated bytes on `device`. 0 on success, -1 otherwise.
int train_cuda_memory_stats(int device, int64_t* allocated, int64_t* reserved, int64_t* peak_allocated) {
  try {
    auto* alloc = cuda_allocator();
    if (alloc == nullptr || !alloc->initialized()) return -1;
    auto stats = alloc->getDeviceStats(static_cast<c10::DeviceIndex>(device));
    // Index 0 of each StatArray aggregates all pools.
    *allocated = stats.allocated_bytes[0].current;
    *reserved = stats.reserved_bytes[0].current;
    *peak_allocated = stats.allocated_bytes[0].peak;
    return 0;
  } catch (...) {
    return -1;
  }
}

// Resets the peak statistics of `device`. 0 on success, -1 otherwise.
int train_cuda_reset_peak(int device) {
  try {
    auto* alloc = cuda_allocator();
    if (alloc == nullptr || !alloc->initialized()) return -1;
    alloc->resetPeakStats(static_cast<c10::DeviceIndex>(device));
    return 0;
  } catch (...) {
    return -1;
  }
}

// Returns cached, unused blocks to the driver (torch.cuda.empty_cache()).
int train_cuda_empty_cache() {
  try {
    auto* alloc = cuda_allocator();
    if (alloc == nullptr || !alloc->initialized()) return -1;
    alloc->emptyCache();
    return 0;
  } catch (...) {
    return -1;
  }
}

// Free and total bytes of `device` (cudaMemGetInfo, through the allocator).
int train_cuda_mem_info(int device, int64_t* free_bytes, int64_t* total_bytes) {
  try {
    auto* alloc = cuda_allocator();
    if (alloc == nullptr) return -1;
    auto info = alloc->getMemoryInfo(static_cast<c10::DeviceIndex>(device));
    *free_bytes = static_cast<int64_t>(info.first);
    *total_bytes = static_cast<int64_t>(info.second);
    return 0;
  } catch (...) {
    return -1;
  }
}

// Makes CUDA autocast compute in bfloat16 (libtorch's default is float16).
int train_cuda_autocast_bf16() {
  try {
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    return 0;
  } catch (...) {
    return -1;
  }
}

}  // extern "C"
