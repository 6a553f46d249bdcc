//! A data set as training sees it: the splits, the task, and the shape of one input.

use super::split::Split;

/// The most classes a classification data set may have. The output layer has one row per
/// class, so a stray label such as 2^40 would otherwise ask for terabytes; the largest
/// label sets in use (ImageNet-21k: 21,841; extreme classification: a few million) stay
/// well below 2^24.
pub const MAX_CLASSES: i64 = 1 << 24;

/// What a model learns from a data set: the loss, the outputs and what "accuracy" means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Task {
    /// One class per example (cross-entropy; accuracy is the fraction of right classes).
    Classification {
        /// Number of classes.
        classes: i64,
    },
    /// The next byte at every position of a window (cross-entropy over the vocabulary;
    /// accuracy is per token).
    LanguageModel {
        /// Vocabulary size (256 for bytes).
        vocab: i64,
    },
    /// Real values (mean squared error; no accuracy).
    Regression {
        /// Values per example.
        outputs: i64,
    },
}

/// A training split, a validation split, the task and the shape of one input.
#[derive(Debug)]
pub struct Dataset {
    /// Examples the model learns from.
    pub train: Split,
    /// Held-out examples for the validation loss and accuracy.
    pub val: Split,
    /// What is learned.
    pub task: Task,
    /// Shape of one input (`[C, H, W]` for images, `[T]` for token windows).
    pub input_shape: Vec<i64>,
}

/// Bytes: the vocabulary of byte-level language models.
pub const BYTE_VOCAB: i64 = 256;
