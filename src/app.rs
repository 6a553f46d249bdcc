//! The commands behind the CLI: each turns parsed arguments into library calls and prints
//! the result. Errors go back to `main` as `anyhow::Error` carrying the typed cause.

use std::io::Write;
use std::path::Path;

use anyhow::Result;

use crate::checkpoint::CheckpointFile;
use crate::cli::{Cli, Command, ConfigArgs, ConfigCommand, EvalArgs, PlanArgs, RunArgs, ShowArgs};
use crate::config::{self, FlagOverride, Origin, Request, PROFILES};
use crate::{memory, report, run};

/// Exit code for usage and configuration errors.
pub const EXIT_USAGE: u8 = 2;
/// Exit code for failures while running.
pub const EXIT_FAILURE: u8 = 1;
/// Exit code of a run whose loss became NaN or infinite (`training.on_nonfinite: stop`).
pub const EXIT_DIVERGED: u8 = 3;
pub use crate::run::signals::EXIT_INTERRUPTED;

/// Installs the log subscriber ([`crate::logging::init`]) in the format asked for, quieter
/// on the ranks other than 0 of a data-parallel job (as the launcher's variables say).
pub fn init_logging(format: crate::logging::LogFormat) {
    let follower = crate::distributed::env::detect_from_env().ok().flatten().is_some_and(|l| l.rank != 0);
    crate::logging::init(format, follower);
}

/// Ignores SIGXFSZ, so that a write past a file-size limit (`ulimit -f`) fails with EFBIG,
/// which is reported naming the file, instead of killing the process with no message
/// (exit 153).
pub fn ignore_file_size_signal() {
    // SAFETY: setting a signal's disposition to "ignore" runs no code of ours.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
}

/// Runs the command `cli` asks for; returns the exit code of a command that succeeded.
pub fn dispatch(cli: Cli) -> Result<u8> {
    let is_run = matches!(cli.command, None | Some(Command::Run(_)));
    if is_run {
        run::signals::early::exit_during_start_up();
    } else {
        run::signals::early::release();
    }
    match cli.command {
        None => train(&cli.run),
        Some(Command::Run(args)) => train(&args),
        Some(Command::Config(ConfigCommand::Show(args))) => show(&args).map(|()| 0),
        Some(Command::Profiles) => profiles().map(|()| 0),
        Some(Command::Ckpt(cmd)) => train_ckpt::cli::run(cmd).map(|()| 0),
        Some(Command::Plan(args)) => plan(&args).map(|()| 0),
        Some(Command::Eval(args)) => eval(&args).map(|()| 0),
        Some(Command::Report { run_dir, output, json }) => report(&run_dir, output.as_deref(), json).map(|()| 0),
    }
}

/// The exit code for an error from [`dispatch`].
pub fn exit_code(error: &anyhow::Error) -> u8 {
    if let Some(e) = error.downcast_ref::<run::RunError>() {
        return match e {
            run::RunError::NonFinite { .. } => EXIT_DIVERGED,
            e if e.is_usage() => EXIT_USAGE,
            _ => EXIT_FAILURE,
        };
    }
    if error.downcast_ref::<config::ConfigError>().is_some() {
        return EXIT_USAGE;
    }
    EXIT_FAILURE
}

fn request(args: &ConfigArgs, flags: Vec<FlagOverride>) -> Request {
    Request {
        file: args.config.clone(),
        experiment: args.experiment.clone(),
        env: std::env::vars().collect(),
        sets: args.sets.clone(),
        flags,
    }
}

fn train(args: &RunArgs) -> Result<u8> {
    let mut flags = Vec::new();
    if let Some(v) = &args.resume {
        flags.push(FlagOverride::new("--resume", "run.resume", v.clone()));
    }
    if let Some(v) = &args.init_from {
        flags.push(FlagOverride::new("--init-from", "model.init_from", v.display().to_string()));
    }
    if args.init_strict {
        flags.push(FlagOverride::switch("--init-strict", "model.init_strict"));
    }
    if let Some(v) = &args.device {
        flags.push(FlagOverride::new("--device", "run.device", v.clone()));
    }
    if let Some(v) = &args.output_dir {
        flags.push(FlagOverride::new("--output-dir", "run.output_dir", v.display().to_string()));
    }
    let resolved = config::resolve(&request(&args.config, flags))?;
    tracing::debug!(layers = ?resolved.layers, "configuration resolved");
    let summary = run::execute(&resolved, args.dry_run)?;
    if !args.dry_run {
        match &summary.last {
            Some(m) => tracing::info!(
                output_dir = %summary.output_dir.display(),
                epochs_trained = summary.epochs_trained,
                val_loss = format_args!("{:.4}", m.val_loss),
                val_accuracy = format_args!("{:.4}", m.val_accuracy),
                "run finished"
            ),
            None => {
                tracing::info!(output_dir = %summary.output_dir.display(), "nothing left to train")
            }
        }
    }
    if summary.interrupted {
        tracing::warn!(code = EXIT_INTERRUPTED, "stopped by a signal; `latest` is saved, run again to continue");
        return Ok(EXIT_INTERRUPTED);
    }
    Ok(0)
}

