//! Validation: every relation between keys that serde cannot express, checked once, after
//! the layers are merged; each error names its key. Nothing after this sees an unchecked
//! value.
//!
//! The rules are pure functions of the merged [`Config`], one per concern, listed in
//! `RULES` in the order they are checked; [`Config::validate`] reports the first broken one.

use super::error::ConfigError;
use super::schema::*;
use crate::data::config::DataKind;
use crate::data::transforms::Pipeline;
use crate::model::config::ModelKind;
use crate::schedule::ScheduleKind;

/// The largest learning rate accepted: far above any in use (large-batch SGD with linear
/// scaling peaks in the tens), low enough that a typo such as `1e308` is caught.
pub const MAX_LR: f64 = 100.0;

/// `run.threads` may be at most this many times the cores the process may use
/// (`std::thread::available_parallelism`): beyond one thread per hardware thread, libtorch's
/// intra-op pool only adds contention; the slack covers CPU quotas that hide cores.
pub const MAX_THREADS_PER_CORE: usize = 4;

/// A broken rule: the key at fault and what is wrong with its value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Invalid {
    key: &'static str,
    message: String,
}

/// `Err` naming `key`, for a rule to return.
fn invalid(key: &'static str, message: impl Into<String>) -> Result<(), Invalid> {
    Err(Invalid { key, message: message.into() })
}

/// One rule: a pure check of the merged configuration.
type Rule = fn(&Config) -> Result<(), Invalid>;

/// The rules, in the order they are checked: the first broken one is reported.
const RULES: &[Rule] = &[
    training_length,
    early_stopping,
    optimizer,
    model_widths,
    steps_and_clipping,
    schedule,
    checkpoint_steps,
    model_shapes,
    data_source,
    data_transforms,
    memory,
    checkpoint_epochs,
    run,
    data_limits,
];

impl Config {
    /// Checks the relations serde cannot express. Every error names its key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        RULES
            .iter()
            .try_for_each(|rule| rule(self))
            .map_err(|Invalid { key, message }| ConfigError::Invalid { key: key.to_string(), message })
    }
}

fn training_length(c: &Config) -> Result<(), Invalid> {
    if c.training.epochs == 0 {
        return invalid("training.epochs", "must be at least 1");
    }
    if c.training.batch_size == 0 {
        return invalid("training.batch_size", "must be at least 1");
    }
    Ok(())
}

fn early_stopping(c: &Config) -> Result<(), Invalid> {
    let Some(e) = &c.training.early_stopping else { return Ok(()) };
    if e.patience == 0 {
        return invalid("training.early_stopping.patience", "must be at least 1 epoch");
    }
    if !(e.min_delta.is_finite() && e.min_delta >= 0.0) {
        return invalid("training.early_stopping.min_delta", format!("must be >= 0, got {}", e.min_delta));
    }
    Ok(())
}

fn optimizer(c: &Config) -> Result<(), Invalid> {
    let o = &c.training.optimizer;
    if !(o.lr.is_finite() && o.lr > 0.0 && o.lr <= MAX_LR) {
        return invalid("training.optimizer.lr", format!("must be in (0, {MAX_LR}], got {}", o.lr));
    }
    if let Some(b) = o.betas.iter().find(|b| !(0.0..1.0).contains(*b)) {
        return invalid("training.optimizer.betas", format!("each beta must be in [0, 1), got {b}"));
    }
    if !(o.eps.is_finite() && o.eps > 0.0) {
        return invalid("training.optimizer.eps", format!("must be a positive number, got {}", o.eps));
    }
    if !(o.weight_decay.is_finite() && o.weight_decay >= 0.0) {
        return invalid("training.optimizer.weight_decay", format!("must be >= 0, got {}", o.weight_decay));
    }
    if !(0.0..1.0).contains(&o.momentum) {
        return invalid("training.optimizer.momentum", format!("must be in [0, 1), got {}", o.momentum));
    }
    if !(0.0..=1.0).contains(&o.dampening) {
        return invalid("training.optimizer.dampening", format!("must be in [0, 1], got {}", o.dampening));
    }
    if o.nesterov && (o.momentum <= 0.0 || o.dampening != 0.0) {
        return invalid(
            "training.optimizer.nesterov",
            "Nesterov momentum needs momentum > 0 and dampening = 0 (as in torch.optim.SGD)",
        );
    }
    Ok(())
}

