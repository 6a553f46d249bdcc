//! Why a list of transforms cannot be used, or an image cannot go through it; each error
//! names the transform at fault by its name and its index in the list (from 0, as the
//! configuration's keys count: `data.transforms.train.0`).

use super::functional::MAX_PIXELS;

/// A list of transforms that cannot work, or an image it cannot take.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TransformError {
    /// A transform's parameters are out of range, or it stands where it cannot work.
    #[error("{name} at index {index}: {reason}")]
    Invalid {
        /// Its place in the list, from 0.
        index: usize,
        /// Its name (`RandomResizedCrop`).
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The list ends with images whose size depends on each image.
    #[error(
        "{name} at index {index} sets only the smaller edge, so images come out in sizes that follow their aspect \
         ratios: end the list with CenterCrop or RandomResizedCrop, or give {name} a [height, width], so that every \
         image comes out data.image_size {image_size:?}"
    )]
    VaryingSize {
        /// The last transform that sets the size.
        index: usize,
        /// Its name.
        name: &'static str,
        /// `data.image_size`.
        image_size: [u32; 2],
    },
    /// The list ends with images of another size than the model takes.
    #[error(
        "{name} at index {index} makes images {size:?} (height, width), but data.image_size is {image_size:?}: make \
         the last size {image_size:?} or set data.image_size to {size:?}"
    )]
    WrongSize {
        /// The last transform that sets the size.
        index: usize,
        /// Its name.
        name: &'static str,
        /// `[height, width]` it makes.
        size: [u32; 2],
        /// `data.image_size`.
        image_size: [u32; 2],
    },
    /// A channel count other than 1 or 3.
    #[error("images of {0} channels cannot be transformed: 1 (grayscale) or 3 (RGB)")]
    Channels(u32),
    /// An image without pixels.
    #[error("the image is empty ({width}x{height})")]
    Empty {
        /// Its width.
        width: u32,
        /// Its height.
        height: u32,
    },
    /// A resize that keeps the aspect ratio would make this image too large.
    #[error("{name} at index {index} would make this image {width}x{height}, more than {MAX_PIXELS} pixels; give it a max_size")]
    TooLarge {
        /// Its place in the list, from 0.
        index: usize,
        /// Its name.
        name: &'static str,
        /// The width it would make.
        width: u64,
        /// The height it would make.
        height: u64,
    },
}
