//! Safe wrappers over `shim/distributed.cpp`: one c10d process group (and its TCPStore)
//! and the collectives a data-parallel step uses. Every call returns the C++ message on
//! failure, typed ([`EngineError`]); nothing here decides what a failure means (see
//! `crate::distributed::Dist`).

use std::ffi::{c_char, c_void, CString};
use std::ptr::NonNull;

use tch::Tensor;

use crate::shim::{self, ShimError};

extern "C" {
    fn train_dist_init(
        host: *const c_char,
        port: i32,
        rank: i32,
        world: i32,
        is_server: i32,
        timeout_ms: i64,
        backend: i32,
        device_index: i32,
        prefix: *const c_char,
        out: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> i32;
    fn train_dist_free(dist: *mut c_void);
    fn train_dist_allreduce_grads(
        dist: *mut c_void,
        params: *const *mut torch_sys::C_tensor,
        n: usize,
        scale: f64,
        bucket_bytes: i64,
        err: *mut *mut c_char,
    ) -> i32;
    fn train_dist_reduce_scatter_grads(
        dist: *mut c_void,
        params: *const *mut torch_sys::C_tensor,
        ends: *const i64,
        buckets: usize,
        outs: *const *mut torch_sys::C_tensor,
        scale: f64,
        err: *mut *mut c_char,
    ) -> i32;
    fn train_dist_allgather_params(
        dist: *mut c_void,
        params: *const *mut torch_sys::C_tensor,
        ends: *const i64,
        buckets: usize,
        err: *mut *mut c_char,
    ) -> i32;
    fn train_dist_allreduce_start(
        dist: *mut c_void,
        t: *mut torch_sys::C_tensor,
        work: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> i32;
    fn train_dist_work_wait(work: *mut c_void, err: *mut *mut c_char) -> i32;
    fn train_dist_work_free(work: *mut c_void);
    fn train_dist_allreduce(dist: *mut c_void, t: *mut torch_sys::C_tensor, op: i32, err: *mut *mut c_char) -> i32;
    fn train_dist_broadcast(
        dist: *mut c_void,
        tensors: *const *mut torch_sys::C_tensor,
        n: usize,
        err: *mut *mut c_char,
    ) -> i32;
    fn train_dist_barrier(dist: *mut c_void, err: *mut *mut c_char) -> i32;
    fn train_dist_reducer_attach(
        dist: *mut c_void,
        params: *const *mut torch_sys::C_tensor,
        n: usize,
        bucket_bytes: i64,
        find_unused: i32,
        err: *mut *mut c_char,
    ) -> i32;
    fn train_dist_reducer_prepare(dist: *mut c_void, output: *mut torch_sys::C_tensor, err: *mut *mut c_char) -> i32;
    fn train_dist_reducer_finished(dist: *mut c_void, finished: *mut i32, err: *mut *mut c_char) -> i32;
    fn train_dist_reached(
        output: *mut torch_sys::C_tensor,
        params: *const *mut torch_sys::C_tensor,
        n: usize,
        reached: *mut u8,
        err: *mut *mut c_char,
    ) -> i32;
    fn train_dist_store_check(dist: *mut c_void, key: *const c_char, found: *mut i32, err: *mut *mut c_char) -> i32;
    fn train_dist_store_set(
        dist: *mut c_void,
        key: *const c_char,
        value: *const u8,
        len: usize,
        err: *mut *mut c_char,
    ) -> i32;
    fn train_dist_store_get(
        dist: *mut c_void,
        key: *const c_char,
        value: *mut *mut u8,
        len: *mut usize,
        err: *mut *mut c_char,
    ) -> i32;
    fn train_dist_free_bytes(value: *mut u8);
}

/// Why a call on the process group failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineError {
    /// c10d's (or libtorch's) message.
    #[error("{0}")]
    Shim(#[from] ShimError),
    /// A host name, key or prefix cannot be passed to C++.
    #[error("{0:?} contains a NUL byte")]
    Nul(String),
}

/// Why [`ProcessGroup::connect`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// The store: the address, the port (in use, unreachable) or peers not arriving in time.
    #[error("{0}")]
    Store(EngineError),
    /// NCCL was not compiled into this build.
    #[error("{0}")]
    NoNccl(ShimError),
    /// The process group.
    #[error("{0}")]
    Group(ShimError),
}

/// Which c10d backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// ProcessGroupGloo: CPU tensors.
    Gloo,
    /// ProcessGroupNCCL on a CUDA device.
    Nccl {
        /// The device's index.
        device: i32,
    },
}

