//! Data-parallel runs through the real binary on loopback (Gloo on the CPU): started by the
//! real `torchrun --no-python` from the torch virtualenv, or as two processes with Slurm's
//! variables, as `srun` would. Each compares checkpoints with a single-process run that
//! takes the same samples per step.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use train::checkpoint::CheckpointFile;

/// Examples in the generated training set: 10 global batches of 32 and a short one of 9,
/// shared 5/4 between two ranks; with a global batch of 4 (the slow tests), 82 batches and
/// one of a single example, which leaves rank 1 nothing to train on in that step.
const TRAIN: usize = 329;

fn workspace() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    common::make_dataset(&dir.path().join("data"), TRAIN, 64);
    dir
}

/// `--set` arguments for a tiny run: one epoch, one thread per rank (2 cores), a short
/// timeout so a lost rank is noticed quickly.
fn sets(ws: &Path, batch: u32, extra: &[&str]) -> Vec<String> {
    let mut s = vec![
        format!("data.dir={}", ws.join("data").display()),
        "model.mlp.hidden=[32]".into(),
        format!("training.batch_size={batch}"),
        "training.epochs=1".into(),
        "run.device=cpu".into(),
        "run.threads=1".into(),
        "distributed.timeout=20s".into(),
    ];
    s.extend(extra.iter().map(|e| e.to_string()));
    s
}

fn args(out: &Path, sets: &[String]) -> Vec<String> {
    let mut a = vec!["--output-dir".to_string(), out.display().to_string()];
    for s in sets {
        a.push("--set".into());
        a.push(s.clone());
    }
    a
}

fn binary() -> PathBuf {
    assert_cmd::cargo::cargo_bin("train")
}

