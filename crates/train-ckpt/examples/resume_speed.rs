//! In-process time to read every tensor of checkpoint files into fresh buffers, as a resume
//! does, through the reader `train` uses ([`CheckpointFile::read_many_into`]), for
//! `bench/codec_speed.py`'s resume rows.
//!
//! ```text
//! cargo run -p train-ckpt --release --example resume_speed -- [--runs N] [--cold] FILE...
//! ```
//!
//! Each run opens the file (header, metadata, index), allocates one buffer per tensor (so the
//! page faults of fresh memory count, as they do for a resume's new tensors) and reads every
//! tensor into it, checked against its checksums. A `.tckpt` file is also read a second way,
//! `tckpt (read)`: the compressed reader fed by `read` calls into a window buffer (no mapping),
//! which is how every compressed read worked before mapped windows, for comparison in the same
//! run. Variants take turns within each run, so background load hits them alike. `--cold`
//! drops the page cache before every read (`sync; echo 3 > /proc/sys/vm/drop_caches`: needs
//! root). Prints one JSON object per variant on a line starting with `json: `, then a table of
//! medians and minimums.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use memmap2::MmapMut;
use train_ckpt::CheckpointFile;

/// The ways a file is read.
#[derive(Clone, Copy, PartialEq)]
enum Way {
    /// `CheckpointFile` (what resume uses).
    Store,
    /// The compressed reader reading windows into a buffer, not mapping them.
    ReadWindows,
}

/// A fresh buffer of `len` bytes, as a new tensor is: untouched pages that fault in when first
/// written (no memset, which a tensor allocation does not do either).
fn fresh(len: u64) -> Result<MmapMut> {
    Ok(MmapMut::map_anon(len.max(1) as usize)?)
}

fn read_all(path: &Path, way: Way) -> Result<u64> {
    match way {
        Way::Store => {
            let file = CheckpointFile::open(path)?;
            let mut bufs: Vec<MmapMut> = file.entries().iter().map(|e| fresh(e.bytes)).collect::<Result<_>>()?;
            let mut targets: Vec<(&str, &mut [u8])> = file
                .entries()
                .iter()
                .zip(bufs.iter_mut())
                .map(|(e, b)| (e.name.as_str(), &mut b[..e.bytes as usize]))
                .collect();
            file.read_many_into(&mut targets)?;
            Ok(file.entries().iter().map(|e| e.bytes).sum())
        }
        Way::ReadWindows => {
            let mut r = tckpt::Reader::new(std::io::BufReader::new(std::fs::File::open(path)?))?;
            let infos = r.tensors().to_vec();
            let mut bufs: Vec<MmapMut> = infos.iter().map(|t| fresh(t.raw_len)).collect::<Result<_>>()?;
            let mut targets: Vec<(&str, &mut [u8])> = infos
                .iter()
                .zip(bufs.iter_mut())
                .map(|(t, b)| (t.name.as_str(), &mut b[..t.raw_len as usize]))
                .collect();
            r.read_tensors_into(&mut targets)?;
            Ok(infos.iter().map(|t| t.raw_len).sum())
        }
    }
}

fn drop_caches() -> Result<()> {
    std::process::Command::new("sync").status().context("running sync")?;
    std::fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache (--cold needs root)")
}

/// Whether the file starts with the compressed format's magic.
fn is_compressed(path: &Path) -> Result<bool> {
    use std::io::Read;
    let mut prefix = Vec::new();
    std::fs::File::open(path)?.take(8).read_to_end(&mut prefix)?;
    Ok(tckpt::is_ckpt(&prefix))
}

fn main() -> Result<()> {
    let mut runs = 7;
    let mut cold = false;
    let mut paths: Vec<PathBuf> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--runs" => runs = args.next().context("--runs N")?.parse()?,
            "--cold" => cold = true,
            _ => paths.push(a.into()),
        }
    }
    if paths.is_empty() || runs == 0 {
        bail!("usage: resume_speed [--runs N] [--cold] FILE...");
    }
    let mut variants: Vec<(String, PathBuf, Way)> = Vec::new();
    for p in &paths {
        let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        variants.push((name.clone(), p.clone(), Way::Store));
        if is_compressed(p).with_context(|| format!("opening {}", p.display()))? {
            variants.push((format!("{name} (read)"), p.clone(), Way::ReadWindows));
        }
    }
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); variants.len()];
    let mut raw = vec![0u64; variants.len()];
    for _ in 0..runs {
        for (i, (_, path, way)) in variants.iter().enumerate() {
            if cold {
                drop_caches()?;
            }
            let start = Instant::now();
            raw[i] = read_all(path, *way).with_context(|| format!("reading {}", path.display()))?;
            times[i].push(start.elapsed());
        }
    }
    let cache = if cold { "cold (page cache dropped before each read)" } else { "warm (page cache)" };
    let mut lines = Vec::new();
    for (i, (name, path, _)) in variants.iter().enumerate() {
        let mut t = times[i].clone();
        t.sort();
        let median = t[t.len() / 2];
        let file_bytes = std::fs::metadata(path)?.len();
        let row = serde_json::json!({
            "variant": name,
            "file": path,
            "cold": cold,
            "file_bytes": file_bytes,
            "raw_bytes": raw[i],
            "median_s": median.as_secs_f64(),
            "min_s": t[0].as_secs_f64(),
            "all_s": t.iter().map(Duration::as_secs_f64).collect::<Vec<_>>(),
        });
        println!("json: {row}");
        lines.push(format!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} |",
            file_bytes as f64 / 1e6,
            raw[i] as f64 / 1e6,
            median.as_secs_f64() * 1e3,
            t[0].as_secs_f64() * 1e3,
            raw[i] as f64 / median.as_secs_f64() / 1e9,
        ));
    }
    println!("read every tensor into fresh buffers, {cache}, {runs} runs");
    println!();
    println!("| file | file MB | raw MB | median ms | min ms | median raw GB/s |");
    println!("|---|--:|--:|--:|--:|--:|");
    for line in lines {
        println!("{line}");
    }
    Ok(())
}