fn model_widths(c: &Config) -> Result<(), Invalid> {
    if c.model.mlp.hidden.contains(&0) {
        return invalid("model.mlp.hidden", "layer widths must be at least 1");
    }
    if c.model.cnn.channels.contains(&0) || c.model.cnn.hidden == 0 {
        return invalid("model.cnn", "channels and hidden must be at least 1");
    }
    Ok(())
}

fn steps_and_clipping(c: &Config) -> Result<(), Invalid> {
    let t = &c.training;
    if t.grad_accum_steps == 0 || t.grad_accum_steps > t.batch_size {
        return invalid(
            "training.grad_accum_steps",
            format!("must be between 1 and training.batch_size ({})", t.batch_size),
        );
    }
    if let Some(clip) = t.clip_grad_norm.filter(|clip| !(clip.is_finite() && *clip > 0.0)) {
        return invalid("training.clip_grad_norm", format!("must be a positive number, got {clip}"));
    }
    if t.log_every_n_steps == 0 {
        return invalid("training.log_every_n_steps", "must be at least 1");
    }
    Ok(())
}

fn schedule(c: &Config) -> Result<(), Invalid> {
    let (sch, lr) = (&c.training.schedule, c.training.optimizer.lr);
    if sch.kind == ScheduleKind::Step && (sch.step_size == 0 || !(sch.gamma.is_finite() && sch.gamma > 0.0)) {
        return invalid("training.schedule", "step needs step_size >= 1 and gamma > 0");
    }
    if !(sch.min_lr.is_finite() && sch.min_lr >= 0.0) {
        return invalid("training.schedule.min_lr", format!("must be >= 0, got {}", sch.min_lr));
    }
    if sch.kind == ScheduleKind::Cosine && sch.min_lr > lr {
        return invalid(
            "training.schedule.min_lr",
            format!("is {}, above training.optimizer.lr ({lr}): cosine decays from lr down to min_lr", sch.min_lr),
        );
    }
    // warmup_steps against the run's length needs the data's size: see `run::start`.
    Ok(())
}

fn checkpoint_steps(c: &Config) -> Result<(), Invalid> {
    if c.checkpoint.every_n_steps == Some(0) {
        return invalid("checkpoint.every_n_steps", "must be at least 1 when set");
    }
    Ok(())
}

fn model_shapes(c: &Config) -> Result<(), Invalid> {
    let g = &c.model.gpt;
    if g.context == 0 || g.width == 0 || g.depth == 0 || g.heads == 0 || !g.width.is_multiple_of(g.heads) {
        return invalid("model.gpt", "context, width, depth and heads must be >= 1, and heads must divide width");
    }
    if !(0.0..=1.0).contains(&c.model.init_min_loaded) {
        return invalid("model.init_min_loaded", format!("is {}; a share from 0 to 1", c.model.init_min_loaded));
    }
    if c.model.kind == ModelKind::Torchscript && c.model.torchscript.path.is_none() {
        return invalid("model.torchscript.path", "model.kind torchscript needs the exported module's path");
    }
    Ok(())
}