fn show(args: &ShowArgs) -> Result<()> {
    let resolved = config::resolve(&request(&args.config, Vec::new()))?;
    let launch = crate::distributed::env::detect_from_env()
        .map_err(|e| run::RunError::Distributed(crate::distributed::DistError::Launch(e)))?;
    let mut out = std::io::stdout().lock();
    if args.json {
        let json = serde_json::json!({
            "experiment": resolved.experiment,
            "layers": resolved.layers,
            "config": resolved.config,
            "origins": resolved.origins,
            "launch": launch.as_ref().map(|l| serde_json::json!({
                "rank": l.rank,
                "world": l.world,
                "local_rank": l.local_rank,
                "master_addr": l.master_addr,
                "master_port": l.master_port,
                "source": l.source.to_string(),
                "agent_store": l.agent_store,
            })),
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
    } else {
        writeln!(out, "# layers, lowest first: {}", resolved.layers.join(" → "))?;
        match &launch {
            Some(l) => writeln!(
                out,
                "# data parallel: rank {} of {} (local rank {}) from {}; store at {}:{}{}",
                l.rank,
                l.world,
                l.local_rank,
                l.source,
                l.master_addr,
                l.master_port,
                if l.agent_store { " (torchrun's agent store)" } else { "" }
            )?,
            None => writeln!(
                out,
                "# single process: no torchrun (RANK, WORLD_SIZE) or srun (SLURM_PROCID, SLURM_NTASKS) variables"
            )?,
        }
        write_origins(&mut out, &resolved.origins)?;
    }
    Ok(())
}

fn write_origins(out: &mut impl Write, origins: &[Origin]) -> std::io::Result<()> {
    let lines: Vec<(String, &str, Option<Vec<String>>)> = origins
        .iter()
        .map(|o| match calls(&o.value) {
            Some(items) => (format!("{} = [", o.key), o.source.as_str(), Some(items)),
            None => (format!("{} = {}", o.key, o.value), o.source.as_str(), None),
        })
        .collect();
    let width = lines.iter().map(|(l, _, _)| l.len()).max().unwrap_or(0);
    for (line, source, items) in lines {
        writeln!(out, "{line:width$}  # {source}")?;
        if let Some(items) = items {
            for item in items {
                writeln!(out, "    {item},")?;
            }
            writeln!(out, "]")?;
        }
    }
    Ok(())
}

/// A non-empty list of one-key maps of parameters (`data.transforms.train`) as calls, one
/// a line, as torchvision prints a `Compose`: `RandomHorizontalFlip(p=0.5)`. On one line
/// such a list would push every source comment far to the right.
fn calls(value: &serde_json::Value) -> Option<Vec<String>> {
    let items = value.as_array().filter(|items| !items.is_empty())?;
    items
        .iter()
        .map(|item| {
            let mut entries = item.as_object()?.iter();
            let (Some((name, params)), None) = (entries.next(), entries.next()) else { return None };
            let params: Vec<String> = params.as_object()?.iter().map(|(k, v)| format!("{k}={v}")).collect();
            Some(format!("{name}({})", params.join(", ")))
        })
        .collect()
}

fn profiles() -> Result<()> {
    let mut out = std::io::stdout().lock();
    for p in PROFILES {
        writeln!(out, "{}: {}", p.name, p.summary)?;
        let yaml: serde_yaml::Value = serde_yaml::from_str(p.yaml)?;
        let mut leaves = Vec::new();
        flatten("", &yaml, &mut leaves);
        for (key, value) in leaves {
            writeln!(out, "  {key} = {value}")?;
        }
    }
    Ok(())
}

fn flatten(prefix: &str, value: &serde_yaml::Value, out: &mut Vec<(String, String)>) {
    match value {
        serde_yaml::Value::Mapping(map) => {
            for (k, v) in map {
                let k = k.as_str().unwrap_or_default();
                let key = if prefix.is_empty() { k.to_string() } else { format!("{prefix}.{k}") };
                flatten(&key, v, out);
            }
        }
        leaf => out.push((prefix.to_string(), serde_json::to_string(leaf).unwrap_or_default())),
    }
}

pub use train_ckpt::cli::error_chain;

fn report(run_dir: &Path, output: Option<&Path>, json: bool) -> Result<()> {
    let summary = report::report(run_dir, output)?;
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&summary)?)?;
    } else {
        write!(out, "{summary}")?;
    }
    Ok(())
}