/// Where to meet the other ranks.
pub struct Rendezvous<'a> {
    /// The store's host.
    pub host: &'a str,
    /// Its port.
    pub port: u16,
    /// This rank.
    pub rank: u32,
    /// The job's size.
    pub world: u32,
    /// Whether this process hosts the store.
    pub hosts_store: bool,
    /// The store's and the collectives' timeout.
    pub timeout: std::time::Duration,
    /// Namespace of this attempt's keys.
    pub prefix: &'a str,
}

/// A collective started and not yet waited for: [`Pending::wait`] it. Dropped unwaited
/// (a step abandoned by an error), the handle is freed without waiting: c10d's work holds
/// its own references to the tensor.
pub struct Pending {
    work: Option<NonNull<c_void>>,
    tensor: Tensor,
}

impl Pending {
    /// Waits for the collective; returns its tensor, reduced.
    pub fn wait(mut self) -> Result<Tensor, EngineError> {
        let work = self.work.take().expect("waited once");
        // SAFETY: the handle came from train_dist_allreduce_start and is freed by this call.
        shim::call(|err| unsafe { train_dist_work_wait(work.as_ptr(), err) })?;
        Ok(self.tensor.shallow_clone())
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(work) = self.work.take() {
            // SAFETY: the handle came from train_dist_allreduce_start and is freed once.
            unsafe { train_dist_work_free(work.as_ptr()) };
        }
    }
}

/// A c10d process group and its store.
pub struct ProcessGroup {
    ptr: NonNull<c_void>,
}

fn pointers(tensors: &[Tensor]) -> Vec<*mut torch_sys::C_tensor> {
    tensors.iter().map(Tensor::as_ptr).map(|p| p as *mut _).collect()
}

/// For each of `params`, whether `output`'s autograd graph reaches it (its gradient comes
/// from `output`'s backward). Also true after that backward: the graph's edges stay.
pub fn reached(output: &Tensor, params: &[Tensor]) -> Result<Vec<bool>, EngineError> {
    let ptrs = pointers(params);
    let mut reached = vec![0u8; params.len()];
    // SAFETY: live tensors for the call; `reached` has room for one byte per parameter.
    shim::call(|err| unsafe {
        train_dist_reached(output.as_ptr() as *mut _, ptrs.as_ptr(), ptrs.len(), reached.as_mut_ptr(), err)
    })?;
    Ok(reached.into_iter().map(|r| r != 0).collect())
}

fn cstring(s: &str) -> Result<CString, EngineError> {
    CString::new(s).map_err(|_| EngineError::Nul(s.to_string()))
}

impl ProcessGroup {
    /// Meets the other ranks and forms the group.
    pub fn connect(r: &Rendezvous<'_>, backend: Backend) -> Result<Self, ConnectError> {
        let host = cstring(r.host).map_err(ConnectError::Store)?;
        let prefix = cstring(r.prefix).map_err(ConnectError::Store)?;
        let (code, device) = match backend {
            Backend::Gloo => (0, -1),
            Backend::Nccl { device } => (1, device),
        };
        let mut out = std::ptr::null_mut();
        // SAFETY: valid C strings and out-pointers that outlive the call; the shim catches
        // every C++ exception.
        let result = shim::call(|err| unsafe {
            train_dist_init(
                host.as_ptr(),
                i32::from(r.port),
                r.rank as i32,
                r.world as i32,
                i32::from(r.hosts_store),
                r.timeout.as_millis().min(i64::MAX as u128) as i64,
                code,
                device,
                prefix.as_ptr(),
                &mut out,
                err,
            )
        });
        match (result, NonNull::new(out)) {
            (Ok(()), Some(ptr)) => Ok(Self { ptr }),
            (Err(e), _) if e.status == -2 => Err(ConnectError::Store(e.into())),
            (Err(e), _) if e.status == -3 => Err(ConnectError::NoNccl(e)),
            (Err(e), _) => Err(ConnectError::Group(e)),
            (Ok(()), None) => Err(ConnectError::Group(ShimError { status: 0, message: String::new() })),
        }
    }

