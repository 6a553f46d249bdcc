//! Compares the format with zstd level 3 on the same bytes: size, compression and
//! decompression throughput, and the disk speed below which reading the compressed file and
//! decompressing it beats reading the raw bytes.
//!
//! ```text
//! cargo run -p tckpt --release --example bench_codec -- FILE.safetensors...
//! ```
//!
//! Inputs are safetensors checkpoints as `train` writes them. Their F32 tensors are grouped
//! into model weights (names not under `optimizer/`) and Adam moments
//! (`optimizer/<param>/exp_avg` and `exp_avg_sq`); each group is measured as stored (fp32)
//! and converted to bf16 (round to nearest even). Times are the best of `RUNS` runs.

mod common;

use std::collections::BTreeMap;
use std::io::Cursor;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use safetensors::{Dtype as StDtype, SafeTensors};
use tckpt::{Dtype, Reader, Writer, WriterOptions};

use common::best;

const RUNS: usize = 5;

struct Tensor {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn main() -> Result<()> {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    if paths.is_empty() {
        bail!("usage: bench_codec FILE.safetensors...");
    }
    let mut weights = Vec::new();
    let mut moments = Vec::new();
    for (f, path) in paths.iter().enumerate() {
        let bytes = std::fs::read(path).with_context(|| format!("reading {path}"))?;
        let st = SafeTensors::deserialize(&bytes).with_context(|| format!("parsing {path}"))?;
        for (name, view) in st.tensors() {
            if view.dtype() != StDtype::F32 {
                continue;
            }
            let group = if !name.starts_with("optimizer/") {
                &mut weights
            } else if name.ends_with("/exp_avg") || name.ends_with("/exp_avg_sq") {
                &mut moments
            } else {
                continue;
            };
            group.push(Tensor {
                name: format!("{f}/{name}"),
                dtype: Dtype::F32,
                shape: view.shape().to_vec(),
                data: view.data().to_vec(),
            });
        }
    }
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "inputs: {}; {threads} threads for ours and zstd-3 mt; best of {RUNS} runs; MB = 10^6 bytes",
        paths.join(", ")
    );
    println!();
    println!("| data | dtype | raw MB | ours ratio | zstd-3 ratio | zstd-3 mt ratio | ours compress MB/s | ours 1-thread compress MB/s | zstd-3 compress MB/s | zstd-3 mt compress MB/s | ours decompress MB/s | ours 1-thread decompress MB/s | zstd-3 decompress MB/s | ours break-even disk MB/s | zstd-3 break-even disk MB/s |");
    println!("|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|--:|");
    for (label, group) in [("weights", &weights), ("Adam moments", &moments)] {
        if group.is_empty() {
            continue;
        }
        let bf16: Vec<Tensor> = group.iter().map(to_bf16).collect();
        for (dtype, tensors) in [("fp32", group.as_slice()), ("bf16", bf16.as_slice())] {
            let row = measure(tensors, threads)?;
            println!(
                "| {label} | {dtype} | {:.1} | {:.3} | {:.3} | {:.3} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
                row.raw as f64 / 1e6,
                row.ours.ratio(row.raw),
                row.zstd.ratio(row.raw),
                row.zstd_mt.ratio(row.raw),
                mbps(row.raw, row.ours.compress),
                mbps(row.raw, row.ours_1t.compress),
                mbps(row.raw, row.zstd.compress),
                mbps(row.raw, row.zstd_mt.compress),
                mbps(row.raw, row.ours.decompress),
                mbps(row.raw, row.ours_1t.decompress),
                mbps(row.raw, row.zstd.decompress),
                row.ours.break_even(row.raw),
                row.zstd.break_even(row.raw),
            );
        }
    }
    println!();
    println!("break-even disk: reading the compressed bytes and then decompressing is faster than reading the raw bytes from any disk slower than this (decompress MB/s x (1 - 1/ratio), no overlap of read and decompression assumed).");
    Ok(())
}

