//! [`Dist`]: what a run asks of the process group, with errors that say what was lost.

use std::cell::{Cell, RefCell};

use tch::{Device, Kind, Tensor};

use super::config::{BackendChoice, DistributedConfig};
use super::engine;
use super::env::Launch;
use super::error::{name_list, DistError, Failure};
use super::peer::{hostname, process_alive, Peer};

/// Gradient buckets of at most this size go out together: DDP's default `bucket_cap_mb`.
pub const BUCKET_BYTES: i64 = 25 << 20;

/// The store key under which a rank that stops the job on its own (a parameter without a
/// gradient) leaves its reason, for the ranks whose collectives then fail to report.
const FAILURE_KEY: &str = "failure";

/// This process's membership of a data-parallel job.
pub struct Dist {
    group: engine::ProcessGroup,
    /// Where this rank stands.
    pub launch: Launch,
    /// The device collectives' small tensors live on (NCCL needs CUDA tensors).
    device: Device,
    peers: Vec<Option<Peer>>,
    host: String,
    /// DDP's Reducer, when attached: gradients are averaged during backward.
    reducer: RefCell<Option<Attached>>,
    /// With the Reducer: the step and the examples of its global batch ([`Dist::begin_step`]).
    global_n: Cell<Option<(u64, f64)>>,
    /// Where the steps' time between the ranks went, since [`Dist::take_times`].
    times: Cell<CommTimes>,
}

/// The parameters DDP's Reducer was attached to, with their names (to name the ones that
/// get no gradient), and whether it searches for unused ones itself.
struct Attached {
    params: Vec<Tensor>,
    names: Vec<String>,
    find_unused: bool,
}

/// Seconds spent, summed over steps, in what a data-parallel step adds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CommTimes {
    /// Steps counted.
    pub steps: u64,
    /// The last micro-batch's backward (with the Reducer, its all-reduce waits are inside).
    pub last_backward: f64,
    /// The gradient all-reduce after backward (without the Reducer).
    pub allreduce_after: f64,
    /// The small all-reduces: the step's loss and example count with the stop flag (one
    /// all-reduce a step), and any others (ZeRO-2's clipping norm).
    pub small: f64,
    /// Sharded gradients (ZeRO-2): the reduce-scatter after backward.
    pub reduce_scatter: f64,
    /// Sharded optimizer state (ZeRO-1 and 2): the all-gather of the updated parameters.
    pub allgather: f64,
}

impl Dist {
    /// Meets the other ranks and forms the process group for `device`.
    pub fn connect(launch: Launch, cfg: &DistributedConfig, device: Device) -> Result<Self, DistError> {
        let backend = match (cfg.backend, device) {
            (BackendChoice::Auto | BackendChoice::Nccl, Device::Cuda(i)) => engine::Backend::Nccl { device: i as i32 },
            (BackendChoice::Auto | BackendChoice::Gloo, Device::Cpu) => engine::Backend::Gloo,
            (BackendChoice::Nccl, _) => {
                return Err(DistError::Backend("nccl needs the run on CUDA; use gloo (or auto) on the CPU".into()))
            }
            (BackendChoice::Gloo, _) => {
                return Err(DistError::Backend(
                    "gloo here all-reduces CPU tensors; use nccl (or auto) for a run on CUDA".into(),
                ))
            }
            (_, other) => return Err(DistError::Backend(format!("no backend for device {other:?}"))),
        };
        let prefix = format!("train/attempt-{}", launch.restart);
        let r = engine::Rendezvous {
            host: &launch.master_addr,
            port: launch.master_port,
            rank: launch.rank,
            world: launch.world,
            hosts_store: launch.hosts_store(),
            timeout: cfg.timeout.0,
            prefix: &prefix,
        };
        let group = engine::ProcessGroup::connect(&r, backend).map_err(|e| match e {
            engine::ConnectError::Store(source) => DistError::Rendezvous {
                addr: launch.master_addr.clone(),
                port: launch.master_port,
                rank: launch.rank,
                world: launch.world,
                timeout: cfg.timeout,
                source,
            },
            engine::ConnectError::NoNccl(m) => DistError::NoNccl(m),
            engine::ConnectError::Group(e) => DistError::Lost {
                rank: launch.rank,
                what: "forming the process group".into(),
                lost: String::new(),
                source: Failure::Engine(e.into()),
            },
        })?;
        let host = hostname();
        let mut dist = Self {
            group,
            device,
            peers: Vec::new(),
            host,
            launch,
            reducer: RefCell::new(None),
            global_n: Cell::new(None),
            times: Cell::new(CommTimes::default()),
        };
        dist.exchange_peers()?;
        tracing::info!(
            rank = dist.launch.rank,
            world = dist.launch.world,
            local_rank = dist.launch.local_rank,
            backend = ?backend,
            store = format_args!("{}:{}", dist.launch.master_addr, dist.launch.master_port),
            "data parallel: joined the process group"
        );
        Ok(dist)
    }