    fn call(&self, f: impl FnOnce(*mut c_void, *mut *mut c_char) -> i32) -> Result<(), EngineError> {
        Ok(shim::call(|err| f(self.ptr.as_ptr(), err))?)
    }

    /// Multiplies every parameter's gradient by `scale` and sums it over the ranks, in
    /// buckets of at most `bucket_bytes`. A parameter without a gradient gets zeros.
    pub fn allreduce_grads(&self, params: &[Tensor], scale: f64, bucket_bytes: i64) -> Result<(), EngineError> {
        let ptrs = pointers(params);
        // SAFETY: the pointers are live `at::Tensor*` owned by `params` for the call.
        self.call(|d, e| unsafe { train_dist_allreduce_grads(d, ptrs.as_ptr(), ptrs.len(), scale, bucket_bytes, e) })
    }

    /// ZeRO-2's gradient step over `params` in buckets (bucket k is `params[ends[k-1] ..
    /// ends[k]]`): each bucket's gradients, scaled by `scale`, summed over the ranks into
    /// `outs[k]`, this rank's shard of the bucket; the whole gradients are released.
    pub fn reduce_scatter_grads(
        &self,
        params: &[Tensor],
        ends: &[i64],
        outs: &[Tensor],
        scale: f64,
    ) -> Result<(), EngineError> {
        assert_eq!(ends.len(), outs.len(), "one shard buffer per bucket");
        assert_eq!(ends.last().copied().unwrap_or(0), params.len() as i64, "the buckets cover the parameters");
        let ptrs = pointers(params);
        let outs = pointers(outs);
        // SAFETY: live tensors for the call; `ends` and `outs` have one entry per bucket.
        self.call(|d, e| unsafe {
            train_dist_reduce_scatter_grads(d, ptrs.as_ptr(), ends.as_ptr(), ends.len(), outs.as_ptr(), scale, e)
        })
    }

    /// Every rank's shard of each bucket of `params` (see [`Self::reduce_scatter_grads`])
    /// gathered into every rank's parameters.
    pub fn allgather_params(&self, params: &[Tensor], ends: &[i64]) -> Result<(), EngineError> {
        assert_eq!(ends.last().copied().unwrap_or(0), params.len() as i64, "the buckets cover the parameters");
        let ptrs = pointers(params);
        // SAFETY: live tensors for the call; `ends` has one entry per bucket.
        self.call(|d, e| unsafe { train_dist_allgather_params(d, ptrs.as_ptr(), ends.as_ptr(), ends.len(), e) })
    }

    /// Sums (`max == false`) or takes the maximum of `t` over the ranks, in place.
    pub fn allreduce(&self, t: &Tensor, max: bool) -> Result<(), EngineError> {
        // SAFETY: `t` is a live tensor for the call.
        self.call(|d, e| unsafe { train_dist_allreduce(d, t.as_ptr() as *mut _, i32::from(max), e) })
    }

    /// Starts summing `t` over the ranks, in place; wait on the result.
    pub fn allreduce_start(&self, t: Tensor) -> Result<Pending, EngineError> {
        let mut work = std::ptr::null_mut();
        // SAFETY: `t` is live for the call and kept by the returned `Pending` until waited.
        self.call(|d, e| unsafe { train_dist_allreduce_start(d, t.as_ptr() as *mut _, &mut work, e) })?;
        let work = NonNull::new(work).expect("the shim sets the handle on success");
        Ok(Pending { work: Some(work), tensor: t })
    }