struct Codec {
    stored: usize,
    compress: Duration,
    decompress: Duration,
}

impl Codec {
    fn ratio(&self, raw: usize) -> f64 {
        raw as f64 / self.stored as f64
    }

    fn break_even(&self, raw: usize) -> f64 {
        mbps(raw, self.decompress) * (1.0 - 1.0 / self.ratio(raw))
    }
}

struct Row {
    raw: usize,
    ours: Codec,
    ours_1t: Codec,
    zstd: Codec,
    zstd_mt: Codec,
}

fn measure(tensors: &[Tensor], threads: usize) -> Result<Row> {
    let raw: usize = tensors.iter().map(|t| t.data.len()).sum();

    let ours = measure_ours(tensors, threads)?;
    let ours_1t = measure_ours(tensors, 1)?;

    let all: Vec<u8> = tensors.iter().flat_map(|t| t.data.iter().copied()).collect();
    let zstd_once = |frame: &Vec<u8>, compress| -> Result<Codec> {
        let (back, decompress) = best(RUNS, || Ok(zstd::bulk::decompress(frame, all.len())?))?;
        if back != all {
            bail!("zstd does not round-trip");
        }
        Ok(Codec { stored: frame.len(), compress, decompress })
    };
    let (frame, time) = best(RUNS, || Ok(zstd::bulk::compress(&all, 3)?))?;
    let zstd = zstd_once(&frame, time)?;
    let (frame, time) = best(RUNS, || {
        let mut c = zstd::bulk::Compressor::new(3)?;
        c.set_parameter(zstd::zstd_safe::CParameter::NbWorkers(threads as u32))?;
        Ok(c.compress(&all)?)
    })?;
    let zstd_mt = zstd_once(&frame, time)?;
    Ok(Row { raw, ours, ours_1t, zstd, zstd_mt })
}

/// Writes and reads the tensors with `threads` threads, checking the round trip.
fn measure_ours(tensors: &[Tensor], threads: usize) -> Result<Codec> {
    let raw: usize = tensors.iter().map(|t| t.data.len()).sum();
    let options = WriterOptions { threads, ..WriterOptions::default() };
    let (file, compress) = best(RUNS, || {
        let mut w = Writer::with_options(Vec::with_capacity(raw), options.clone())?;
        for t in tensors {
            w.add_tensor(&t.name, t.dtype, &t.shape, &t.data)?;
        }
        Ok(w.finish(BTreeMap::new())?)
    })?;
    let (_, decompress) = best(RUNS, || {
        let mut r = Reader::with_threads(Cursor::new(&file), threads)?;
        for t in tensors {
            std::hint::black_box(r.read_tensor(&t.name)?);
        }
        Ok(())
    })?;
    let mut r = Reader::new(Cursor::new(&file))?;
    for t in tensors {
        if r.read_tensor(&t.name)? != t.data {
            bail!("{} does not round-trip", t.name);
        }
    }
    Ok(Codec { stored: file.len(), compress, decompress })
}

fn mbps(bytes: usize, time: Duration) -> f64 {
    bytes as f64 / time.as_secs_f64() / 1e6
}

/// Converts an F32 tensor to BF16, rounding to nearest even (NaNs stay NaN).
fn to_bf16(t: &Tensor) -> Tensor {
    let data = t
        .data
        .chunks_exact(4)
        .flat_map(|c| {
            let x = u32::from_le_bytes(c.try_into().expect("4 bytes"));
            let h = if x & 0x7fff_ffff > 0x7f80_0000 {
                (x >> 16) as u16 | 0x40
            } else {
                ((x + 0x7fff + ((x >> 16) & 1)) >> 16) as u16
            };
            h.to_le_bytes()
        })
        .collect();
    Tensor { name: t.name.clone(), dtype: Dtype::BF16, shape: t.shape.clone(), data }
}