fn data_source(c: &Config) -> Result<(), Invalid> {
    let d = &c.data;
    if !matches!(d.kind, DataKind::Idx | DataKind::ImageFolder) && d.path.is_none() {
        return invalid("data.path", format!("data.kind {:?} needs a file", d.kind).to_lowercase());
    }
    if matches!(d.kind, DataKind::ImageFolder | DataKind::Webdataset) {
        let [h, w] = d.image_size;
        if h == 0 || w == 0 || h > 8192 || w > 8192 {
            return invalid("data.image_size", format!("each size must be in 1..=8192, got {:?}", d.image_size));
        }
        if !matches!(d.channels, 1 | 3) {
            return invalid("data.channels", format!("must be 1 (grayscale) or 3 (RGB), got {}", d.channels));
        }
    }
    if !(d.val_fraction > 0.0 && d.val_fraction < 1.0) {
        return invalid("data.val_fraction", format!("must be in (0, 1), got {}", d.val_fraction));
    }
    if d.prefetch_batches == 0 || d.prefetch_batches > 64 {
        return invalid("data.prefetch_batches", format!("must be in 1..=64, got {}", d.prefetch_batches));
    }
    if matches!(d.workers, Some(0)) || d.workers.is_some_and(|w| w > 256) {
        return invalid("data.workers", format!("must be in 1..=256, got {}", d.workers.unwrap_or(0)));
    }
    match (d.kind, c.model.gpt.vocab) {
        (_, Some(0)) => return invalid("model.gpt.vocab", "must be at least 1"),
        (DataKind::Text, Some(v)) if v < 256 => {
            return invalid("model.gpt.vocab", format!("text data is modelled byte by byte: 256 at least, got {v}"));
        }
        (DataKind::Tokens, _) if c.model.kind != ModelKind::Gpt => {
            return invalid("model.kind", "tokens data is a language-modelling corpus: it needs model.kind gpt");
        }
        _ => {}
    }
    Ok(())
}

/// The augmentation lists, each checked as the pipeline that will run it (after
/// `data_source` has checked the image size and channels they are checked against).
fn data_transforms(c: &Config) -> Result<(), Invalid> {
    let (d, t) = (&c.data, &c.data.transforms);
    if !matches!(d.kind, DataKind::ImageFolder | DataKind::Webdataset) {
        if t.train.is_empty() && t.eval.is_empty() {
            return Ok(());
        }
        let kind = format!("{:?}", d.kind).to_lowercase();
        return invalid(
            "data.transforms",
            format!("applies to images (data.kind image_folder or webdataset); data.kind is {kind}"),
        );
    }
    for (key, list) in [("data.transforms.train", &t.train), ("data.transforms.eval", &t.eval)] {
        if let Err(e) = Pipeline::new(list, d.image_size, d.channels) {
            return invalid(key, e.to_string());
        }
    }
    Ok(())
}

fn memory(c: &Config) -> Result<(), Invalid> {
    if !(0.0..1.0).contains(&c.memory.safety_margin) {
        return invalid("memory.safety_margin", format!("must be in [0, 1), got {}", c.memory.safety_margin));
    }
    match c.memory.constraints().check() {
        Err(why) => invalid("memory.strategy", why.to_string()),
        Ok(_) => Ok(()),
    }
}

fn checkpoint_epochs(c: &Config) -> Result<(), Invalid> {
    if c.checkpoint.every_n_epochs == 0 {
        return invalid("checkpoint.every_n_epochs", "must be at least 1");
    }
    Ok(())
}

fn run(c: &Config) -> Result<(), Invalid> {
    if matches!(&c.run.resume, ResumeSpec::Path(p) if p.as_os_str().is_empty()) {
        return invalid("run.resume", "is empty: give `auto`, `never` or a checkpoint's path");
    }
    if c.run.threads == Some(0) {
        return invalid("run.threads", "must be at least 1 (leave it unset for libtorch's default)");
    }
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    if let Some(n) = c.run.threads.filter(|&n| n as usize > MAX_THREADS_PER_CORE * cores) {
        return invalid(
            "run.threads",
            format!(
                "is {n}, more than {MAX_THREADS_PER_CORE} per core ({cores} cores here: at most {})",
                MAX_THREADS_PER_CORE * cores
            ),
        );
    }
    Ok(())
}