/// A command for `train` with a clean environment of launcher and `TRAIN_*` variables.
fn command(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    for (k, _) in std::env::vars() {
        let launcher = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"]
            .contains(&k.as_str())
            || k.starts_with("SLURM_")
            || k.starts_with("TORCHELASTIC_");
        if launcher || k.starts_with("TRAIN_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("RUST_LOG", "info");
    cmd
}

/// A free TCP port on loopback (released again, so a race with another program is possible
/// but unlikely).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// torchrun from the virtualenv scripts/setup.sh makes (next to `PYTHON_TORCH`).
fn torchrun() -> Option<PathBuf> {
    let python = std::env::var_os("PYTHON_TORCH").map(PathBuf::from).unwrap_or_else(|| {
        let cache = std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
        cache.join("train/torch-2.11.0/bin/python")
    });
    let t = python.parent()?.join("torchrun");
    if t.exists() {
        Some(t)
    } else {
        eprintln!("skipped: no torchrun at {} (run scripts/setup.sh or set PYTHON_TORCH)", t.display());
        None
    }
}

fn check(out: &Output, what: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{what} failed ({}):\n{stderr}", out.status);
    stderr
}

/// One process, no launcher.
fn single(out: &Path, sets: &[String]) -> String {
    let o = command(&binary()).args(args(out, sets)).output().unwrap();
    check(&o, "the single-process run")
}

/// Two ranks under `torchrun --no-python`.
fn torchrun_job(torchrun: &Path, out: &Path, sets: &[String]) -> Output {
    torchrun_ranks(torchrun, 2, out, sets)
}

/// `ranks` ranks under `torchrun --no-python`.
fn torchrun_ranks(torchrun: &Path, ranks: u32, out: &Path, sets: &[String]) -> Output {
    command(torchrun)
        .args(["--nproc-per-node", &ranks.to_string(), "--master-addr", "127.0.0.1", "--master-port"])
        .arg(free_port().to_string())
        .args(["--no-python"])
        .arg(binary())
        .args(args(out, sets))
        .output()
        .unwrap()
}

/// Two ranks started by hand with the variables `srun` sets, stderr to `log-<rank>`.
fn slurm_job(out: &Path, sets: &[String], port: u16) -> Vec<Child> {
    slurm_job_with(out, sets, port, &[])
}

/// [`slurm_job`], with `rank1_env` set for rank 1 only.
fn slurm_job_with(out: &Path, sets: &[String], port: u16, rank1_env: &[(&str, &str)]) -> Vec<Child> {
    slurm_job_in(out, sets, port, rank1_env, [None, None])
}

/// [`slurm_job_with`], each rank started in its folder of `cwds` (`None`: this process's).
fn slurm_job_in(
    out: &Path,
    sets: &[String],
    port: u16,
    rank1_env: &[(&str, &str)],
    cwds: [Option<&Path>; 2],
) -> Vec<Child> {
    (0..2)
        .map(|rank| {
            let log = std::fs::File::create(out.with_file_name(format!("log-{rank}"))).unwrap();
            let mut cmd = slurm_command(rank, out, sets, port);
            if rank == 1 {
                cmd.envs(rank1_env.iter().copied());
            }
            if let Some(cwd) = cwds[rank] {
                cmd.current_dir(cwd);
            }
            cmd.stderr(log).spawn().unwrap()
        })
        .collect()
}

/// `train` as rank `rank` of 2 with the variables `srun` sets, stdout discarded.
fn slurm_command(rank: usize, out: &Path, sets: &[String], port: u16) -> Command {
    let mut cmd = command(&binary());
    cmd.args(args(out, sets))
        .env("SLURM_PROCID", rank.to_string())
        .env("SLURM_NTASKS", "2")
        .env("SLURM_LOCALID", rank.to_string())
        .env("SLURM_NODEID", "0")
        .env("SLURM_JOB_NODELIST", "localhost")
        .env("SLURM_JOB_ID", "4242")
        .env("MASTER_PORT", port.to_string())
        .stdout(Stdio::null());
    cmd
}

fn log_of(out: &Path, rank: usize) -> String {
    std::fs::read_to_string(out.with_file_name(format!("log-{rank}"))).unwrap_or_default()
}

/// The model's float tensors in a checkpoint, by name.
fn weights(path: &Path) -> BTreeMap<String, Vec<f32>> {
    let file = CheckpointFile::open(path).unwrap();
    file.entries()
        .iter()
        .filter(|e| {
            e.dtype == safetensors::tensor::Dtype::F32 && !e.name.starts_with(train::checkpoint::OPTIMIZER_PREFIX)
        })
        .map(|e| {
            let bytes = file.read(&e.name).unwrap();
            (e.name.clone(), bytes.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
        })
        .collect()
}

fn latest(out: &Path) -> PathBuf {
    out.join("checkpoints/latest.safetensors")
}

/// Every weight of `a` within `tol` of `b`'s, relative to the tensor's largest magnitude.
fn assert_close(a: &Path, b: &Path, tol: f64) {
    let (wa, wb) = (weights(a), weights(b));
    assert_eq!(wa.keys().collect::<Vec<_>>(), wb.keys().collect::<Vec<_>>());
    assert!(!wa.is_empty());
    for (name, x) in &wa {
        let y = &wb[name];
        let scale = x.iter().map(|v| v.abs() as f64).fold(1e-12, f64::max);
        let worst = x.iter().zip(y).map(|(p, q)| (*p as f64 - *q as f64).abs()).fold(0.0, f64::max) / scale;
        assert!(
            worst <= tol,
            "{name}: relative difference {worst:e} > {tol:e} between {} and {}",
            a.display(),
            b.display()
        );
    }
}

/// The position a checkpoint holds: (epoch, step, batches into the epoch).
fn position(path: &Path) -> (u32, u64, u64) {
    let p = CheckpointFile::open(path).unwrap().meta().expect("our checkpoint").position;
    (p.epoch, p.step, p.batches_into_epoch)
}

#[test]
fn two_ranks_under_torchrun_match_one_rank_with_the_doubled_batch() {
    let Some(torchrun) = torchrun() else { return };
    let ws = workspace();
    let (one, two) = (ws.path().join("one"), ws.path().join("two"));
    single(&one, &sets(ws.path(), 32, &[]));
    // DDP's Reducer (the default), with two micro-batches per rank: only the second's
    // backward all-reduces.
    let two_sets = sets(ws.path(), 16, &["training.grad_accum_steps=2"]);
    let stderr = check(&torchrun_job(&torchrun, &two, &two_sets), "torchrun");
    assert!(stderr.contains("training.batch_size 16 per rank, global batch 32"), "{stderr}");
    assert_close(&latest(&one), &latest(&two), 1e-5);
    assert_eq!(position(&latest(&two)), position(&latest(&one)));
    // Only rank 0 wrote the metrics: one epoch line.
    let metrics = std::fs::read_to_string(two.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().filter(|l| l.contains("\"train_loss\"")).count(), 1, "{metrics}");
}

#[test]
fn two_ranks_with_slurm_variables_and_accumulation_match_one_rank() {
    let ws = workspace();
    let (one, two) = (ws.path().join("one"), ws.path().join("two"));
    // 1 rank × 32 in one micro-batch against 2 ranks × 16 in 4 micro-batches each, with the
    // gradients all-reduced after backward (not DDP's Reducer, which the other tests use).
    single(&one, &sets(ws.path(), 32, &[]));
    let two_sets = sets(ws.path(), 16, &["training.grad_accum_steps=4", "distributed.overlap=false"]);
    let mut ranks = slurm_job(&two, &two_sets, free_port());
    for (rank, child) in ranks.iter_mut().enumerate() {
        assert!(child.wait().unwrap().success(), "rank {rank}:\n{}", log_of(&two, rank));
    }
    assert_close(&latest(&one), &latest(&two), 1e-5);
}

#[test]
fn an_out_of_memory_retry_on_one_rank_keeps_the_ranks_in_step() {
    let ws = workspace();
    let (one, two) = (ws.path().join("one"), ws.path().join("two"));
    single(&one, &sets(ws.path(), 32, &[]));
    // Rank 1's step 3 fails once (the test build's fault injection): it halves its
    // micro-batch and retries alone, with DDP's Reducer armed only on the retry's last.
    let mut ranks = slurm_job_with(&two, &sets(ws.path(), 16, &[]), free_port(), &[("INJECT_FAULTS", "oom-step:3")]);
    for (rank, child) in ranks.iter_mut().enumerate() {
        assert!(child.wait().unwrap().success(), "rank {rank}:\n{}", log_of(&two, rank));
    }
    assert!(log_of(&two, 1).contains("halving the micro-batch"), "no retry on rank 1:\n{}", log_of(&two, 1));
    assert_close(&latest(&one), &latest(&two), 1e-5);
}

/// Starts a 2-rank job that saves `latest` every step, waits until `latest` is at least at
/// step 3 (mid-epoch), and returns the ranks.
fn job_past_step_three(out: &Path, sets: &[String], port: u16) -> Vec<Child> {
    let mut ranks = slurm_job(out, sets, port);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(latest(out).exists()
        && CheckpointFile::open(&latest(out)).is_ok_and(|f| f.meta().is_some_and(|m| m.position.step >= 3)))
    {
        for (rank, c) in ranks.iter_mut().enumerate() {
            assert!(c.try_wait().unwrap().is_none(), "rank {rank} ended early:\n{}", log_of(out, rank));
        }
        assert!(Instant::now() < deadline, "no checkpoint past step 3 within a minute");
        std::thread::sleep(Duration::from_millis(20));
    }
    ranks
}

/// Many small steps (three epochs of 83), each saving `latest`, so there is time to act
/// mid-run.
fn slow_sets(ws: &Path) -> Vec<String> {
    sets(
        ws,
        2,
        &["training.epochs=3", "checkpoint.every_n_steps=1", "distributed.timeout=10s", "checkpoint.async_save=false"],
    )
}

#[test]
fn a_killed_rank_ends_the_other_within_the_timeout_and_the_job_resumes_from_latest() {
    let ws = workspace();
    let (job, reference) = (ws.path().join("job"), ws.path().join("reference"));
    let s = slow_sets(ws.path());
    let mut ranks = job_past_step_three(&job, &s, free_port());
    ranks[1].kill().unwrap();
    ranks[1].wait().unwrap();
    let killed = Instant::now();
    let status = ranks[0].wait().unwrap();
    let waited = killed.elapsed();
    let log = log_of(&job, 0);
    assert!(!status.success(), "rank 0 carried on without rank 1:\n{log}");
    assert!(waited < Duration::from_secs(10 + 5), "rank 0 took {waited:?} to notice");
    assert!(log.contains("rank 1 (pid"), "the error does not name the lost rank:\n{log}");
    // `latest` is intact; the whole job started again continues from it.
    let check = CheckpointFile::open(&latest(&job)).unwrap().verify().unwrap();
    assert_eq!(check.integrity, train::checkpoint::Integrity::Checked);
    let (_, step, _) = position(&latest(&job));
    assert!(step >= 3, "latest is at step {step}");
    let mut again = slurm_job(&job, &s, free_port());
    for (rank, c) in again.iter_mut().enumerate() {
        assert!(c.wait().unwrap().success(), "resumed rank {rank}:\n{}", log_of(&job, rank));
    }
    for rank in 0..2 {
        assert!(!log_of(&job, rank).contains("starting fresh"), "rank {rank} did not resume:\n{}", log_of(&job, rank));
    }
    // And ends where one process with the global batch ends.
    single(&reference, &sets(ws.path(), 4, &["training.epochs=3"]));
    assert_close(&latest(&reference), &latest(&job), 1e-5);
}

#[test]
fn sigterm_to_both_ranks_saves_once_exits_75_and_resumes_as_if_uninterrupted() {
    let ws = workspace();
    let (job, whole) = (ws.path().join("job"), ws.path().join("whole"));
    let s = slow_sets(ws.path());
    let mut ranks = job_past_step_three(&job, &s, free_port());
    for c in &ranks {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    }
    for (rank, c) in ranks.iter_mut().enumerate() {
        assert_eq!(c.wait().unwrap().code(), Some(75), "rank {rank}:\n{}", log_of(&job, rank));
    }
    let (epoch, step, _) = position(&latest(&job));
    assert!(epoch < 3 && step < 3 * 83, "stopped before the end: epoch {epoch}, step {step}");
    let mut again = slurm_job(&job, &s, free_port());
    for (rank, c) in again.iter_mut().enumerate() {
        assert!(c.wait().unwrap().success(), "resumed rank {rank}:\n{}", log_of(&job, rank));
    }
    let mut uninterrupted = slurm_job(&whole, &s, free_port());
    for (rank, c) in uninterrupted.iter_mut().enumerate() {
        assert!(c.wait().unwrap().success(), "uninterrupted rank {rank}:\n{}", log_of(&whole, rank));
    }
    assert_eq!(weights(&latest(&job)), weights(&latest(&whole)), "resumed and uninterrupted runs differ");
}

#[test]
fn bad_rendezvous_settings_exit_2_with_the_variable_named() {
    let ws = workspace();
    let out = ws.path().join("out");
    let s = sets(ws.path(), 16, &[]);
    let run = |envs: &[(&str, String)]| {
        let mut cmd = command(&binary());
        cmd.args(args(&out, &s));
        for (k, v) in envs {
            cmd.env(k, v);
        }
        let o = cmd.output().unwrap();
        (o.status.code(), String::from_utf8_lossy(&o.stderr).to_string())
    };
    let (code, err) = run(&[("RANK", "0".into()), ("WORLD_SIZE", "2".into()), ("MASTER_PORT", "29500".into())]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("MASTER_ADDR"), "{err}");
    let (code, err) = run(&[
        ("RANK", "2".into()),
        ("WORLD_SIZE", "2".into()),
        ("MASTER_ADDR", "127.0.0.1".into()),
        ("MASTER_PORT", "29500".into()),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("RANK: is 2, not below WORLD_SIZE=2"), "{err}");
    // Rank 0 must host the store on a port another program holds.
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let (code, err) = run(&[
        ("RANK", "0".into()),
        ("WORLD_SIZE", "2".into()),
        ("MASTER_ADDR", "127.0.0.1".into()),
        ("MASTER_PORT", port.to_string()),
    ]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains(&format!("cannot meet the other ranks at 127.0.0.1:{port}")), "{err}");
    assert!(!out.join("checkpoints").exists(), "nothing is written before the rendezvous");
}

#[test]
fn config_show_says_which_rank_the_launcher_made_this_process() {
    let ws = workspace();
    let o = command(&binary())
        .args(["config", "show"])
        .env("SLURM_PROCID", "3")
        .env("SLURM_NTASKS", "8")
        .env("SLURM_LOCALID", "1")
        .env("SLURM_JOB_NODELIST", "gpu[07-10]")
        .env("SLURM_JOB_ID", "77")
        .current_dir(ws.path())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("rank 3 of 8 (local rank 1) from slurm"), "{out}");
    assert!(out.contains("gpu07:"), "{out}");
    let o = command(&binary()).args(["config", "show"]).current_dir(ws.path()).output().unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("single process"));
}

/// Three small models nobody here wrote the layers of, scripted with `torch.jit.script` in
/// `dir` with random weights: `unused.pt`, an LSTM classifier over the image's rows with a
/// `nn.Linear` that forward never calls (issue 17.1's repro); `branch.pt`, whose `extra`
/// layer runs only when the batch's first label is even, so ranks disagree on it from
/// step to step; `norm.pt`, with `nn.BatchNorm1d`.
fn export_models(dir: &Path) {
    let script = "import torch\n\
        from torch import nn\n\
        torch.manual_seed(0)\n\
        class Unused(nn.Module):\n\
        \x20   def __init__(self):\n\
        \x20       super().__init__()\n\
        \x20       self.lstm = nn.LSTM(28, 16, batch_first=True)\n\
        \x20       self.head = nn.Linear(16, 10)\n\
        \x20       self.unused = nn.Linear(4, 4)\n\
        \x20   def forward(self, x):\n\
        \x20       out, _ = self.lstm(x.reshape(x.size(0), 28, 28))\n\
        \x20       return self.head(out[:, -1])\n\
        class Branch(nn.Module):\n\
        \x20   def __init__(self):\n\
        \x20       super().__init__()\n\
        \x20       self.fc = nn.Linear(784, 32)\n\
        \x20       self.extra = nn.Linear(32, 32)\n\
        \x20       self.head = nn.Linear(32, 10)\n\
        \x20   def forward(self, x, labels):\n\
        \x20       h = torch.relu(self.fc(x.reshape(x.size(0), 784)))\n\
        \x20       if int(labels[0]) % 2 == 0:\n\
        \x20           h = h + torch.relu(self.extra(h))\n\
        \x20       return self.head(h)\n\
        class Norm(nn.Module):\n\
        \x20   def __init__(self):\n\
        \x20       super().__init__()\n\
        \x20       self.fc = nn.Linear(784, 32)\n\
        \x20       self.bn = nn.BatchNorm1d(32)\n\
        \x20       self.head = nn.Linear(32, 10)\n\
        \x20   def forward(self, x):\n\
        \x20       return self.head(torch.relu(self.bn(self.fc(x.reshape(x.size(0), 784)))))\n\
        for name, m in [('unused', Unused()), ('branch', Branch()), ('norm', Norm())]:\n\
        \x20   torch.jit.script(m).save(name + '.pt')\n";
    // From a file: torch.jit.script reads the classes' source.
    std::fs::write(dir.join("models.py"), script).unwrap();
    let out = Command::new(common::python()).current_dir(dir).arg("models.py").output().unwrap();
    assert!(out.status.success(), "exporting the models failed:\n{}", String::from_utf8_lossy(&out.stderr));
}

/// torchrun and a workspace holding [`export_models`]' modules; `None` (the test skipped)
/// where the venv has no torchrun.
fn torchrun_and_models() -> Option<(PathBuf, tempfile::TempDir)> {
    let torchrun = torchrun()?;
    let ws = workspace();
    export_models(ws.path());
    Some((torchrun, ws))
}

/// [`sets`] for the TorchScript module `name` exported by [`export_models`].
fn model_sets(ws: &Path, name: &str, batch: u32, extra: &[&str]) -> Vec<String> {
    let mut s = sets(ws, batch, extra);
    s.retain(|s| !s.starts_with("model.mlp"));
    s.push("model.kind=torchscript".into());
    s.push(format!("model.torchscript.path={}", ws.join(format!("{name}.pt")).display()));
    s
}

/// A job that must fail: torchrun's status and everything the ranks printed.
fn failed(out: &Output) -> String {
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "the job succeeded:\n{text}");
    text
}

#[test]
fn unused_parameters_under_the_reducer_stop_the_job_naming_them_or_with_the_key_match_one_rank() {
    let Some((torchrun, ws)) = torchrun_and_models() else { return };
    // Without distributed.find_unused_parameters: stopped at the first step, both
    // parameters and the key named, no checkpoint (it used to train wrong weights, exit 0).
    let refused = ws.path().join("refused");
    let text = failed(&torchrun_job(&torchrun, &refused, &model_sets(ws.path(), "unused", 16, &[])));
    for expected in ["step 1: unused.", "unused.bias", "unused.weight", "set distributed.find_unused_parameters: true"]
    {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    assert!(!latest(&refused).exists(), "a checkpoint was written");
    // With it: the Reducer's own search, and the same weights as one rank with the
    // doubled batch (the unused layer untouched in both).
    let (one, two) = (ws.path().join("one"), ws.path().join("two"));
    single(&one, &model_sets(ws.path(), "unused", 32, &[]));
    let two_sets = model_sets(ws.path(), "unused", 16, &["distributed.find_unused_parameters=true"]);
    let stderr = check(&torchrun_job(&torchrun, &two, &two_sets), "torchrun with find_unused_parameters");
    assert!(!stderr.contains("running-statistic"), "a warning about buffers this model lacks:\n{stderr}");
    // The epoch's file, not `latest`: this model's `latest` has a header of 4480 bytes, whose
    // length's first byte (0x80) train-ckpt's format detection takes for a pickle's.
    let epoch = |run: &Path| run.join("checkpoints/epoch-0001.safetensors");
    assert_close(&epoch(&one), &epoch(&two), 1e-5);
}

#[test]
fn parameters_used_on_some_ranks_only_stop_the_job_or_with_the_key_match_the_all_reduce_after_backward() {
    let Some((torchrun, ws)) = torchrun_and_models() else { return };
    // SGD without momentum or decay: a zero gradient and none leave a weight alike, so the
    // Reducer (no gradient where no rank used `extra`) and the all-reduce after backward
    // (zeros) must agree exactly.
    let branch = |extra: &[&str]| {
        let mut e = vec![
            "model.torchscript.labels=labels",
            "training.optimizer.kind=sgd",
            "training.optimizer.lr=0.1",
            "training.optimizer.momentum=0",
            "training.optimizer.weight_decay=0",
        ];
        e.extend_from_slice(extra);
        model_sets(ws.path(), "branch", 16, &e)
    };
    let refused = ws.path().join("refused");
    let text = failed(&torchrun_job(&torchrun, &refused, &branch(&[])));
    for expected in ["extra.weight", "received no gradient", "distributed.find_unused_parameters"] {
        assert!(text.contains(expected), "no {expected:?} in:\n{text}");
    }
    // With 4 micro-batches per rank too: `extra` used in an earlier one but in no rank's
    // last must still be averaged (the Reducer marks it used during the unarmed backwards).
    for n in ["1", "4"] {
        let accum = format!("training.grad_accum_steps={n}");
        let (found, after) = (ws.path().join(format!("found-{n}")), ws.path().join(format!("after-{n}")));
        let with_key = branch(&["distributed.find_unused_parameters=true", &accum]);
        check(&torchrun_job(&torchrun, &found, &with_key), "find_unused");
        check(&torchrun_job(&torchrun, &after, &branch(&["distributed.overlap=false", &accum])), "overlap=false");
        assert_close(&latest(&after), &latest(&found), 1e-5);
    }
}

#[test]
fn batch_norm_running_statistics_under_data_parallel_are_warned_of_once() {
    let Some((torchrun, ws)) = torchrun_and_models() else { return };
    let stderr =
        check(&torchrun_job(&torchrun, &ws.path().join("out"), &model_sets(ws.path(), "norm", 16, &[])), "norm");
    let warned: Vec<&str> = stderr.lines().filter(|l| l.contains("running-statistic")).collect();
    assert_eq!(warned.len(), 1, "{stderr}");
    assert!(warned[0].contains("WARN"), "{}", warned[0]);
    assert!(warned[0].contains("2 running-statistic buffer(s) (bn.running_mean, bn.running_var)"), "{}", warned[0]);
    // Validation was sharded over the ranks, each with rank 0's buffers: one process
    // evaluating the saved checkpoint (rank 0's buffers) gets the same figures.
    let sets = model_sets(ws.path(), "norm", 16, &[]);
    assert_validation_is_one_process(&latest(&ws.path().join("out")), &sets);
}

/// The validation figures a checkpoint records (a data-parallel job's sharded evaluation)
/// are those one process's `train eval` of it gets, with the job's `sets`.
fn assert_validation_is_one_process(ckpt: &Path, sets: &[String]) {
    let mut cmd = command(&binary());
    cmd.args(["eval", "--json", "--device", "cpu", "--checkpoint"]).arg(ckpt);
    for s in sets {
        cmd.args(["--set", s]);
    }
    let out = cmd.output().unwrap();
    check(&out, "train eval");
    let one: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let meta = CheckpointFile::open(ckpt).unwrap().meta().cloned().unwrap();
    let loss = one["loss"].as_f64().unwrap();
    assert!((meta.val_loss - loss).abs() <= 1e-6 * loss.abs(), "job {} vs one process {loss}", meta.val_loss);
    assert_eq!(Some(meta.val_accuracy), one["accuracy"].as_f64(), "accuracy");
}

#[test]
fn ranks_with_different_lr_or_batch_are_refused_with_the_key_named() {
    let ws = workspace();
    for (var, value, expected) in [
        ("TRAIN_TRAINING__OPTIMIZER__LR", "0.01", "training.optimizer.lr is 0.001 on rank 0 but 0.01 on rank 1"),
        ("TRAIN_TRAINING__BATCH_SIZE", "8", "training.batch_size is 128 on rank 0 but 8 on rank 1"),
    ] {
        let out = ws.path().join(format!("out-{value}"));
        // The batch from the environment (a `--set` would override it): rank 0 the default.
        let mut s = sets(ws.path(), 16, &[]);
        s.retain(|s| !s.starts_with("training.batch_size"));
        let mut ranks = slurm_job_with(&out, &s, free_port(), &[(var, value)]);
        for (rank, child) in ranks.iter_mut().enumerate() {
            let code = child.wait().unwrap().code();
            let log = log_of(&out, rank);
            assert_eq!(code, Some(2), "rank {rank} with {var}={value}:\n{log}");
            assert!(log.contains(expected), "rank {rank} does not name the key:\n{log}");
        }
        assert!(!out.exists(), "{} was written", out.display());
    }
}

/// Issue 19: every streamed kind (image folders, token files, `.npy` folders, WebDataset
/// shards), at 2 ranks under torchrun, stopped mid-epoch and resumed,
/// ends bit for bit where the uninterrupted 2-rank job ends, and within 1e-5 of one process
/// with the doubled batch. Each rank reads only its share of each batch.
#[test]
fn streamed_kinds_resume_exactly_at_two_ranks_and_match_one_rank() {
    let Some(torchrun) = torchrun() else { return };
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    common::run_python(&common::repo().join("tests/reference/make_npy_folders.py"), &[d.to_str().unwrap()]);
    common::run_python(&common::repo().join("tests/reference/make_webdataset.py"), &[d.to_str().unwrap()]);
    let text: Vec<u8> = (0..16 * 8 * 10 + 1).map(|i: u32| b"the cat sat on a mat. "[(i * 7 % 22) as usize]).collect();
    std::fs::write(d.join("t.bin"), text.iter().flat_map(|&b| u16::from(b).to_le_bytes()).collect::<Vec<u8>>())
        .unwrap();
    for (c, class) in ["a", "b", "c"].iter().enumerate() {
        std::fs::create_dir_all(d.join("imgs").join(class)).unwrap();
        for i in 0..12u32 {
            let img = image::RgbImage::from_fn(10, 10, |x, y| {
                image::Rgb([(x * 20 + i) as u8, (y * 20) as u8, (c as u32 * 100 + i) as u8])
            });
            img.save(d.join("imgs").join(class).join(format!("{i:02}.png"))).unwrap();
        }
    }
    let kinds: [(&str, Vec<String>); 4] = [
        (
            "image_folder",
            vec![
                "data.kind=image_folder".into(),
                format!("data.dir={}", d.join("imgs").display()),
                "data.image_size=[8, 8]".into(),
            ],
        ),
        (
            "tokens",
            vec![
                "data.kind=tokens".into(),
                format!("data.path={}", d.join("t.bin").display()),
                "model.kind=gpt".into(),
                "model.gpt={context: 16, width: 16, depth: 1, heads: 2, vocab: 256}".into(),
                // Adam turns the rounding noise of near-zero gradients (the attention biases
                // start at 0) into whole steps; SGD keeps the comparison with one rank exact.
                "training.optimizer={kind: sgd, lr: 0.1}".into(),
            ],
        ),
        ("npy", vec!["data.kind=npy".into(), format!("data.path={}", d.join("same").display())]),
        (
            "webdataset",
            vec![
                "data.kind=webdataset".into(),
                format!("data.path={}", d.join("shards").display()),
                "data.image_size=[8, 8]".into(),
            ],
        ),
    ];
    for (kind, data) in kinds {
        let base = |batch: u32, extra: &[&str]| {
            let mut s = vec![
                "model.mlp.hidden=[16]".to_string(),
                format!("training.batch_size={batch}"),
                "training.epochs=2".into(),
                "run.device=cpu".into(),
                "run.threads=1".into(),
                "distributed.timeout=20s".into(),
            ];
            s.extend(data.iter().cloned());
            s.extend(extra.iter().map(|e| e.to_string()));
            s
        };
        let (one, full, cut) =
            (d.join(format!("{kind}-one")), d.join(format!("{kind}-full")), d.join(format!("{kind}-cut")));
        single(&one, &base(8, &[]));
        check(&torchrun_job(&torchrun, &full, &base(4, &[])), &format!("{kind}: the 2-rank job"));
        check(&torchrun_job(&torchrun, &cut, &base(4, &["training.max_steps=5"])), &format!("{kind}: the cut job"));
        assert_eq!(position(&latest(&cut)).1, 5, "{kind}");
        check(&torchrun_job(&torchrun, &cut, &base(4, &["data.workers=2"])), &format!("{kind}: the resumed job"));
        assert_eq!(weights(&latest(&full)), weights(&latest(&cut)), "{kind}: resumed at 2 ranks, not bit for bit");
        assert_close(&latest(&one), &latest(&full), 1e-5);
    }
}

/// Ranks whose data differ under the same settings (a relative `data.dir` read from another
/// folder on each, as per-node copies of a data set can differ) would each shuffle their own
/// count and train on different permutations, with exit 0: both are refused, exit 2, with
/// both counts named.
#[test]
fn ranks_that_found_different_data_are_refused_naming_both_counts() {
    let ws = tempfile::tempdir().unwrap();
    let d = ws.path();
    for (node, per_class) in [("node0", 10u32), ("node1", 9)] {
        for class in ["a", "b"] {
            let dir = d.join(node).join("imgs").join(class);
            std::fs::create_dir_all(&dir).unwrap();
            for i in 0..per_class {
                image::RgbImage::from_fn(8, 8, |x, y| image::Rgb([(x * 30) as u8, (y * 30) as u8, i as u8]))
                    .save(dir.join(format!("{i}.png")))
                    .unwrap();
            }
        }
    }
    let sets: Vec<String> = [
        "data.kind=image_folder",
        "data.dir=imgs",
        "data.image_size=[8, 8]",
        "data.val_fraction=0.2",
        "model.mlp.hidden=[8]",
        "training.batch_size=4",
        "training.epochs=1",
        "run.device=cpu",
        "run.threads=1",
        "distributed.timeout=20s",
    ]
    .map(String::from)
    .to_vec();
    let out = d.join("out");
    let children = slurm_job_in(&out, &sets, free_port(), &[], [Some(&d.join("node0")), Some(&d.join("node1"))]);
    for (rank, mut child) in children.into_iter().enumerate() {
        let status = child.wait().unwrap();
        let log = log_of(&out, rank);
        assert_eq!(status.code(), Some(2), "rank {rank}:\n{log}");
        assert!(
            log.contains("rank 0 found 16 training and 4 validation examples, rank 1 14 and 4"),
            "rank {rank}:\n{log}"
        );
    }
}

/// Waits for every rank of a job; each must succeed (`what` names the job in the failure).
fn succeed(mut ranks: Vec<Child>, out: &Path, what: &str) {
    for (rank, c) in ranks.iter_mut().enumerate() {
        assert!(c.wait().unwrap().success(), "{what} rank {rank}:\n{}", log_of(out, rank));
    }
}

/// The index of a run's sharded `latest`.
fn index(out: &Path) -> PathBuf {
    out.join("checkpoints/latest.index.json")
}

/// Each rank's `name=<integer>` from its "per-rank state after the first step" line.
fn state_figures(stderr: &str, name: &str) -> Vec<u64> {
    stderr
        .lines()
        .filter(|l| l.contains("per-rank state after the first step"))
        .map(|l| {
            let at = l.find(&format!(" {name}=")).unwrap_or_else(|| panic!("no {name} in {l}")) + name.len() + 2;
            l[at..].split(|c: char| !c.is_ascii_digit()).next().unwrap().parse().unwrap()
        })
        .collect()
}

#[test]
fn sharded_optimizer_state_and_gradients_match_one_rank_with_the_doubled_batch() {
    let Some(torchrun) = torchrun() else { return };
    let ws = workspace();
    // AdamW (the default) with clipping that acts (the gradients' norm starts above 0.1).
    let clip = "training.clip_grad_norm=0.1";
    let one = ws.path().join("one");
    single(&one, &sets(ws.path(), 32, &[clip]));
    for stage in ["optimizer", "optimizer_and_gradients"] {
        let two = ws.path().join(stage);
        let shard = format!("distributed.shard={stage}");
        let two_sets = sets(ws.path(), 16, &[clip, &shard, "training.grad_accum_steps=2"]);
        let stderr = check(&torchrun_job(&torchrun, &two, &two_sets), stage);
        assert!(!latest(&two).exists(), "{stage}: a replicated `latest` beside the sharded one");
        assert_close(&latest(&one), &index(&two), 1e-5);
        assert_eq!(position(&index(&two)), position(&latest(&one)));
        let verified = CheckpointFile::open(&index(&two)).unwrap().verify().unwrap();
        assert_eq!(verified.integrity, train::checkpoint::Integrity::Checked);
        assert_validation_is_one_process(&index(&two), &two_sets);
        // The epoch checkpoint's shards hold no optimizer state
        // (memory.save_optimizer_in_epoch_checkpoints is false by default); latest's do.
        let epoch = CheckpointFile::open(&two.join("checkpoints/epoch-0001.index.json")).unwrap();
        assert!(!epoch.meta().unwrap().has_optimizer_state);
        assert!(epoch.entries().iter().all(|e| e.role == train::checkpoint::Role::Model), "{:?}", epoch.names());
        let latest_roles = CheckpointFile::open(&index(&two)).unwrap();
        assert!(latest_roles.entries().iter().any(|e| e.role == train::checkpoint::Role::Optimizer));
        // `train ckpt convert` consolidates it into one file with the same tensors.
        let one_file = two.join("consolidated.tckpt");
        let out = command(&binary()).args(["ckpt", "convert"]).arg(index(&two)).arg(&one_file).output().unwrap();
        check(&out, "ckpt convert");
        let (sharded, whole) = (CheckpointFile::open(&index(&two)).unwrap(), CheckpointFile::open(&one_file).unwrap());
        assert_eq!(whole.verify().unwrap().integrity, train::checkpoint::Integrity::Checked);
        assert_eq!(sharded.names(), whole.names());
        for name in sharded.names() {
            assert_eq!(sharded.read(name).unwrap(), whole.read(name).unwrap(), "{name}");
        }
        // Stripping in place would write one file over the index: refused, the index intact.
        let out = command(&binary()).args(["ckpt", "strip"]).arg(index(&two)).output().unwrap();
        assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("sharded checkpoint"));
        assert!(CheckpointFile::open(&index(&two)).unwrap().verify().is_ok());
        let out = command(&binary()).args(["ckpt", "inspect", "--json"]).arg(index(&two)).output().unwrap();
        let inspected: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!((inspected["format"].as_str(), inspected["shard_files"].as_u64()), (Some("sharded"), Some(2)));
        // Each rank holds about half of the optimizer state (AdamW: twice the parameters'
        // bytes replicated), and under ZeRO-2 half of the gradients too.
        let params = state_figures(&stderr, "parameter_bytes");
        let (state, grads) =
            (state_figures(&stderr, "optimizer_state_bytes"), state_figures(&stderr, "gradient_bytes"));
        assert_eq!(params.len(), 2, "{stderr}");
        for r in 0..2 {
            assert!(
                state[r] as f64 <= 0.55 * 2.0 * params[r] as f64,
                "{stage}: rank {r} holds {} of {}",
                state[r],
                params[r]
            );
            let whole = if stage == "optimizer" { 1.0 } else { 0.55 };
            assert!(grads[r] as f64 <= whole * params[r] as f64, "{stage}: rank {r} gradients {}", grads[r]);
        }
    }
}

#[test]
fn shard_auto_shards_when_replicated_state_would_not_fit_and_says_why() {
    let Some(torchrun) = torchrun() else { return };
    let ws = workspace();
    // The mlp holds 0.1 MB of weights: replicated with AdamW 0.4 MB a rank, ZeRO-1 0.3 MB.
    // With 0.6 MB free, auto's 60% (0.36 MB) fits ZeRO-1 only.
    let out = ws.path().join("auto");
    let s = sets(ws.path(), 16, &["distributed.shard=auto", "memory.assume_free_vram=600KB"]);
    let stderr = check(&torchrun_job(&torchrun, &out, &s), "auto");
    assert!(stderr.contains("distributed.shard: auto chose optimizer: replicated state"), "{stderr}");
    let params = state_figures(&stderr, "parameter_bytes");
    let state = state_figures(&stderr, "optimizer_state_bytes");
    assert!((0..2).all(|r| state[r] as f64 <= 0.55 * 2.0 * params[r] as f64), "{state:?} of {params:?}");
    assert!(index(&out).exists());
    // With room to spare it stays replicated.
    let roomy = ws.path().join("roomy");
    let s = sets(ws.path(), 16, &["distributed.shard=auto", "memory.assume_free_vram=1GB"]);
    let stderr = check(&torchrun_job(&torchrun, &roomy, &s), "auto, roomy");
    assert!(stderr.contains("distributed.shard: auto chose none"), "{stderr}");
    assert!(latest(&roomy).exists());
}

#[test]
fn a_sharded_checkpoint_resumes_under_one_two_and_three_ranks_and_a_replicated_one_under_sharding() {
    let Some(torchrun) = torchrun() else { return };
    let ws = workspace();
    let shard = "distributed.shard=optimizer";
    // A global batch of 48: 1 × 48, 2 × 24, 3 × 16.
    let run = |out: &Path, ranks: u32, epochs: u32, sharded: bool| {
        let epochs = format!("training.epochs={epochs}");
        let mut extra = vec![epochs.as_str()];
        if sharded {
            extra.push(shard);
        }
        let s = sets(ws.path(), 48 / ranks, &extra);
        if ranks == 1 {
            single(out, &s)
        } else {
            check(&torchrun_ranks(&torchrun, ranks, out, &s), &format!("{ranks} ranks"))
        }
    };
    let (first, whole) = (ws.path().join("first"), ws.path().join("whole"));
    run(&first, 2, 1, true);
    run(&whole, 2, 2, true);
    let copy = |to: &Path| {
        std::fs::create_dir_all(to.join("checkpoints")).unwrap();
        for e in std::fs::read_dir(first.join("checkpoints")).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), to.join("checkpoints").join(e.file_name())).unwrap();
        }
    };
    for ranks in [1, 2, 3] {
        let resumed = ws.path().join(format!("resumed-{ranks}"));
        copy(&resumed);
        let log = run(&resumed, ranks, 2, true);
        let got = if ranks == 1 { latest(&resumed) } else { index(&resumed) };
        assert_close(&index(&whole), &got, 1e-5);
        assert_eq!(position(&got), position(&index(&whole)), "{ranks} ranks");
        assert!(log.contains("resumed") && !log.contains("optimizer starts fresh"), "{ranks} ranks: {log}");
    }
    // And back: a replicated checkpoint of one process resumes under two sharded ranks.
    let (replicated, whole_one) = (ws.path().join("replicated"), ws.path().join("whole-one"));
    run(&replicated, 1, 1, false);
    run(&whole_one, 1, 2, false);
    let log = run(&replicated, 2, 2, true);
    assert!(!log.contains("optimizer starts fresh"), "{log}");
    assert_close(&latest(&whole_one), &index(&replicated), 1e-5);
}

