//! `data.kind: tokens`: a flat file of little-endian `uint16` or `uint32` tokens, as nanoGPT's
//! `prepare.py` and Megatron's `.bin` files hold a tokenised corpus, modelled as `text` is:
//! non-overlapping windows of `model.gpt.context` tokens, each with its targets shifted by
//! one, the last `data.val_fraction` of them held out.
//!
//! The file is never read whole and never mapped. Each window is read with a positioned read
//! (`pread`) straight from the page cache into its batch, so this process's resident memory
//! holds the batches in flight and not the corpus: pages of a mapping that a process has
//! touched count in its RSS (what users and schedulers see), pages it has only read do not.
//! The vocabulary is `model.gpt.vocab` when set (every window read is checked against it),
//! else the largest token + 1, found by one scan at start.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tch::Kind;

use super::config::{DataConfig, TokenDtype};
use super::dataset::{Dataset, Task};
use super::error::DataError;
use super::examples::{ExampleError, Examples, Layout, Pass};
use super::source::{read_error, required_path, val_count};
use super::split::Split;

/// A token file as windows of `context` tokens.
#[derive(Debug)]
struct Windows {
    path: PathBuf,
    file: File,
    dtype: TokenDtype,
    context: usize,
    windows: usize,
    vocab: u64,
    layout: Layout,
}

impl Examples for Windows {
    fn len(&self) -> usize {
        self.windows
    }

    fn layout(&self) -> &Layout {
        &self.layout
    }

    fn read(&self, i: usize, _: Pass, out: &mut [&mut [u8]]) -> Result<(), ExampleError> {
        let width = self.dtype.bytes();
        let mut raw = vec![0u8; (self.context + 1) * width];
        let at = (i * self.context * width) as u64;
        let fail = |reason: String| ExampleError { path: self.path.clone(), index: i, reason };
        self.file.read_exact_at(&mut raw, at).map_err(|e| fail(format!("reading tokens at byte {at}: {e}")))?;
        let mut tokens = Vec::with_capacity(self.context + 1);
        for (k, t) in raw.chunks_exact(width).enumerate() {
            let token = token_at(t, self.dtype);
            if token >= self.vocab {
                return Err(fail(format!(
                    "token {token} at byte {} is outside the vocabulary of {} (model.gpt.vocab)",
                    at + (k * width) as u64,
                    self.vocab
                )));
            }
            tokens.push(token as i64);
        }
        let [inputs, targets] = out else { unreachable!("one input and the target") };
        write_i64(inputs, &tokens[..self.context]);
        write_i64(targets, &tokens[1..]);
        Ok(())
    }
}

fn token_at(bytes: &[u8], dtype: TokenDtype) -> u64 {
    match dtype {
        TokenDtype::Uint16 => u64::from(u16::from_le_bytes([bytes[0], bytes[1]])),
        TokenDtype::Uint32 => u64::from(u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]])),
    }
}

fn write_i64(out: &mut [u8], values: &[i64]) {
    for (dst, v) in out.chunks_exact_mut(8).zip(values) {
        dst.copy_from_slice(&v.to_le_bytes());
    }
}

/// Bytes read at a time by the vocabulary scan: large enough to stream at disk speed, small
/// enough to leave no trace in the process's memory.
const SCAN_BYTES: usize = 8 << 20;

/// The largest token in `file` (of `tokens` tokens), read front to back in pieces.
fn largest_token(path: &Path, dtype: TokenDtype) -> Result<u64, DataError> {
    let mut file = File::open(path).map_err(|e| read_error("data.path", path, e))?;
    let width = dtype.bytes();
    let mut buf = vec![0u8; SCAN_BYTES];
    let mut largest = 0;
    loop {
        let mut filled = 0;
        while filled < buf.len() {
            match file.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(DataError::Io { path: path.to_path_buf(), source: e }),
            }
        }
        largest =
            buf[..filled - filled % width].chunks_exact(width).map(|t| token_at(t, dtype)).fold(largest, u64::max);
        if filled < buf.len() {
            return Ok(largest);
        }
    }
}

