//! Property tests: any tensors round-trip under any options; no input makes the reader panic;
//! damage is either reported or leaves the data intact.

mod common;

use common::{read_all, write, Tensor};
use proptest::prelude::*;
use tckpt::{Dtype, WriterOptions};

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
        let mut with_magic = tckpt::MAGIC.to_vec();
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

/// The `[k, d]` tensors, and their dtypes, of [`every_row_length_round_trips_in_every_dtype`]:
/// every `d` up to 8192 (two estimate blocks of bytes), each in one dtype, so that each dtype
/// has one in every ten consecutive `d` (a seeded shuffle of the dtypes per ten); in every
/// dtype, every multiple of 4096 and its neighbours up to 2^17 and a seeded sample of others
/// up to 2^17 (rows of more than 2^17 elements no longer fit twice in a float32 chunk).
fn row_length_cases() -> Vec<(Dtype, [usize; 2])> {
    let mut rng = common::Rng::new(21);
    let mut cases = Vec::new();
    for tens in (1..=8192usize).collect::<Vec<_>>().chunks(10) {
        let mut dtypes = Dtype::ALL;
        for i in (1..dtypes.len()).rev() {
            dtypes.swap(i, (rng.next() % (i as u64 + 1)) as usize);
        }
        cases.extend(tens.iter().zip(dtypes).map(|(&d, dtype)| (dtype, [2, d])));
    }
    let mut sizes: Vec<[usize; 2]> =
        (1..=32).flat_map(|m| [m * 4096 - 1, m * 4096, m * 4096 + 1]).map(|d| [2, d]).collect();
    sizes.extend((0..16).map(|_| [1 + (rng.next() % 3) as usize, 1 + (rng.next() % (1 << 17)) as usize]));
    for dtype in Dtype::ALL {
        cases.extend(sizes.iter().map(|&shape| (dtype, shape)));
    }
    let mut seen = std::collections::HashSet::new();
    cases.retain(|&case| seen.insert(case));
    cases
}

/// Issue #21: the writer panicked on rows of 4097 to 131072 elements, in every dtype.
/// Through the public writer and reader, at the default chunk size: every case of
/// [`row_length_cases`] comes back bit for bit, in files of up to 64 MiB of tensors, each
/// read back in one parallel call.
#[test]
fn every_row_length_round_trips_in_every_dtype() {
    let cases = row_length_cases();
    let largest = cases.iter().map(|(dtype, [k, d])| k * d * dtype.size()).max().unwrap();
    let sources: Vec<Vec<u8>> = Dtype::ALL.iter().map(|&t| common::weights(t, largest / t.size(), 7)).collect();
    let source = |dtype: Dtype| &sources[Dtype::ALL.iter().position(|&t| t == dtype).unwrap()];
    let name = |(dtype, [k, d]): &(Dtype, [usize; 2])| format!("{dtype:?}[{k}, {d}]");
    for batch in batches(&cases, 64 << 20) {
        let mut w = tckpt::Writer::new(Vec::new()).unwrap();
        for case @ (dtype, [k, d]) in batch {
            let data = &source(*dtype)[..k * d * dtype.size()];
            w.add_tensor(&name(case), *dtype, &[*k, *d], data).unwrap_or_else(|e| panic!("{}: {e}", name(case)));
        }
        let file = w.finish(Default::default()).unwrap();
        let mut r = tckpt::Reader::new(std::io::Cursor::new(file)).unwrap();
        let names: Vec<String> = batch.iter().map(name).collect();
        let mut outs: Vec<Vec<u8>> = batch.iter().map(|(dtype, [k, d])| vec![0; k * d * dtype.size()]).collect();
        let mut targets: Vec<(&str, &mut [u8])> =
            names.iter().map(String::as_str).zip(outs.iter_mut().map(Vec::as_mut_slice)).collect();
        r.read_tensors_into(&mut targets).unwrap();
        for ((name, out), (dtype, _)) in names.iter().zip(&outs).zip(batch) {
            assert!(out[..] == source(*dtype)[..out.len()], "{name} differs");
        }
    }
}

/// Consecutive runs of `cases` of at most `limit` bytes of tensors each (a larger one alone).
fn batches(cases: &[(Dtype, [usize; 2])], limit: usize) -> Vec<&[(Dtype, [usize; 2])]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, (dtype, [k, d])) in cases.iter().enumerate() {
        let len = k * d * dtype.size();
        if i > start && bytes + len > limit {
            out.push(&cases[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += len;
    }
    out.push(&cases[start..]);
    out
}
