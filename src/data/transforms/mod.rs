//! Image augmentations, configured as `data.transforms.train` and `data.transforms.eval`,
//! named and parameterised as torchvision's `transforms.v2`: `RandomResizedCrop`,
//! `RandomHorizontalFlip`, `Resize`, `CenterCrop`, `Normalize` and `ColorJitter`.
//!
//! A [`Pipeline`] is built once from a list (checked: every parameter in range, the output
//! size `data.image_size`) and applied to one decoded image at a time, giving float32
//! `[C, H, W]`. Nothing here knows tensors, files or the order of examples.
//!
//! # The image between transforms
//! An image is converted to `data.channels` as the loader converts it (`into_rgb8`,
//! `into_luma8`) and stays bytes through the geometric transforms, resized as torchvision
//! resizes `uint8` tensors (bilinear, antialiased, rounded back to bytes). The first
//! `ColorJitter` turns it into floats in [0, 1] (bytes / 255), as torchvision's
//! `ToDtype(float32, scale=True)` before it would; geometry after that resamples floats.
//! The end result is floats in [0, 1], or what `Normalize` (which must come last) makes
//! of them. Without a transform that sets the size, an image is resized to
//! `data.image_size` first, so an empty list gives exactly the pixels the loader always
//! gave.
//!
//! # Random draws: the scheme
//! The draws of example `index` (its index in its split) in epoch `epoch` of a run seeded
//! `seed` come from ChaCha8 keyed with the 32 bytes `seed` (u64, little-endian), `epoch`
//! (u32, LE), `index` (u64, LE) and `b"train:augm:1"`, stream 0, from its first word: no
//! state to save, the same after a resume or on another rank or worker, and different for
//! every epoch and example. Every draw takes one 64-bit word: a number in [0, 1) is its top
//! 53 bits / 2^53, a whole number in `0..n` is `(word * n) >> 64`, a uniform number in
//! `[a, b)` is `a + (b - a) * u`. The transforms draw in list order, each as
//! torchvision's `make_params` does: `RandomResizedCrop` per try an area share then a log
//! ratio, and for the try that fits its top then its left; `RandomHorizontalFlip` one
//! number (flip when below `p`); `ColorJitter` a Fisher-Yates order of its three
//! adjustments (two words), then a factor for each that can change anything (brightness,
//! contrast, saturation). The values differ from torchvision's own generator; the
//! algorithms and the distributions are its.

mod config;
mod draws;
mod error;
pub mod functional;
mod params;
mod pipeline;

pub use config::{
    CenterCrop, ColorJitter, Jitter, Normalize, OneOrPair, RandomHorizontalFlip, RandomResizedCrop, Resize, Size,
    Transform, TransformsConfig,
};
pub use draws::Draws;
pub use error::TransformError;
pub use pipeline::{Pipeline, MAX_SIDE};