/// Opens the token file `data.path` as windows of `context` tokens (see the module docs);
/// `vocab` is `model.gpt.vocab`.
pub(super) fn load(cfg: &DataConfig, context: usize, vocab: Option<u32>) -> Result<Dataset, DataError> {
    let path = required_path(cfg)?;
    if context == 0 {
        return Err(DataError::Config("model.gpt.context must be at least 1".into()));
    }
    let file = File::open(path).map_err(|e| read_error("data.path", path, e))?;
    let len = file.metadata().map_err(|e| read_error("data.path", path, e))?.len();
    let width = cfg.dtype.bytes() as u64;
    if len % width != 0 {
        return Err(DataError::Format {
            path: path.to_path_buf(),
            reason: format!(
                "{len} bytes is not a whole number of {width}-byte tokens (data.dtype {}): is it a {} file?",
                name(cfg.dtype),
                name(if cfg.dtype == TokenDtype::Uint16 { TokenDtype::Uint32 } else { TokenDtype::Uint16 })
            ),
        });
    }
    let tokens = (len / width) as usize;
    let windows = tokens.saturating_sub(1) / context;
    let val = val_count(windows, cfg.val_fraction, path)?;
    let vocab = match vocab {
        Some(v) => u64::from(v),
        None => {
            let start = Instant::now();
            let v = largest_token(path, cfg.dtype)? + 1;
            tracing::info!(
                path = %path.display(),
                tokens,
                vocab = v,
                seconds = format_args!("{:.2}", start.elapsed().as_secs_f64()),
                "token vocabulary: the largest token + 1 (set model.gpt.vocab to fix it)"
            );
            v
        }
    };
    if vocab > i64::MAX as u64 {
        return Err(DataError::Config(format!("a vocabulary of {vocab} tokens is too large")));
    }
    let window = vec![context as i64];
    let layout = Layout { inputs: vec![(window.clone(), Kind::Int64)], target: (window, Kind::Int64) };
    let all = Split::streamed(Arc::new(Windows {
        path: path.to_path_buf(),
        file,
        dtype: cfg.dtype,
        context,
        windows,
        vocab,
        layout,
    }));
    let train = windows - val;
    Ok(Dataset {
        train: all.rows(0, train as i64),
        val: all.rows(train as i64, val as i64),
        task: Task::LanguageModel { vocab: vocab as i64 },
        input_shape: vec![context as i64],
    })
}

fn name(dtype: TokenDtype) -> &'static str {
    match dtype {
        TokenDtype::Uint16 => "uint16",
        TokenDtype::Uint32 => "uint32",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::examples::Pass;
    use tch::{Device, Tensor};

    fn written(tokens: &[u32], dtype: TokenDtype) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        let bytes: Vec<u8> = match dtype {
            TokenDtype::Uint16 => tokens.iter().flat_map(|&t| (t as u16).to_le_bytes()).collect(),
            TokenDtype::Uint32 => tokens.iter().flat_map(|&t| t.to_le_bytes()).collect(),
        };
        std::fs::write(f.path(), bytes).unwrap();
        f
    }

    fn cfg(path: &Path, dtype: TokenDtype) -> DataConfig {
        DataConfig { path: Some(path.to_path_buf()), dtype, val_fraction: 0.25, ..DataConfig::default() }
    }

    #[test]
    fn windows_match_the_text_kinds_and_the_vocabulary_is_scanned() {
        for dtype in [TokenDtype::Uint16, TokenDtype::Uint32] {
            let tokens: Vec<u32> = (0..33).map(|i| (i * 7) % 50).collect();
            let f = written(&tokens, dtype);
            let ds = load(&cfg(f.path(), dtype), 4, None).unwrap();
            // 33 tokens: 8 windows of 4 (the last target is token 32); 2 held out.
            assert_eq!((ds.train.len(), ds.val.len()), (6, 2));
            assert_eq!(ds.task, Task::LanguageModel { vocab: 50 });
            let (x, y) = ds.train.with_workers(3).batch(&[5, 0, 5], Pass::default(), Device::Cpu).unwrap();
            let expect = |w: i64, shift: i64| {
                let v: Vec<i64> = (0..4).map(|k| tokens[(w * 4 + k + shift) as usize] as i64).collect();
                Tensor::from_slice(&v)
            };
            assert!(x[0].get(0).equal(&expect(5, 0)) && x[0].get(1).equal(&expect(0, 0)));
            assert!(y.get(0).equal(&expect(5, 1)) && y.get(2).equal(&expect(5, 1)));
            let (xv, _) = ds.val.batch(&[1], Pass::default(), Device::Cpu).unwrap();
            assert!(xv[0].get(0).equal(&expect(7, 0)), "the last window is the val split's last");
        }
    }

    #[test]
    fn tokens_outside_a_set_vocabulary_name_the_file_window_and_byte() {
        let f = written(&[1, 2, 3, 99, 4, 5, 6, 7, 8], TokenDtype::Uint16);
        let ds = load(&cfg(f.path(), TokenDtype::Uint16), 2, Some(10)).unwrap();
        let err = ds.train.batch(&[0, 1], Pass::default(), Device::Cpu).unwrap_err().to_string();
        assert!(err.contains("example 1") && err.contains("token 99 at byte 6"), "{err}");
        assert!(err.contains(&f.path().display().to_string()), "{err}");
    }

    #[test]
    fn a_file_of_the_wrong_width_or_too_short_is_refused() {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), [1u8, 0, 2]).unwrap();
        let err = load(&cfg(f.path(), TokenDtype::Uint16), 2, None).unwrap_err().to_string();
        assert!(err.contains("not a whole number of 2-byte tokens"), "{err}");
        let short = written(&[1, 2, 3], TokenDtype::Uint32);
        let err = load(&cfg(short.path(), TokenDtype::Uint32), 4, None).unwrap_err().to_string();
        assert!(err.contains("too few"), "{err}");
    }
}
