//! Checkpoint I/O, side by side on one machine in one run (a program that prints a table,
//! not a timed test):
//! - file size, save time and load time of the plain format (safetensors), the compressed
//!   format (`.tckpt`) and zstd level 3 alone on the same safetensors bytes;
//! - the time the training thread is blocked by one save, synchronous vs asynchronous
//!   (`checkpoint.async_save`), against the time of copying the state once in memory, and
//!   Python's `torch.save` of the same tensors.
//!
//! ```text
//! cargo bench --bench checkpoint_io -- CHECKPOINT [--repeats N]
//! ```
//! CHECKPOINT is any file `train ckpt` reads holding trained weights and optimizer state,
//! e.g. `runs/bench/checkpoints/latest.safetensors` after
//! `train --experiment standard --output-dir runs/bench --set 'model.mlp.hidden=[2048,1024]' --set training.epochs=2`.
//! Times are the median of the repeats; saves include fsync, as a real save does.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use tch::Tensor;
use train::checkpoint::plan::retention::Policy;
use train::checkpoint::plan::save::SavePolicy;
use train::checkpoint::saver::Saver;
use train::checkpoint::state::{Progress, Standing, TrainingState};
use train::checkpoint::store::{self, Slot};
use train::checkpoint::tensors::tensor_bytes;
use train::checkpoint::{CheckpointFile, Meta, Position, RngState, FORMAT_VERSION, OPTIMIZER_PREFIX};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let out = f();
    (out, t.elapsed().as_secs_f64())
}

fn meta() -> Meta {
    Meta {
        format_version: FORMAT_VERSION,
        position: Position { epoch: 1, step: 1, ..Position::default() },
        batch_size: None,
        train_loss: 0.0,
        val_loss: 0.0,
        val_accuracy: 0.0,
        has_optimizer_state: true,
        optimizer: serde_json::json!({"kind": "adamw"}),
        lr_scheduler: serde_json::json!({"kind": "constant"}),
        rng: RngState { seed: 0, scheme: "bench".into() },
        config_sha256: String::new(),
        tool_version: "bench".into(),
    }
}

/// The tensors (weights, and optimiser state under `optimizer/`) as a training step would
/// hand them to a save, at the position `m` records.
fn state_of(tensors: &[(String, Tensor)], m: &Meta) -> TrainingState {
    let (mut model, mut optimizer) = (Vec::new(), Vec::new());
    for (n, t) in tensors {
        match n.strip_prefix(OPTIMIZER_PREFIX) {
            Some(key) => optimizer.push((key.to_string(), t.shallow_clone())),
            None => model.push((n.clone(), t.shallow_clone())),
        }
    }
    let progress = Progress {
        standing: Standing::of(m),
        batch_size: 1,
        optimizer: m.optimizer.clone(),
        lr_scheduler: m.lr_scheduler.clone(),
        seed: m.rng.seed,
        rng_scheme: "bench",
    };
    TrainingState { model, optimizer, progress, shard: None }
}

