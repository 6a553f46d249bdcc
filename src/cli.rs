//! Command-line definitions (clap derive). Raw values only: [`crate::app`] turns them into
//! a validated [`crate::config::Config`] through the config layers.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

pub use crate::logging::LogFormat;

const EXAMPLES: &str = "\
Examples:
  train --config configs/config_memory_optimized.yaml --experiment ultra_low_memory
  train --config my.yaml --experiment balanced --set training.epochs=10 --device cuda:1
  train run --config my.yaml --resume never --output-dir /scratch/run7
  train config show --config my.yaml --experiment ultra_low_memory
  TRAIN_TRAINING__EPOCHS=2 train --experiment standard --dry-run
  train profiles
  train report runs/ultra_low_memory -o report.svg

Exit codes: 0 success, 1 runtime failure, 2 usage or configuration error (nothing written),
  3 the loss became NaN or infinite (training.on_nonfinite: stop; `latest` keeps the last
  finite state), 75 stopped by SIGTERM/SIGINT after saving `latest` (requeue and run again;
  also during start-up, with nothing to save), 130 a second signal before that save finished
  (the previous `latest` stays).

Trust: model.torchscript.path names a TorchScript module, and loading it runs its code
  (__setstate__, then forward in the start-up try): treat a .pt module like a program.
  Data files and checkpoints (.safetensors, .tckpt, .npz, torch.save files) are data:
  reading them never runs code.";

/// A training launcher for PyTorch-style models on small GPUs, preemptible clusters and CPUs.
#[derive(Debug, Parser)]
#[command(name = "train", version, after_help = EXAMPLES, args_conflicts_with_subcommands = true, arg_required_else_help = true)]
pub struct Cli {
    /// What to do; without one, `train` runs training (as `train run`).
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Training options, when no subcommand is given.
    #[command(flatten)]
    pub run: RunArgs,
    /// Log format on stderr: `text` for people, `json` for machines. Filter with RUST_LOG.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Train (the default when no subcommand is given).
    #[command(after_help = EXAMPLES)]
    Run(RunArgs),
    /// Inspect configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// List the built-in profiles and what each sets.
    Profiles,
    /// Show how a checkpoint would be loaded: free memory, predicted peak of each strategy,
    /// the choice and why. Changes nothing.
    Plan(PlanArgs),
    /// A checkpoint's loss and accuracy on the validation data (IDX: the test split), without
    /// training. Writes nothing.
    Eval(EvalArgs),
    /// Inspect, verify, convert and strip checkpoint files.
    #[command(subcommand)]
    Ckpt(train_ckpt::cli::CkptCommand),
    /// Draw a run's metrics as a picture (PNG or SVG) and print a summary.
    Report {
        /// The run folder (holding metrics.jsonl).
        run_dir: PathBuf,
        /// The picture to write; `.png` or `.svg` (default RUN_DIR/report.png).
        #[arg(short, long)]
        output: Option<PathBuf>,
        /// Print the summary as JSON (stable field names, see README).
        #[arg(long)]
        json: bool,
    },
}

/// `train eval ...`
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    /// Configuration sources: the model and data the checkpoint was trained with.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// The checkpoint (any format `train ckpt` reads; names and shapes must match the model).
    #[arg(long, value_name = "PATH")]
    pub checkpoint: PathBuf,
    /// Device: `auto`, `cpu`, `cuda` or `cuda:N`. Sets run.device.
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// Print JSON: `checkpoint`, `epoch`, `step`, `examples`, `loss`, `accuracy` (null for
    /// regression), `seconds`.
    #[arg(long)]
    pub json: bool,
}

/// `train config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the merged configuration and, for every value, the layer it came from.
    Show(ShowArgs),
}

/// Where the configuration comes from.
#[derive(Debug, Clone, Args)]
pub struct ConfigArgs {
    /// YAML config file.
    #[arg(long, short = 'c', value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Experiment: a built-in profile (standard, balanced, ultra_low_memory) and/or an entry
    /// of the file's `experiments:` section. Also names the run folder runs/<NAME>.
    #[arg(long, short = 'e', value_name = "NAME")]
    pub experiment: Option<String>,
    /// Override one key, e.g. `--set training.epochs=3`; the value is YAML. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub sets: Vec<String>,
}

/// `train [run] ...`
#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Configuration sources.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Continue from a checkpoint: `auto` (the run's newest), `never`, or a file. Sets run.resume.
    #[arg(long, value_name = "auto|never|PATH")]
    pub resume: Option<String>,
    /// Start a fresh run from these weights (fine-tuning): ours, safetensors or a
    /// torch.save file. Sets model.init_from.
    #[arg(long, value_name = "PATH")]
    pub init_from: Option<PathBuf>,
    /// With --init-from: refuse any mismatch between file and model. Sets model.init_strict.
    #[arg(long)]
    pub init_strict: bool,
    /// Device: `auto`, `cpu`, `cuda` or `cuda:N`. Sets run.device.
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// Run folder (default runs/<experiment>). Sets run.output_dir.
    #[arg(long, value_name = "DIR")]
    pub output_dir: Option<PathBuf>,
    /// Check configuration, data files, device and resume plan; train nothing, write nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// `train config show ...`
#[derive(Debug, Clone, Args)]
pub struct ShowArgs {
    /// Configuration sources.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Print JSON: `{"experiment", "layers", "config", "origins": [{"key", "value", "source"}]}`.
    #[arg(long)]
    pub json: bool,
}

/// `train plan ...`
#[derive(Debug, Clone, Args)]
pub struct PlanArgs {
    /// Configuration sources.
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Plan loading this checkpoint (any format `train ckpt` reads); without it, the
    /// configured model's own size and its optimizer's state are used.
    #[arg(long, value_name = "PATH")]
    pub checkpoint: Option<PathBuf>,
    /// Device to plan for (default: run.device).
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// Also carry the plan out: build the model on the device, load the checkpoint as a run
    /// would, and report the measured time and peak memory (`measured` in the JSON).
    /// Writes nothing. Needs --checkpoint.
    #[arg(long, requires = "checkpoint")]
    pub execute: bool,
    /// Ranks to show sharded state for (`shard` in the JSON): the bytes of weights,
    /// gradients and optimizer state each rank holds under each `distributed.shard`, and
    /// what `auto` would choose (default: the launcher's world size, else 2).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub ranks: Option<u32>,
    /// Print JSON: `strategy`, `reason`, `free_vram_bytes`, `source`, `predicted_peak_bytes`
    /// (by strategy name), `device`, `sizes`, `gpu`, `host`, `data`, `shard`.
    #[arg(long)]
    pub json: bool,
}