    /// Copies rank 0's values of `tensors` into every rank's, in place.
    pub fn broadcast(&self, tensors: &[Tensor]) -> Result<(), EngineError> {
        let ptrs = pointers(tensors);
        // SAFETY: as in `allreduce_grads`.
        self.call(|d, e| unsafe { train_dist_broadcast(d, ptrs.as_ptr(), ptrs.len(), e) })
    }

    /// Attaches DDP's Reducer to `params` (the model's trainable parameters, in the same
    /// order on every rank), with buckets of at most `bucket_bytes`; `find_unused`: DDP's
    /// `find_unused_parameters`.
    pub fn attach_reducer(&self, params: &[Tensor], bucket_bytes: i64, find_unused: bool) -> Result<(), EngineError> {
        let ptrs = pointers(params);
        // SAFETY: as in `allreduce_grads`; the Reducer keeps its own references.
        self.call(|d, e| unsafe {
            train_dist_reducer_attach(d, ptrs.as_ptr(), ptrs.len(), bucket_bytes, i32::from(find_unused), e)
        })
    }

    /// Arms the Reducer: the next backward's, of `output`, gradients are averaged over the
    /// ranks as backward produces them.
    pub fn prepare_backward(&self, output: &Tensor) -> Result<(), EngineError> {
        // SAFETY: `output` is a live tensor for the call.
        self.call(|d, e| unsafe { train_dist_reducer_prepare(d, output.as_ptr() as *mut _, e) })
    }

    /// After the armed backward: whether the Reducer all-reduced every bucket (false: a
    /// parameter got no gradient, and its bucket never went out).
    pub fn reducer_finished(&self) -> Result<bool, EngineError> {
        let mut finished = 0;
        // SAFETY: an out-pointer valid for the call.
        self.call(|d, e| unsafe { train_dist_reducer_finished(d, &mut finished, e) })?;
        Ok(finished != 0)
    }

    /// Whether a key is set in the store, without waiting for it.
    pub fn check(&self, key: &str) -> Result<bool, EngineError> {
        let key = cstring(key)?;
        let mut found = 0;
        // SAFETY: valid key and out-pointer for the call.
        self.call(|d, e| unsafe { train_dist_store_check(d, key.as_ptr(), &mut found, e) })?;
        Ok(found != 0)
    }

    /// Waits until every rank got here.
    pub fn barrier(&self) -> Result<(), EngineError> {
        // SAFETY: no arguments besides the group.
        self.call(|d, e| unsafe { train_dist_barrier(d, e) })
    }

    /// Sets `key` in the store.
    pub fn set(&self, key: &str, value: &[u8]) -> Result<(), EngineError> {
        let key = cstring(key)?;
        // SAFETY: valid key and value for the call.
        self.call(|d, e| unsafe { train_dist_store_set(d, key.as_ptr(), value.as_ptr(), value.len(), e) })
    }

    /// `key`'s value, waiting for it to be set (up to the timeout).
    pub fn get(&self, key: &str) -> Result<Vec<u8>, EngineError> {
        let key = cstring(key)?;
        let mut value = std::ptr::null_mut();
        let mut len = 0;
        // SAFETY: out-pointers valid for the call.
        self.call(|d, e| unsafe { train_dist_store_get(d, key.as_ptr(), &mut value, &mut len, e) })?;
        // SAFETY: on success the shim malloc'ed `len` bytes at `value`; freed right after the copy.
        let bytes = unsafe { std::slice::from_raw_parts(value, len) }.to_vec();
        unsafe { train_dist_free_bytes(value) };
        Ok(bytes)
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: the pointer came from train_dist_init and is freed once.
        unsafe { train_dist_free(self.ptr.as_ptr()) }
    }
}
