//! In-process throughput of this crate's codec on the tensors of safetensors files, for
//! `bench/codec_speed.py`, which puts it beside zstd and a plain read run as whole processes.
//!
//! ```text
//! cargo run -p tckpt --release --example codec_speed -- [--threads N] [--runs N] FILE.safetensors...
//! ```
//!
//! For each file: every tensor is written with [`Writer`] into memory (encode), then decoded
//! with [`Reader::read_tensors_into`] into preallocated buffers (decode, all tensors in one
//! call) and, for comparison, with [`Reader::read_tensor`] one tensor at a time (which
//! allocates each tensor). Plain read: the safetensors file read whole into memory with one
//! `read` (from the page cache or tmpfs where the file is). Times are the best of `--runs`;
//! GB = 10^9 bytes of raw tensor data. No process start-up (and no libtorch) is counted.
//! Prints one JSON object per file on a line starting with `json: `, then a table.

mod common;

use std::collections::BTreeMap;
use std::io::Cursor;

use anyhow::{bail, Context, Result};
use safetensors::{Dtype as StDtype, SafeTensors};
use tckpt::{Dtype, Reader, Writer, WriterOptions};

use common::best;

fn dtype(d: StDtype) -> Result<Dtype> {
    Ok(match d {
        StDtype::BOOL => Dtype::Bool,
        StDtype::U8 => Dtype::U8,
        StDtype::I8 => Dtype::I8,
        StDtype::I16 => Dtype::I16,
        StDtype::I32 => Dtype::I32,
        StDtype::I64 => Dtype::I64,
        StDtype::F16 => Dtype::F16,
        StDtype::BF16 => Dtype::BF16,
        StDtype::F32 => Dtype::F32,
        StDtype::F64 => Dtype::F64,
        other => bail!("dtype {other:?} is not in the format"),
    })
}

fn main() -> Result<()> {
    let mut threads = 0;
    let mut runs = 5;
    let mut only = String::new();
    let mut paths = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--threads" => threads = args.next().context("--threads N")?.parse()?,
            "--runs" => runs = args.next().context("--runs N")?.parse()?,
            // For profiling: skip the other measurements (their columns read NaN or 0).
            "--only" => only = args.next().context("--only encode|decode")?,
            _ => paths.push(a),
        }
    }
    if paths.is_empty() {
        bail!("usage: codec_speed [--threads N] [--runs N] FILE.safetensors...");
    }
    if threads == 0 {
        threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    }
    println!("in-process, {threads} threads, best of {runs} runs, GB = 10^9 raw bytes; no process start-up counted");
    let mut rows = Vec::new();
    for path in &paths {
        let (bytes, read_time) = best(runs, || Ok(std::fs::read(path)?))?;
        let st = SafeTensors::deserialize(&bytes).with_context(|| format!("parsing {path}"))?;
        let mut tensors = Vec::new();
        for (name, view) in st.tensors() {
            tensors.push((name, dtype(view.dtype())?, view.shape().to_vec(), view.data()));
        }
        tensors.sort_by_key(|t| t.3.as_ptr() as usize);
        let raw: usize = tensors.iter().map(|t| t.3.len()).sum();
        let options = WriterOptions { threads, ..WriterOptions::default() };
        let runs_encode = if only.is_empty() || only == "encode" { runs } else { 1 };
        let (file, encode) = best(runs_encode, || {
            let mut w = Writer::with_options(Vec::with_capacity(raw), options.clone())?;
            for (name, dtype, shape, data) in &tensors {
                w.add_tensor(name, *dtype, shape, data)?;
            }
            Ok(w.finish(BTreeMap::new())?)
        })?;
        let runs_all = if only.is_empty() { runs } else { 0 };
        let runs_decode = if only.is_empty() || only == "decode" { runs } else { 0 };
        let mut outs: Vec<Vec<u8>> = tensors.iter().map(|t| vec![0u8; t.3.len()]).collect();
        let ((), decode) = best(runs_decode, || {
            let mut r = Reader::with_threads(Cursor::new(&file), threads)?;
            let mut targets: Vec<(&str, &mut [u8])> =
                tensors.iter().zip(outs.iter_mut()).map(|(t, o)| (t.0.as_str(), o.as_mut_slice())).collect();
            r.read_tensors_into(&mut targets)?;
            Ok(())
        })?;
        for (t, o) in tensors.iter().zip(&outs) {
            if runs_decode > 0 && o.as_slice() != t.3 {
                bail!("{path}: {} does not round-trip", t.0);
            }
        }
        let ((), decode_each) = best(runs_all, || {
            let mut r = Reader::with_threads(Cursor::new(&file), threads)?;
            for t in &tensors {
                std::hint::black_box(r.read_tensor(&t.0)?);
            }
            Ok(())
        })?;
        let ((), verify) = best(runs_all, || Ok(Reader::with_threads(Cursor::new(&file), threads)?.verify()?))?;
        let row = serde_json::json!({
            "file": path,
            "tensors": tensors.len(),
            "raw_bytes": raw,
            "safetensors_bytes": bytes.len(),
            "ckpt_bytes": file.len(),
            "ratio": raw as f64 / file.len() as f64,
            "threads": threads,
            "encode_s": encode.as_secs_f64(),
            "decode_into_s": decode.as_secs_f64(),
            "decode_each_s": decode_each.as_secs_f64(),
            "verify_s": verify.as_secs_f64(),
            "read_safetensors_s": read_time.as_secs_f64(),
        });
        println!("json: {row}");
        rows.push(row);
    }
    println!();
    println!("| file | tensors | raw MB | ratio | encode GB/s | decode into buffers GB/s | read_tensor each GB/s | verify GB/s | plain read GB/s |");
    println!("|---|--:|--:|--:|--:|--:|--:|--:|--:|");
    for r in &rows {
        let raw = r["raw_bytes"].as_f64().unwrap_or(0.0);
        let gbps = |k: &str| raw / r[k].as_f64().unwrap_or(f64::NAN) / 1e9;
        println!(
            "| {} | {} | {:.1} | {:.3} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            r["file"].as_str().unwrap_or(""),
            r["tensors"],
            raw / 1e6,
            r["ratio"].as_f64().unwrap_or(0.0),
            gbps("encode_s"),
            gbps("decode_into_s"),
            gbps("decode_each_s"),
            gbps("verify_s"),
            gbps("read_safetensors_s"),
        );
    }
    Ok(())
}
