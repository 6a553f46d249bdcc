//! Property tests: any tensors round-trip under any options; no input makes the reader panic;
//! damage is either reported or leaves the data intact.

mod common;

use common::{read_all, write, Tensor};
use proptest::prelude::*;
use train_ckpt::{Dtype, WriterOptions};

fn dtype() -> impl Strategy<Value = Dtype> {
    proptest::sample::select(Dtype::ALL.to_vec())
}

/// A tensor of up to rank 3 and a few thousand elements, with bytes that are either noise or
/// trained-looking values.
fn tensor(name: String) -> impl Strategy<Value = Tensor> {
    (dtype(), proptest::collection::vec(0usize..24, 0..=3), any::<bool>(), any::<u64>()).prop_flat_map(
        move |(dtype, shape, realistic, seed)| {
            let n: usize = shape.iter().product();
            let name = name.clone();
            let data = if realistic {
                Just(common::weights(dtype, n, seed)).boxed()
            } else {
                proptest::collection::vec(any::<u8>(), n * dtype.size()).boxed()
            };
            data.prop_map(move |data| Tensor::new(&name, dtype, &shape, data))
        },
    )
}

fn tensors() -> impl Strategy<Value = Vec<Tensor>> {
    (0usize..5).prop_flat_map(|n| (0..n).map(|i| tensor(format!("t{i}"))).collect::<Vec<_>>())
}

fn options() -> impl Strategy<Value = WriterOptions> {
    (1usize..4, 1usize..3000).prop_map(|(threads, chunk_bytes)| WriterOptions { threads, chunk_bytes })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn any_tensors_round_trip(tensors in tensors(), options in options()) {
        let file = write(&tensors, &[("m", "x")], options);
        let back = read_all(&file).unwrap();
        let expected: Vec<Vec<u8>> = tensors.iter().map(|t| t.data.clone()).collect();
        prop_assert_eq!(back, expected);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = read_all(&bytes);
        let mut with_magic = train_ckpt::MAGIC.to_vec();
        with_magic.extend_from_slice(&bytes);
        let _ = read_all(&with_magic);
    }

    #[test]
    fn damage_is_reported_or_harmless(
        tensors in tensors(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<Option<prop::sample::Index>>(),
    ) {
        let mut file = write(&tensors, &[], WriterOptions::default());
        for (at, byte) in edits {
            let i = at.index(file.len());
            file[i] ^= byte.max(1);
        }
        if let Some(cut) = cut {
            file.truncate(cut.index(file.len()));
        }
        if let Ok(back) = read_all(&file) {
            let expected: Vec<Vec<u8>> = tensors.iter().map(|t| t.data.clone()).collect();
            prop_assert_eq!(back, expected);
        }
    }
}