fn data_limits(c: &Config) -> Result<(), Invalid> {
    if c.data.train_limit == Some(0) || c.data.val_limit == Some(0) {
        return invalid("data", "train_limit and val_limit must be at least 1 when set");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn validation_names_the_offending_key() {
        let mut c = Config::default();
        c.training.optimizer.betas = [0.9, 1.0];
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("training.optimizer.betas"), "{err}");
    }

    fn resolve_sets(sets: &[&str]) -> Result<Config, String> {
        let request =
            super::super::Request { sets: sets.iter().map(|s| s.to_string()).collect(), ..Default::default() };
        super::super::resolve(&request).map(|r| r.config).map_err(|e| e.to_string())
    }

    #[test]
    fn the_issues_transforms_resolve_from_yaml() {
        let c = resolve_sets(&[
            "data.kind=image_folder",
            "data.transforms.train=[RandomResizedCrop: {size: 32, scale: [0.6, 1.0]}, RandomHorizontalFlip: {p: 0.5}, \
             Normalize: {mean: [0.5], std: [0.5]}]",
            "data.transforms.eval=[Resize: {size: 36}, CenterCrop: {size: 32}]",
        ])
        .unwrap();
        assert_eq!((c.data.transforms.train.len(), c.data.transforms.eval.len()), (3, 2));
        // A run folder's config.yaml (serde_yaml's form of the config) reads back the same.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(&file, serde_yaml::to_string(&c).unwrap()).unwrap();
        let request = super::super::Request { file: Some(file), ..Default::default() };
        assert_eq!(super::super::resolve(&request).unwrap().config, c);
    }

    #[test]
    fn transforms_refusals_name_the_list_and_the_item() {
        let image = "data.kind=image_folder";
        let cases: &[(&[&str], &str)] = &[
            (
                &[image, "data.transforms.train=[RandomHorizontalFlip: {p: 1.5}]"],
                "invalid `data.transforms.train`: RandomHorizontalFlip at index 0: p must be in [0, 1], got 1.5",
            ),
            (
                &[image, "data.channels=1", "data.transforms.eval=[Normalize: {mean: [0.5, 0.4, 0.3], std: [0.2]}]"],
                "invalid `data.transforms.eval`: Normalize at index 0: mean has 3 values: give one, or one per channel \
                 (data.channels is 1)",
            ),
            (
                &[image, "data.image_size=[24, 32]", "data.transforms.eval=[CenterCrop: {size: 32}]"],
                "invalid `data.transforms.eval`: CenterCrop at index 0 makes images [32, 32] (height, width), but \
                 data.image_size is [24, 32]",
            ),
            (
                &[image, "data.transforms.eval=[Resize: {size: 36}]"],
                "invalid `data.transforms.eval`: Resize at index 0 sets only the smaller edge",
            ),
            (
                &["data.transforms.eval=[Resize: {size: [32, 32]}]"],
                "invalid `data.transforms`: applies to images (data.kind image_folder or webdataset); data.kind is idx",
            ),
            (
                &[image, "data.transforms.train=[RandomCrop: {size: 32}]"],
                "invalid value for `data.transforms.train.0` (from --set data.transforms.train=[RandomCrop: {size: \
                 32}]): `RandomCrop` is not one of RandomResizedCrop, RandomHorizontalFlip, Resize, CenterCrop, \
                 Normalize, ColorJitter (did you mean `RandomResizedCrop`?)",
            ),
            (
                &[image, "data.transforms.train=[RandomHorizontalFlip: {prob: 1}]"],
                "unknown key `data.transforms.train.0.RandomHorizontalFlip.prob`",
            ),
            (
                &[image, "data.transforms.eval=[{CenterCrop: {size: 3}, Resize: {size: 3}}]"],
                "`CenterCrop` and `Resize` are in one list item: give each transform its own `- ` item",
            ),
            (
                &[image, "data.transforms.eval=[CenterCrop: {size: big}]"],
                "invalid value for `data.transforms.eval.0.CenterCrop.size`",
            ),
        ];
        for (sets, message) in cases {
            let e = resolve_sets(sets).unwrap_err();
            assert!(e.contains(message), "{sets:?}: {e}");
        }
    }
}