#[test]
fn sharded_ranks_given_their_own_output_dirs_write_their_shards_into_rank_zero_s_folder() {
    let ws = workspace();
    let s = sets(ws.path(), 16, &["distributed.shard=optimizer"]);
    let port = free_port();
    // `--output-dir job`, relative: each rank's own folder, as run.output_dir may differ.
    let ranks: Vec<Child> = (0..2)
        .map(|rank| {
            let cwd = ws.path().join(format!("node{rank}"));
            std::fs::create_dir_all(&cwd).unwrap();
            let log = std::fs::File::create(ws.path().join(format!("log-{rank}"))).unwrap();
            slurm_command(rank, Path::new("job"), &s, port).current_dir(cwd).stderr(log).spawn().unwrap()
        })
        .collect();
    succeed(ranks, &ws.path().join("job"), "own folders");
    let index = ws.path().join("node0/job/checkpoints/latest.index.json");
    assert_eq!(
        CheckpointFile::open(&index).unwrap().verify().unwrap().integrity,
        train::checkpoint::Integrity::Checked
    );
    assert!(!ws.path().join("node1/job/checkpoints").exists(), "rank 1 wrote into its own folder");
}

#[test]
fn a_rank_killed_in_a_sharded_save_leaves_latest_complete_and_the_job_resumes_from_it() {
    let ws = workspace();
    let (job, reference) = (ws.path().join("job"), ws.path().join("reference"));
    let mut s = slow_sets(ws.path());
    s.push("distributed.shard=optimizer".into());
    // Rank 1 is SIGKILLed in step 5's save, its shard written, before rank 0 hears of it.
    let mut ranks = slurm_job_with(&job, &s, free_port(), &[("INJECT_FAULTS", "kill-in-sharded-save:5")]);
    let killed = ranks[1].wait().unwrap();
    assert_eq!(std::os::unix::process::ExitStatusExt::signal(&killed), Some(libc::SIGKILL), "{}", log_of(&job, 1));
    assert!(!ranks[0].wait().unwrap().success(), "rank 0 carried on:\n{}", log_of(&job, 0));
    // `latest` is step 4's, complete and sound; the dead save's shard is named by no index.
    let file = CheckpointFile::open(&index(&job)).unwrap();
    assert_eq!(file.verify().unwrap().integrity, train::checkpoint::Integrity::Checked);
    assert_eq!(position(&index(&job)).1, 4);
    let names: Vec<String> = std::fs::read_dir(job.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.iter().any(|n| n.contains("step-00000005.rank-00001")), "{names:?}");
    succeed(slurm_job(&job, &s, free_port()), &job, "resumed");
    single(&reference, &sets(ws.path(), 4, &["training.epochs=3"]));
    assert_close(&latest(&reference), &index(&job), 1e-5);
}

#[test]
fn sigterm_to_both_sharded_ranks_exits_75_and_resumes_as_if_uninterrupted() {
    let ws = workspace();
    let (job, whole) = (ws.path().join("job"), ws.path().join("whole"));
    let mut s = slow_sets(ws.path());
    s.push("distributed.shard=optimizer_and_gradients".into());
    let mut ranks = slurm_job(&job, &s, free_port());
    let deadline = Instant::now() + Duration::from_secs(60);
    while !CheckpointFile::open(&index(&job)).is_ok_and(|f| f.meta().is_some_and(|m| m.position.step >= 3)) {
        assert!(Instant::now() < deadline, "no sharded checkpoint past step 3 within a minute");
        std::thread::sleep(Duration::from_millis(20));
    }
    for c in &ranks {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
    }
    for (rank, c) in ranks.iter_mut().enumerate() {
        assert_eq!(c.wait().unwrap().code(), Some(75), "rank {rank}:\n{}", log_of(&job, rank));
    }
    succeed(slurm_job(&job, &s, free_port()), &job, "resumed");
    succeed(slurm_job(&whole, &s, free_port()), &whole, "uninterrupted");
    assert_eq!(weights(&index(&job)), weights(&index(&whole)), "resumed and uninterrupted runs differ");
}
