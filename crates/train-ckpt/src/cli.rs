//! The `ckpt` commands (`train ckpt ...` and the `train-ckpt` binary): their arguments and
//! what they print. One definition for both entry points.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Result;
use clap::Subcommand;

use crate::source::{CheckpointFile, Integrity};
use crate::tools;

/// `train ckpt ...` / `train-ckpt ...`: formats are told apart by content (the compressed
/// format's magic, a safetensors header, a zip or a pickle) and otherwise by file name:
/// `.safetensors`, `.tckpt` (compressed), and (read only) PyTorch `.pt`/`.pth`/`.bin`.
#[derive(Debug, Subcommand)]
pub enum CkptCommand {
    /// Summarise a checkpoint: format, epoch, step, losses, tensor and byte counts, and the
    /// optimizer state it holds (a `torch.save` file's `optimizer_state_dict` included).
    Inspect {
        /// The checkpoint file.
        path: PathBuf,
        /// Print JSON (stable field names, see docs/checkpoint-format.md).
        #[arg(long)]
        json: bool,
        /// Also list every tensor: name, dtype, shape, bytes and whether it is the model's,
        /// the optimizer's or other (no tensor data is read).
        #[arg(long)]
        tensors: bool,
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
        CkptCommand::Inspect { path, json, tensors } => {
            let report = tools::inspect(&path, tensors)?;
            if json {
                writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?;
            } else {
                let value = serde_json::to_value(&report)?;
                for (k, v) in value.as_object().expect("a struct serializes to an object") {
                    match (k.as_str(), &report.optimizer) {
                        ("tensor_list", _) => {}
                        ("optimizer", Some(o)) => writeln!(out, "{k:20} {}", o.describe())?,
                        ("metadata_covered", _) if report.train_checkpoint && !report.metadata_covered => {
                            writeln!(out, "{k:20} false (v1: metadata not covered by a checksum)")?
                        }
                        _ => writeln!(out, "{k:20} {v}")?,
                    }
                }
                if let Some(list) = &report.tensor_list {
                    write_tensor_table(&mut out, list)?;
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
                Integrity::MetadataNotCovered => writeln!(
                    out,
                    "tensors sound, metadata not checked: {} ({} tensors checked against their checksums; v1: \
                     metadata not covered, so its epoch, step and losses could have been altered undetected)",
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

/// `ckpt inspect --tensors`' table: one line per tensor, columns aligned.
fn write_tensor_table(out: &mut impl Write, list: &[crate::source::Entry]) -> std::io::Result<()> {
    let width = list.iter().map(|t| t.name.len()).max().unwrap_or(0).max(4);
    writeln!(out)?;
    writeln!(out, "{:width$}  {:9}  {:5}  {:>12}  shape", "name", "role", "dtype", "bytes")?;
    for t in list {
        let role = serde_json::to_value(t.role).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default();
        let dtype = format!("{:?}", t.dtype);
        writeln!(out, "{:width$}  {role:9}  {dtype:5}  {:>12}  {:?}", t.name, t.bytes, t.shape)?;
    }
    Ok(())
}

/// Whether log lines are coloured: when they go to a terminal (`to_terminal`), unless
/// `NO_COLOR` is set to anything but an empty string (no-color.org); `CLICOLOR_FORCE` set to
/// anything but `0` or an empty string colours them anywhere else too. Never otherwise: escape
/// codes in a pipe or a file are noise to whatever reads it. `var` reads the environment.
pub fn log_colour(to_terminal: bool, var: impl Fn(&str) -> Option<std::ffi::OsString>) -> bool {
    let set = |name: &str, off: &[&str]| var(name).is_some_and(|v| !off.iter().any(|o| v == *o));
    if set("NO_COLOR", &[""]) {
        return false;
    }
    to_terminal || set("CLICOLOR_FORCE", &["", "0"])
}

/// The error and its causes on one line, each message once (typed errors often repeat
/// their cause in their own message). A write that failed with EFBIG says that a file-size
/// limit (`ulimit -f`) was hit: "File too large" alone reads like a full disk.
pub fn error_chain(error: &anyhow::Error) -> String {
    let too_large = error.chain().any(|c| {
        c.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::FileTooLarge)
            || c.to_string().contains("File too large")
    });
    let mut out = error_chain_plain(error);
    if too_large {
        out.push_str(" (the process's file-size limit, `ulimit -f`, was reached; raise it or run without it)");
    }
    out
}

fn error_chain_plain(error: &anyhow::Error) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_are_coloured_on_a_terminal_only_unless_the_environment_says() {
        let env = |vars: &'static [(&'static str, &'static str)]| {
            move |k: &str| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| std::ffi::OsString::from(v))
        };
        assert!(log_colour(true, env(&[])));
        assert!(!log_colour(false, env(&[])));
        assert!(!log_colour(true, env(&[("NO_COLOR", "1")])));
        assert!(log_colour(true, env(&[("NO_COLOR", "")])));
        assert!(log_colour(false, env(&[("CLICOLOR_FORCE", "1")])));
        assert!(!log_colour(false, env(&[("CLICOLOR_FORCE", "0")])));
        assert!(!log_colour(false, env(&[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")])));
    }
}