    fn exchange_peers(&mut self) -> Result<(), DistError> {
        let me = format!("{} {}", self.host, std::process::id());
        self.group.set(&format!("peer/{}", self.launch.rank), me.as_bytes()).map_err(|m| self.lost("the store", m))?;
        // Small jobs only: a thousand ranks would make this a thousand store reads.
        for r in 0..self.launch.world.min(256) {
            let v = self.group.get(&format!("peer/{r}")).map_err(|m| self.lost("the store", m))?;
            let v = String::from_utf8_lossy(&v).into_owned();
            self.peers.push(v.rsplit_once(' ').and_then(|(h, p)| Some(Peer { host: h.into(), pid: p.parse().ok()? })));
        }
        Ok(())
    }

    /// A failure of `what`, naming a rank on this host whose process has exited. The peer
    /// that reset the connection may take a moment to die after it did, so the look is
    /// repeated for up to a second (this is the failure path only).
    fn lost(&self, what: &str, source: impl Into<Failure>) -> DistError {
        let mut gone = Vec::new();
        for _ in 0..10 {
            gone = self
                .peers
                .iter()
                .enumerate()
                .filter_map(|(r, p)| {
                    let p = p.as_ref()?;
                    (p.host == self.host && !process_alive(p.pid)).then(|| format!("rank {r} (pid {}) is gone", p.pid))
                })
                .collect();
            if !gone.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let mut lost = if gone.is_empty() { String::new() } else { format!(": {}", gone.join(", ")) };
        // A rank that stopped the job on purpose said why (a store on a lost host does not answer).
        if let Ok(true) = self.group.check(FAILURE_KEY) {
            if let Ok(why) = self.group.get(FAILURE_KEY) {
                lost.push_str(&format!(" (it stopped: {})", String::from_utf8_lossy(&why)));
            }
        }
        DistError::Lost { rank: self.launch.rank, what: what.into(), lost, source: source.into() }
    }

    /// This rank.
    pub fn rank(&self) -> u32 {
        self.launch.rank
    }

    /// The number of ranks.
    pub fn world(&self) -> u32 {
        self.launch.world
    }

    /// Whether this rank writes the run folder (rank 0).
    pub fn is_leader(&self) -> bool {
        self.launch.rank == 0
    }

    /// Sums every parameter's gradient, each scaled by `share` first (this rank's part of
    /// the global batch), over the ranks.
    pub fn reduce_gradients(&self, params: &[Tensor], share: f64) -> Result<(), DistError> {
        let start = std::time::Instant::now();
        self.group.allreduce_grads(params, share, BUCKET_BYTES).map_err(|m| self.lost("the gradient all-reduce", m))?;
        self.add_time(|t| t.allreduce_after += start.elapsed().as_secs_f64());
        Ok(())
    }

    /// ZeRO-2: the gradients of `params`, in the buckets `ends` gives, scaled by `scale`
    /// (this rank's share of the global batch) and summed over the ranks into this rank's
    /// shard buffers `outs`; the whole gradients are released.
    pub fn reduce_scatter_grads(
        &self,
        params: &[Tensor],
        ends: &[i64],
        outs: &[Tensor],
        scale: f64,
    ) -> Result<(), DistError> {
        let start = std::time::Instant::now();
        self.group
            .reduce_scatter_grads(params, ends, outs, scale)
            .map_err(|m| self.lost("the gradient reduce-scatter", m))?;
        self.add_time(|t| t.reduce_scatter += start.elapsed().as_secs_f64());
        Ok(())
    }

    /// Sharded optimizer state: every rank's updated shard of `params` (buckets `ends`)
    /// gathered into every rank's parameters.
    pub fn allgather_params(&self, params: &[Tensor], ends: &[i64]) -> Result<(), DistError> {
        let start = std::time::Instant::now();
        self.group.allgather_params(params, ends).map_err(|m| self.lost("the parameter all-gather", m))?;
        self.add_time(|t| t.allgather += start.elapsed().as_secs_f64());
        Ok(())
    }

    /// Hands the gradients of `params` (named) to DDP's Reducer, which averages them during
    /// backward (`distributed.overlap`); [`Dist::reduce_gradients`] is then not used.
    /// `find_unused`: `distributed.find_unused_parameters`.
    pub fn attach_reducer(&self, params: Vec<(String, Tensor)>, find_unused: bool) -> Result<(), DistError> {
        let (names, params): (Vec<String>, Vec<Tensor>) = params.into_iter().unzip();
        self.group
            .attach_reducer(&params, BUCKET_BYTES, find_unused)
            .map_err(|m| self.lost("attaching DDP's Reducer", m))?;
        *self.reducer.borrow_mut() = Some(Attached { params, names, find_unused });
        Ok(())
    }

    /// Whether gradients are averaged during backward (the Reducer is attached).
    pub fn overlaps(&self) -> bool {
        self.reducer.borrow().is_some()
    }

    /// After the armed backward of `output` without the Reducer's own search for unused
    /// parameters: every bucket must have been all-reduced. If one was not, a parameter got
    /// no gradient on this rank; the step stops here, naming the parameters `output` does
    /// not reach, before any other collective could pair with the wrong one.
    fn check_reduced(&self, a: &Attached, output: &Tensor) -> Result<(), DistError> {
        if self.group.reducer_finished().map_err(|m| self.lost("asking DDP's Reducer", m))? {
            return Ok(());
        }
        let reached = engine::reached(output, &a.params).map_err(|m| self.lost("searching the loss's graph", m))?;
        let unused: Vec<&str> =
            a.names.iter().zip(reached).filter(|(_, r)| !r).map(|(name, _)| name.as_str()).collect();
        let names = if unused.is_empty() { "some parameters".to_string() } else { name_list(&unused) };
        let step = self.global_n.get().map_or(0, |(s, _)| s + 1);
        let err = DistError::UnusedParameters { rank: self.rank(), step, names };
        // The other ranks may wait for this rank's part of the bucket; they report this.
        let _ = self.group.set(FAILURE_KEY, err.to_string().as_bytes());
        Err(err)
    }

    fn add_time(&self, f: impl FnOnce(&mut CommTimes)) {
        let mut t = self.times.get();
        f(&mut t);
        self.times.set(t);
    }

    /// The times since the last call, and a fresh count.
    pub fn take_times(&self) -> CommTimes {
        self.times.take()
    }

    /// Step `step` starts, its global batch of `global` examples (every rank's share
    /// together). With the Reducer, which averages the ranks' gradients during backward,
    /// each rank's loss must be weighted by its share of the global batch before backward.
    /// The count is the epoch order's, the same on every rank (`check_same_data` made sure),
    /// so it needs no collective; a step retried on this rank alone (out of memory, smaller
    /// micro-batches) starts again with the same count.
    pub fn begin_step(&self, step: u64, global: i64) {
        if self.global_n.get().is_some_and(|(s, _)| s == step) {
            return;
        }
        self.add_time(|t| t.steps += 1);
        self.global_n.set(Some((step, global as f64)));
    }

    /// Backward of a micro-batch of `m` of this rank's `n` examples, `last` of the step:
    /// - with the Reducer, the loss weighted by `m × world / global` (the Reducer divides the
    ///   sum by the world) and, for the last, the Reducer armed first (DDP's `no_sync` for the
    ///   ones before);
    /// - without, weighted by `m / n` as a single process does; the sum over the ranks, each
    ///   scaled by its share, comes after ([`Dist::reduce_gradients`]).
    pub fn backward(&self, loss: &Tensor, m: i64, n: i64, last: bool) -> Result<(), DistError> {
        let weight = if self.overlaps() {
            let global = self.global_n.get().map_or(f64::NAN, |(_, g)| g);
            m as f64 * f64::from(self.world()) / global
        } else {
            m as f64 / n as f64
        };
        let weighted = loss * weight;
        let reducer = self.reducer.borrow();
        let armed = reducer.as_ref().filter(|_| last);
        if armed.is_some() {
            self.group.prepare_backward(&weighted).map_err(|m| self.lost("preparing the Reducer", m))?;
        }
        let start = std::time::Instant::now();
        weighted.f_backward().map_err(|e| self.lost("backward with the gradient all-reduce", e))?;
        if last {
            self.add_time(|t| t.last_backward += start.elapsed().as_secs_f64());
        }
        match armed {
            Some(a) if !a.find_unused => self.check_reduced(a, &weighted),
            _ => Ok(()),
        }
    }

    /// A step in which this rank has no examples (its share of a short last batch): with
    /// the Reducer, which needs every gradient of every rank, a backward of zeros.
    pub fn backward_nothing(&self, params: &[Tensor]) -> Result<(), DistError> {
        if !self.overlaps() {
            return Ok(());
        }
        let Some(zero) = params.iter().map(|p| p.sum(Kind::Float) * 0.0).reduce(|a, b| a + b) else { return Ok(()) };
        self.group.prepare_backward(&zero).map_err(|m| self.lost("preparing the Reducer", m))?;
        zero.f_backward().map_err(|e| self.lost("backward with the gradient all-reduce", e))
    }

    /// `values` summed over the ranks.
    pub fn sum(&self, values: &[f64]) -> Result<Vec<f64>, DistError> {
        // Started and waited for at once; finish_sum counts the wait.
        self.finish_sum(self.start_sum(values)?)
    }

    /// Starts summing `values` over the ranks (a small all-reduce that runs while this
    /// thread goes on, e.g. with backward); [`Dist::finish_sum`] waits for it.
    pub fn start_sum(&self, values: &[f64]) -> Result<engine::Pending, DistError> {
        let t = Tensor::from_slice(values).to_device(self.device);
        self.group.allreduce_start(t).map_err(|m| self.lost("an all-reduce", m))
    }

    /// The sums [`Dist::start_sum`] started, once every rank has added its own.
    pub fn finish_sum(&self, pending: engine::Pending) -> Result<Vec<f64>, DistError> {
        let start = std::time::Instant::now();
        let t = pending.wait().map_err(|m| self.lost("an all-reduce", m))?;
        self.add_time(|t| t.small += start.elapsed().as_secs_f64());
        Vec::<f64>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Double)).map_err(|e| self.lost("an all-reduce", e))
    }

    /// Whether `flag` is set on any rank: every rank gets the same answer.
    pub fn any(&self, flag: bool) -> Result<bool, DistError> {
        let start = std::time::Instant::now();
        let t = Tensor::from_slice(&[i32::from(flag)]).to_device(self.device);
        self.group.allreduce(&t, true).map_err(|m| self.lost("the stop-flag all-reduce", m))?;
        self.add_time(|t| t.small += start.elapsed().as_secs_f64());
        Ok(t.int64_value(&[0]) != 0)
    }

    /// Rank 0's values copied into every rank's `tensors`.
    pub fn broadcast(&self, tensors: &[Tensor]) -> Result<(), DistError> {
        self.group.broadcast(tensors).map_err(|m| self.lost("the broadcast from rank 0", m))
    }

    /// Waits for every rank.
    pub fn barrier(&self) -> Result<(), DistError> {
        self.group.barrier().map_err(|m| self.lost("a barrier", m))
    }

    /// Rank 0 publishes `value` under `key`; every rank returns it (others wait for it).
    pub fn share(&self, key: &str, value: Option<&str>) -> Result<String, DistError> {
        if let (true, Some(v)) = (self.is_leader(), value) {
            self.publish(key, v)?;
            return Ok(v.to_string());
        }
        self.read(key)
    }

    /// Sets `key` to `value` in the store.
    pub fn publish(&self, key: &str, value: &str) -> Result<(), DistError> {
        self.group.set(key, value.as_bytes()).map_err(|m| self.lost("the store", m))
    }

    /// `key`'s value in the store, waiting (up to the timeout) for a rank to set it.
    pub fn read(&self, key: &str) -> Result<String, DistError> {
        let v = self.group.get(key).map_err(|m| self.lost(&format!("waiting for {key} in the store"), m))?;
        Ok(String::from_utf8_lossy(&v).into_owned())
    }
}