/// Reads and checks every tensor into buffers of its own, as a resume into host memory does
/// (one parallel read: a compressed file decodes across tensors too).
fn load_all(path: &Path) -> usize {
    let f = CheckpointFile::open(path).unwrap();
    let mut bufs: Vec<Vec<u8>> = f.entries().iter().map(|e| vec![0u8; e.bytes as usize]).collect();
    let mut targets: Vec<(&str, &mut [u8])> =
        f.entries().iter().zip(bufs.iter_mut()).map(|(e, b)| (e.name.as_str(), b.as_mut_slice())).collect();
    f.read_many_into(&mut targets).unwrap();
    bufs.iter().map(Vec::len).sum()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let input = PathBuf::from(args.first().expect("usage: checkpoint_io CHECKPOINT [--repeats N]"));
    let repeats: usize =
        args.iter().position(|a| a == "--repeats").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(3);
    let src = CheckpointFile::open(&input).unwrap();
    let tensors: Vec<(String, Tensor)> = src
        .entries()
        .iter()
        .map(|e| {
            let kind = train::dtype::to_kind(e.dtype)
                .unwrap_or_else(|| panic!("{}: dtype {:?} not handled by this benchmark", e.name, e.dtype));
            let dims: Vec<i64> = e.shape.iter().map(|&d| d as i64).collect();
            (e.name.clone(), Tensor::from_data_size(&src.read(&e.name).unwrap(), &dims, kind))
        })
        .collect();
    let raw: u64 = tensors.iter().map(|(_, t)| tensor_bytes(t)).sum();
    let weights: u64 =
        tensors.iter().filter(|(n, _)| !n.starts_with(OPTIMIZER_PREFIX)).map(|(_, t)| tensor_bytes(t)).sum();
    let dir = tempfile::tempdir_in(input.parent().unwrap_or(Path::new("."))).unwrap();
    let mb = |b: u64| b as f64 / 1e6;
    println!(
        "input {}: {} tensors, {:.1} MB ({:.1} MB weights, {:.1} MB optimizer state); median of {repeats}\n",
        input.display(),
        tensors.len(),
        mb(raw),
        mb(weights),
        mb(raw - weights)
    );

    // 1. Formats.
    println!("| format | file MB | ratio | save s | load s | save MB/s | load MB/s |");
    println!("|---|--:|--:|--:|--:|--:|--:|");
    let m = meta();
    for (name, compressed) in [("safetensors (plain)", false), ("tckpt (.tckpt)", true)] {
        let (mut save, mut load, mut size) = (Vec::new(), Vec::new(), 0);
        for _ in 0..repeats {
            let ((path, bytes), s) =
                timed(|| store::write_atomic(dir.path(), Slot::Latest, compressed, &tensors, &m).unwrap());
            let (_, l) = timed(|| load_all(&path));
            save.push(s);
            load.push(l);
            size = bytes;
        }
        let (s, l) = (median(save), median(load));
        println!(
            "| {name} | {:.1} | {:.3} | {s:.3} | {l:.3} | {:.0} | {:.0} |",
            mb(size),
            raw as f64 / size as f64,
            mb(raw) / s,
            mb(raw) / l
        );
    }
    {
        let plain = dir.path().join("latest.safetensors");
        store::write_atomic(dir.path(), Slot::Latest, false, &tensors, &m).unwrap();
        let bytes = std::fs::read(&plain).unwrap();
        let target = dir.path().join("zstd3.safetensors.zst");
        let (mut save, mut load, mut size) = (Vec::new(), Vec::new(), 0);
        for _ in 0..repeats {
            let (_, s) = timed(|| {
                train_ckpt::atomic::write_atomic(&target, |f| {
                    use std::io::Write;
                    let z = zstd::bulk::compress(&bytes, 3)?;
                    f.write_all(&z)?;
                    Ok(z.len())
                })
                .unwrap()
            });
            let (n, l) = timed(|| zstd::stream::decode_all(std::fs::File::open(&target).unwrap()).unwrap().len());
            assert_eq!(n, bytes.len());
            save.push(s);
            load.push(l);
            size = std::fs::metadata(&target).unwrap().len();
        }
        let (s, l) = (median(save), median(load));
        println!(
            "| zstd -3 of the safetensors file | {:.1} | {:.3} | {s:.3} | {l:.3} | {:.0} | {:.0} |",
            mb(size),
            raw as f64 / size as f64,
            mb(raw) / s,
            mb(raw) / l
        );
    }

    // 2. Time the training thread is blocked by one save.
    println!("\n| save of the full state | training blocked s | x one in-memory copy |");
    println!("|---|--:|--:|");
    let copy =
        median((0..repeats).map(|_| timed(|| tensors.iter().map(|(_, t)| t.copy()).collect::<Vec<_>>()).1).collect());
    println!("| one in-memory copy of the state (reference) | {copy:.3} | 1.00 |");
    for (name, background, compress) in [
        ("sync, plain", false, false),
        ("async, plain", true, false),
        ("sync, compressed", false, true),
        ("async, compressed", true, true),
    ] {
        let mut blocked = Vec::new();
        for _ in 0..repeats {
            let mut saver = Saver::new(
                dir.path().join("saver"),
                Policy { keep_last: None, keep_best: true, best_by: Default::default() },
                SavePolicy { epoch_with_optimizer: false, compress },
                String::new(),
                0,
                background,
            );
            let (b, _) = saver.submit(state_of(&tensors, &m), false).unwrap();
            saver.finish().unwrap();
            blocked.push(b);
        }
        let b = median(blocked);
        println!("| train, {name} | {b:.3} | {:.2} |", b / copy);
    }
    let python = std::env::var("PYTHON_TORCH").unwrap_or_else(|_| {
        format!("{}/.cache/train/torch-2.11.0/bin/python", std::env::var("HOME").unwrap_or_default())
    });
    let plain = dir.path().join("latest.safetensors");
    let script = r#"
import sys, time, os, torch
from safetensors.torch import load_file
state = load_file(sys.argv[1]); out = sys.argv[2]; times = []
for _ in range(int(sys.argv[3])):
    t = time.perf_counter()
    with open(out, "wb") as f:
        torch.save(state, f); f.flush(); os.fsync(f.fileno())
    times.append(time.perf_counter() - t)
times.sort(); print(times[len(times) // 2], os.path.getsize(out))
"#;
    match Command::new(&python)
        .args([
            "-c",
            script,
            plain.to_str().unwrap(),
            dir.path().join("state.pt").to_str().unwrap(),
            &repeats.to_string(),
        ])
        .output()
    {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let mut it = text.split_whitespace();
            let secs: f64 = it.next().unwrap().parse().unwrap();
            let size: u64 = it.next().unwrap().parse().unwrap();
            println!(
                "| python torch.save (blocks training), {:.1} MB file | {secs:.3} | {:.2} |",
                mb(size),
                secs / copy
            );
        }
        _ => println!("| python torch.save | (no Python torch at {python}) | |"),
    }
}
