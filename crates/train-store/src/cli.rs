//! The `ckpt` commands (`train ckpt ...` and the `train-ckpt` binary): their arguments and
//! what they print. One definition for both entry points.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use crate::source::{CheckpointFile, Integrity};
use crate::tools;

/// `train ckpt ...` / `train-ckpt ...`: formats are told apart by content (the compressed
/// format's magic, a zip or a pickle) and otherwise by file name: `.safetensors`,
/// `.tckpt` (compressed), and (read only) PyTorch `.pt`/`.pth`/`.bin`.
#[derive(Debug, Subcommand)]
pub enum CkptCommand {
    /// Summarise a checkpoint: format, epoch, step, losses, tensor and byte counts.
    Inspect {
        /// The checkpoint file.
        path: PathBuf,
        /// Print JSON (stable field names, see docs/checkpoint-format.md).
        #[arg(long)]
        json: bool,
    },
    /// Check every tensor against its checksum and the file's structure; exit 0 only when sound.
    Verify {
        /// The checkpoint file.
        path: PathBuf,
    },
    /// Convert between formats, e.g. a `torch.save` file to `.safetensors`.
    Convert {
        /// The file to read.
        input: PathBuf,
        /// The file to write (replaced atomically).
        output: PathBuf,
    },
    /// Drop optimizer state, keeping weights and metadata.
    Strip {
        /// The checkpoint file.
        path: PathBuf,
        /// Write here instead of replacing PATH.
        #[arg(short, long, value_name = "OUT")]
        output: Option<PathBuf>,
    },
}

/// Runs a `ckpt` command, printing to stdout.
pub fn run(cmd: CkptCommand) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        CkptCommand::Inspect { path, json } => {
            let report = tools::inspect(&path)?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                let value = serde_json::to_value(&report)?;
                for (k, v) in value.as_object().expect("a struct serializes to an object") {
                    writeln!(out, "{k:20} {v}")?;
                }
            }
        }
        CkptCommand::Verify { path } => {
            let v = CheckpointFile::open(&path)?.verify()?;
            match v.integrity {
                Integrity::Checked => writeln!(
                    out,
                    "ok: {} is sound ({} tensors and the metadata checked against their checksums)",
                    path.display(),
                    v.tensors
                )?,
                Integrity::NotChecked => writeln!(
                    out,
                    "readable, not checked: {} ({} tensors read; the file carries no checksums, so damage cannot be \
                     detected)",
                    path.display(),
                    v.tensors
                )?,
            }
        }
        CkptCommand::Convert { input, output } => {
            let bytes = tools::convert(&input, &output, false)?;
            writeln!(out, "wrote {} ({bytes} bytes)", output.display())?;
        }
        CkptCommand::Strip { path, output } => {
            let target = output.unwrap_or_else(|| path.clone());
            let bytes = tools::convert(&path, &target, true)?;
            writeln!(out, "wrote {} without optimizer state ({bytes} bytes)", target.display())?;
        }
    }
    Ok(())
}

/// The error and its causes on one line, each message once (typed errors often repeat
/// their cause in their own message).
pub fn error_chain(error: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in error.chain() {
        let msg = cause.to_string();
        if !out.contains(&msg) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&msg);
        }
    }
    out
}
