//! A seeded fuzz of data loading and model building: random shapes and sizes (0s, 1s,
//! huge values, headers that lie about their data), random dtypes (some unsupported) and
//! random labels go through `Dataset::load` on safetensors `x`/`y` files, and whatever loads
//! through `model::build_within` and one forward pass. Errors are fine; a panic is a bug.
//!
//! A bounded loop over a seeded RNG rather than proptest: the cases are cheap, the seed is
//! printed with any failure, and the main crate needs no new dependency.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use rand::{Rng, SeedableRng};
use tch::nn;
use tch::{Device, Kind, Tensor};
use train::config::{Config, DataConfig, DataKind, ModelConfig, ModelKind};
use train::data::{Dataset, Task};
use train::model;

/// Cases per run; each writes one small file and builds at most three small models.
const CASES: usize = 300;
/// Memory the models may take: small enough that no case allocates much, large enough
/// that most cases build.
const BUDGET: u64 = 16 << 20;

const DTYPES: &[(&str, usize)] = &[
    ("F32", 4),
    ("F64", 8),
    ("F16", 2),
    ("BF16", 2),
    ("I64", 8),
    ("I32", 4),
    ("I16", 2),
    ("I8", 1),
    ("U8", 1),
    ("BOOL", 1),
    ("F8_E4M3", 1),
    ("U16", 2),
    ("C64", 8),
    ("Q4", 1),
];

fn dim(rng: &mut impl Rng) -> u64 {
    match rng.gen_range(0..10) {
        0 => 0,
        1 => 1,
        2 => [1 << 31, 1 << 40, u64::MAX / 3, u64::MAX][rng.gen_range(0..4)],
        _ => rng.gen_range(2..12),
    }
}

/// One tensor entry: dtype, shape and data bytes (honest for small shapes, else a lie).
fn tensor(rng: &mut impl Rng, n: u64, rank: usize, labels: bool) -> Entry {
    let (dtype, size) = if labels && rng.gen_bool(0.6) { DTYPES[4] } else { DTYPES[rng.gen_range(0..DTYPES.len())] };
    let mut shape = vec![n];
    shape.extend((1..rank).map(|_| dim(rng)));
    if rank == 0 {
        shape.clear();
    }
    let elements = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
    let bytes = match elements.and_then(|e| e.checked_mul(size as u64)) {
        Some(b) if b <= 1 << 16 && rng.gen_bool(0.9) => {
            if labels && dtype == "I64" {
                // Most label sets are sound; the rest hold the odd negative or huge class.
                let bad = rng.gen_bool(0.3);
                (0..b / 8)
                    .flat_map(|_| {
                        let v: i64 = match rng.gen_range(0..if bad { 6 } else { 3 }) {
                            3 => -1,
                            4 => 1 << 40,
                            5 => i64::MAX,
                            _ => rng.gen_range(0..5),
                        };
                        v.to_le_bytes()
                    })
                    .collect()
            } else {
                (0..b).map(|_| rng.gen_range(0..4u8)).collect()
            }
        }
        _ => vec![0; rng.gen_range(0..64)],
    };
    (dtype.to_string(), shape, bytes)
}

/// A tensor entry of a safetensors header: dtype, shape, data bytes.
type Entry = (String, Vec<u64>, Vec<u8>);

