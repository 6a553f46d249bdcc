//! A TorchScript module through `shim/script_module.cpp`: its parameters and buffers by
//! PyTorch's dotted names, its train/eval mode, and `forward` with positional or named inputs
//! under the output contract the shim documents (a tensor; a tuple, logits first or `(loss,
//! logits)` when labels are passed; a dict with `logits` and maybe `loss`).
//!
//! tch's `CModule` binds parameters only, so a module's BatchNorm running statistics could
//! not be checkpointed; and it takes positional tensors only.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::path::Path;
use std::ptr::NonNull;

use tch::{Device, Tensor};

use crate::shim::{self, ShimError};

type NamedTensorFn = unsafe extern "C" fn(ctx: *mut c_void, name: *const c_char, tensor: *mut torch_sys::C_tensor);

extern "C" {
    fn train_script_load(path: *const c_char, device: c_int, out: *mut *mut c_void, err: *mut *mut c_char) -> c_int;
    fn train_script_free(module: *mut c_void);
    fn train_script_named_tensors(
        module: *mut c_void,
        buffers: c_int,
        ctx: *mut c_void,
        f: NamedTensorFn,
        err: *mut *mut c_char,
    ) -> c_int;
    fn train_script_set_training(module: *mut c_void, on: c_int, err: *mut *mut c_char) -> c_int;
    fn train_script_forward(
        module: *mut c_void,
        inputs: *const *mut torch_sys::C_tensor,
        names: *const *const c_char,
        n: c_int,
        with_labels: c_int,
        logits: *mut *mut torch_sys::C_tensor,
        loss: *mut *mut torch_sys::C_tensor,
        err: *mut *mut c_char,
    ) -> c_int;
}

/// libtorch's message for a failed shim call, on one line: for a TorchScript traceback its
/// final `...Error: ...` line, else its first line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ScriptError(pub String);

impl From<ShimError> for ScriptError {
    fn from(e: ShimError) -> Self {
        // An empty message becomes "libtorch gave no message".
        Self(crate::fault::one_line(&e.message))
    }
}

/// One input of a forward call: by position (`name: None`) or by keyword.
#[derive(Debug)]
pub struct Input<'a> {
    /// The keyword, or `None` for a positional input (positional inputs come first).
    pub name: Option<&'a str>,
    /// The tensor.
    pub tensor: &'a Tensor,
}

/// What a forward call returned, unpacked by the contract.
#[derive(Debug)]
pub struct Output {
    /// The logits (or regression outputs).
    pub logits: Tensor,
    /// The module's own loss, when it returned one.
    pub loss: Option<Tensor>,
}

/// A loaded TorchScript module.
#[derive(Debug)]
pub struct ScriptModule {
    raw: NonNull<c_void>,
}

// SAFETY: a torch::jit::Module is a reference-counted handle with no thread affinity; `train`
// holds it behind a Mutex and calls it from one thread at a time.
unsafe impl Send for ScriptModule {}

impl Drop for ScriptModule {
    fn drop(&mut self) {
        // SAFETY: `raw` came from train_script_load and is freed once.
        unsafe { train_script_free(self.raw.as_ptr()) }
    }
}

unsafe extern "C" fn collect(ctx: *mut c_void, name: *const c_char, tensor: *mut torch_sys::C_tensor) {
    // SAFETY: `ctx` is the Vec passed by `named`, alive for the call; the shim passes a
    // NUL-terminated name and a new at::Tensor this side now owns.
    let out = unsafe { &mut *(ctx as *mut Vec<(String, Tensor)>) };
    let name = unsafe { CStr::from_ptr(name) }.to_string_lossy().into_owned();
    out.push((name, unsafe { Tensor::from_ptr(tensor) }));
}

impl ScriptModule {
    /// Loads the archive at `path` onto `device`.
    pub fn load(path: &Path, device: Device) -> Result<Self, ScriptError> {
        let c_path = CString::new(path.as_os_str().as_encoded_bytes())
            .map_err(|_| ScriptError("the path holds a NUL byte".into()))?;
        let device = match device {
            Device::Cuda(i) => i as c_int,
            _ => -1,
        };
        let mut raw = std::ptr::null_mut();
        // SAFETY: valid C string and out-pointer; on success the shim sets an owned module.
        shim::call(|err| unsafe { train_script_load(c_path.as_ptr(), device, &mut raw, err) })?;
        NonNull::new(raw).map(|raw| Self { raw }).ok_or_else(|| ScriptError("the shim returned no module".into()))
    }

    fn named(&self, buffers: bool) -> Result<Vec<(String, Tensor)>, ScriptError> {
        let mut out: Vec<(String, Tensor)> = Vec::new();
        let ctx = &mut out as *mut Vec<(String, Tensor)> as *mut c_void;
        // SAFETY: `collect` matches NamedTensorFn and `ctx` outlives the call.
        shim::call(|err| unsafe {
            train_script_named_tensors(self.raw.as_ptr(), c_int::from(buffers), ctx, collect, err)
        })?;
        Ok(out)
    }

    /// The parameters by dotted name, sharing storage with the module.
    pub fn named_parameters(&self) -> Result<Vec<(String, Tensor)>, ScriptError> {
        self.named(false)
    }

    /// The buffers (BatchNorm's running statistics and the like) by dotted name, sharing
    /// storage with the module. TorchScript keeps no record of which were non-persistent in
    /// Python, so all are listed.
    pub fn named_buffers(&self) -> Result<Vec<(String, Tensor)>, ScriptError> {
        self.named(true)
    }

    /// Puts the module (and its submodules) in train or eval mode.
    pub fn set_training(&mut self, on: bool) -> Result<(), ScriptError> {
        // SAFETY: live module.
        Ok(shim::call(|err| unsafe { train_script_set_training(self.raw.as_ptr(), c_int::from(on), err) })?)
    }

    /// Runs `forward`; `with_labels` says one of the inputs is the labels, which lets a
    /// tuple's first element be the module's loss.
    pub fn forward(&self, inputs: &[Input<'_>], with_labels: bool) -> Result<Output, ScriptError> {
        let names: Vec<Option<CString>> = inputs
            .iter()
            .map(|i| i.name.map(CString::new).transpose())
            .collect::<Result<_, _>>()
            .map_err(|_| ScriptError("an input name holds a NUL byte".into()))?;
        let name_ptrs: Vec<*const c_char> =
            names.iter().map(|n| n.as_ref().map_or(std::ptr::null(), |n| n.as_ptr())).collect();
        let tensor_ptrs: Vec<*mut torch_sys::C_tensor> =
            inputs.iter().map(|i| i.tensor.as_ptr() as *mut torch_sys::C_tensor).collect();
        let (mut logits, mut loss) = (std::ptr::null_mut(), std::ptr::null_mut());
        let n = c_int::try_from(inputs.len()).map_err(|_| ScriptError("too many inputs".into()))?;
        // SAFETY: the pointer arrays hold `n` entries and outlive the call; the shim only
        // reads the input tensors and returns new owned tensors in `logits`/`loss`.
        shim::call(|err| unsafe {
            train_script_forward(
                self.raw.as_ptr(),
                tensor_ptrs.as_ptr(),
                name_ptrs.as_ptr(),
                n,
                c_int::from(with_labels),
                &mut logits,
                &mut loss,
                err,
            )
        })?;
        // SAFETY: on success the shim set `logits` (non-null) and maybe `loss`, both owned here.
        let logits = unsafe { Tensor::from_ptr(logits) };
        let loss = NonNull::new(loss).map(|p| unsafe { Tensor::from_ptr(p.as_ptr()) });
        Ok(Output { logits, loss })
    }
}