fn eval(args: &EvalArgs) -> Result<()> {
    let mut flags = Vec::new();
    if let Some(v) = &args.device {
        flags.push(FlagOverride::new("--device", "run.device", v.clone()));
    }
    let mut sources = args.config.clone();
    if sources.config.is_none() && sources.experiment.is_none() {
        // A checkpoint in a run folder was trained with that folder's configuration.
        let saved = args
            .checkpoint
            .parent()
            .filter(|d| d.ends_with(crate::checkpoint::store::DIR_NAME))
            .and_then(|d| Some(d.parent()?.join(run::folder::CONFIG_FILE)).filter(|c| c.is_file()));
        if let Some(saved) = saved {
            tracing::info!(config = %saved.display(), "no --config: using the configuration the run saved beside its checkpoints");
            sources.config = Some(saved);
        }
    }
    let resolved = config::resolve(&request(&sources, flags))?;
    let e = run::evaluate::evaluate(&run::UserConfig::new(resolved.config), &args.checkpoint)?;
    let mut out = std::io::stdout().lock();
    if args.json {
        writeln!(out, "{}", serde_json::to_string_pretty(&e)?)?;
    } else {
        writeln!(out, "checkpoint {} (epoch {}, step {})", e.checkpoint.display(), e.epoch, e.step)?;
        writeln!(out, "examples   {}", e.examples)?;
        writeln!(out, "loss       {:.6}", e.loss)?;
        match e.accuracy {
            Some(a) => writeln!(out, "accuracy   {a:.4}")?,
            None => writeln!(out, "accuracy   - (regression)")?,
        }
    }
    Ok(())
}

fn plan(args: &PlanArgs) -> Result<()> {
    let mut flags = Vec::new();
    if let Some(v) = &args.device {
        flags.push(FlagOverride::new("--device", "run.device", v.clone()));
    }
    let resolved = config::resolve(&request(&args.config, flags))?;
    let cfg = &run::UserConfig::new(resolved.config);
    let device = crate::device::select(cfg.run.device).map_err(|e| run::RunError::Device(e.to_string()))?;
    let file = args.checkpoint.as_deref().map(CheckpointFile::open).transpose()?;
    let sizes = match &file {
        // Planned before the model exists: it will be the checkpoint's weights' size.
        Some(file) => train_ckpt::strategy::Sizes::of_file(file, None),
        None => run::measure::model_sizes(cfg)?,
    };
    let plan = crate::checkpoint::plan::load::make(&cfg.memory, device, sizes, 0, &memory::probe::Nvml);
    let (_, data) = run::setup::load_data(cfg)?;
    let measured = match (&file, args.execute) {
        (Some(file), true) => Some(run::measure::measure_load(cfg, file)?),
        _ => None,
    };
    // Sharded state: what each rank would hold under each choice, and `auto`'s.
    let launched = crate::distributed::env::detect_from_env().ok().flatten().map(|l| l.world);
    let ranks = args.ranks.or(launched).unwrap_or(2);
    let per_rank = crate::distributed::plan::per_rank(plan.sizes.model, plan.sizes.optimizer, ranks);
    let (auto, auto_reason) = crate::distributed::plan::auto(&per_rank, plan.free_vram_bytes, ranks);
    let auto = auto.map_or("none", crate::distributed::Stage::name);
    let mut out = std::io::stdout().lock();
    if args.json {
        let mut json = serde_json::to_value(&plan)?;
        json["measured"] = serde_json::to_value(&measured)?;
        json["data"] = serde_json::to_value(data)?;
        json["shard"] = serde_json::json!({
            "ranks": ranks,
            "per_rank": per_rank,
            "configured": cfg.distributed.shard.name(),
            "auto": auto,
            "auto_reason": auto_reason,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&json)?)?;
        return Ok(());
    }
    let gib = |b: u64| bytesize::ByteSize(b).to_string();
    writeln!(out, "device     {} ({})", plan.device, plan.source)?;
    writeln!(out, "free       {}", plan.free_vram_bytes.map_or("unknown".into(), gib))?;
    let s = &plan.sizes;
    writeln!(
        out,
        "sizes      model {}, checkpoint weights {}, optimizer state {}, largest tensor {}",
        gib(s.model),
        gib(s.weights),
        gib(s.optimizer),
        gib(s.largest)
    )?;
    for (name, peak) in &plan.predicted_peak_bytes {
        writeln!(out, "predicted  {name:17} peak {}", gib(*peak))?;
    }
    writeln!(out, "choice     {}: {}", plan.strategy.name(), plan.reason)?;
    if data.streamed {
        writeln!(
            out,
            "data       streamed: host memory at most {} (the batches in flight; {} workers, {} batches ahead)",
            gib(data.host_bytes),
            data.workers,
            data.prefetch_batches
        )?;
    } else {
        writeln!(out, "data       held in host memory: {}", gib(data.host_bytes))?;
    }
    writeln!(out, "ranks      {ranks}: bytes each rank holds (distributed.shard: {})", cfg.distributed.shard.name())?;
    for c in &per_rank {
        writeln!(
            out,
            "  {:24} weights {}, gradients {}, optimizer state {}: {}",
            c.shard,
            gib(c.weights),
            gib(c.gradients),
            gib(c.optimizer),
            gib(c.total())
        )?;
    }
    writeln!(out, "  auto would choose {auto}: {auto_reason}")?;
    if let Some(m) = measured {
        let opt = |b: Option<u64>| b.map_or("n/a".to_string(), gib);
        writeln!(
            out,
            "measured   {} in {:.3} s; host peak +{}; device peak {} (model {})",
            m.strategy.name(),
            m.seconds,
            opt(m.host_peak_above_start_bytes),
            opt(m.device_peak_allocated_bytes),
            opt(m.device_allocated_before_bytes)
        )?;
    }
    Ok(())
}