fn write_safetensors(path: &Path, tensors: &[(&str, Entry)]) {
    let mut header = serde_json::Map::new();
    let mut data = Vec::new();
    for (name, (dtype, shape, bytes)) in tensors {
        let start = data.len();
        data.extend_from_slice(bytes);
        header.insert(
            name.to_string(),
            serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let header = serde_json::to_vec(&header).unwrap();
    let mut f = std::fs::File::create(path).unwrap();
    f.write_all(&(header.len() as u64).to_le_bytes()).unwrap();
    f.write_all(&header).unwrap();
    f.write_all(&data).unwrap();
}

fn model_config(rng: &mut impl Rng, kind: ModelKind) -> ModelConfig {
    let layers = rng.gen_range(0..3);
    let mut width = || [1u32, 2, 3, 16, 64, 4096, 4_000_000_000, u32::MAX][rng.gen_range(0..8)];
    let mut cfg = ModelConfig { kind, ..ModelConfig::default() };
    cfg.mlp.hidden = (0..layers).map(|_| width()).collect();
    cfg.cnn.channels = [width(), width()];
    cfg.cnn.hidden = width();
    cfg.gpt.width = width();
    cfg.gpt.depth = width().min(64);
    cfg.gpt.heads = [1, 2, 4][rng.gen_range(0..3)];
    // Attention over a window costs context² per head: longer windows test activation memory,
    // which is not what this fuzz is about.
    cfg.gpt.context = [1u32, 8, 64, 300][rng.gen_range(0..4)];
    cfg
}

/// Builds `cfg` for `task` and runs it on `inputs`, if it builds within the budget.
fn build_and_run(cfg: &ModelConfig, task: Task, shape: &[i64], inputs: &Tensor) -> Result<(), String> {
    let vs = nn::VarStore::new(Device::Cpu);
    let m = model::build_within(cfg, &vs.root(), task, shape, Some((BUDGET, "the test's budget".into())), None)
        .map_err(|e| e.to_string())?;
    let out = tch::no_grad(|| m.forward(&[inputs.shallow_clone()], None, false).logits);
    assert_eq!(out.size()[0], inputs.size()[0]);
    Ok(())
}

#[test]
fn random_shapes_sizes_and_dtypes_never_panic() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("d.safetensors");
    let seed = 0x5eed_u64;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let (mut loaded, mut built) = (0, 0);
    for case in 0..CASES {
        let n = [0, 1, 2, 3, 10, 10, 10, 1 << 40][rng.gen_range(0..8)];
        let rank = rng.gen_range(0..5);
        let x = tensor(&mut rng, n, rank, false);
        let y_n = if rng.gen_bool(0.9) { n } else { dim(&mut rng) };
        let rank = [0, 1, 1, 1, 1, 2][rng.gen_range(0..6)];
        let y = tensor(&mut rng, y_n, rank, true);
        let what = format!("case {case} (seed {seed}): x {x:?}, y {y:?}", x = (&x.0, &x.1), y = (&y.0, &y.1));
        write_safetensors(&path, &[("x", x), ("y", y)]);
        let cfg = DataConfig { kind: DataKind::Tensors, path: Some(path.clone()), ..DataConfig::default() };
        let data =
            catch_unwind(AssertUnwindSafe(|| Dataset::load(&cfg, 8, None, &[]))).unwrap_or_else(|_| panic!("{what}"));
        let Ok(data) = data else { continue };
        loaded += 1;
        let rows: Vec<i64> = (0..data.train.len().min(2) as i64).collect();
        let inputs = data
            .train
            .batch(&rows, train::data::Pass::default(), tch::Device::Cpu)
            .unwrap_or_else(|e| panic!("{what}: {e}"))
            .0
            .remove(0);
        for kind in [ModelKind::Mlp, ModelKind::Cnn] {
            let model = model_config(&mut rng, kind);
            let full = Config { model: model.clone(), ..Config::default() };
            if full.validate().is_err() {
                continue;
            }
            let run = catch_unwind(AssertUnwindSafe(|| build_and_run(&model, data.task, &data.input_shape, &inputs)));
            built += usize::from(matches!(run.unwrap_or_else(|_| panic!("{what}, model {model:?}")), Ok(())));
        }
    }
    // Language models: random sizes on byte windows.
    for case in 0..CASES / 3 {
        let model = model_config(&mut rng, ModelKind::Gpt);
        if (Config { model: model.clone(), ..Config::default() }).validate().is_err() {
            continue;
        }
        let context = i64::from(model.gpt.context);
        let tokens = Tensor::randint(256, [2, context], (Kind::Int64, Device::Cpu));
        let task = Task::LanguageModel { vocab: 256 };
        let run = catch_unwind(AssertUnwindSafe(|| build_and_run(&model, task, &[context], &tokens)));
        built += usize::from(matches!(run.unwrap_or_else(|_| panic!("gpt case {case}: {model:?}")), Ok(())));
    }
    // The generator must reach the interesting paths, not only be refused early.
    assert!(loaded > CASES / 20 && built > CASES / 20, "loaded {loaded}, built {built}");
}
