//! Feeds arbitrary bytes to the reader: opening, listing, reading every tensor and verifying
//! must return errors, never panic, hang or allocate beyond what the bytes can back.
//!
//! `cargo +nightly fuzz run reader` from `crates/tckpt` (seeds: `corpus/reader/seed*`).
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use tckpt::Reader;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else {
        return;
    };
    let mut bytes = Vec::with_capacity(data.len() + 16);
    if mode & 1 == 1 {
        // A valid header, so the fuzzer reaches the trailer and index sooner.
        bytes.extend_from_slice(&tckpt::MAGIC);
        bytes.extend_from_slice(&tckpt::FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&[0; 4]);
    }
    bytes.extend_from_slice(data);
    if mode & 2 == 2 {
        // Rewrite the trailer's index checksum to match: without this, almost every mutation
        // of the index stops at the checksum and the JSON and layout checks go unexplored.
        fix_index_checksum(&mut bytes);
    }
    let Ok(mut reader) = Reader::with_threads(Cursor::new(bytes), 1 + (mode as usize >> 7)) else {
        return;
    };
    let names: Vec<String> = reader.tensors().iter().map(|t| t.name.clone()).collect();
    for name in &names {
        if let Ok(data) = reader.read_tensor(name) {
            assert_eq!(data.len() as u64, reader.tensor(name).unwrap().raw_len);
        }
    }
    let _ = reader.verify();
    // Every tensor at once, into buffers: the parallel path across tensors. Sizes are backed
    // by the file (validated against its length), capped so a huge claim is not allocated.
    let infos = reader.tensors().to_vec();
    if infos.iter().map(|t| t.raw_len).sum::<u64>() <= 64 << 20 {
        let mut outs: Vec<Vec<u8>> = infos.iter().map(|t| vec![0; t.raw_len as usize]).collect();
        let mut targets: Vec<(&str, &mut [u8])> =
            infos.iter().zip(outs.iter_mut()).map(|(t, o)| (t.name.as_str(), o.as_mut_slice())).collect();
        let _ = reader.read_tensors_into(&mut targets);
    }
});

fn fix_index_checksum(bytes: &mut [u8]) {
    let n = bytes.len();
    if n < 32 {
        return;
    }
    let word = |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().unwrap());
    let (offset, len) = (word(bytes, n - 32), word(bytes, n - 24));
    let Some(end) = offset.checked_add(len).filter(|&e| e <= (n - 32) as u64) else {
        return;
    };
    let sum = xxhash_rust::xxh3::xxh3_64(&bytes[offset as usize..end as usize]);
    bytes[n - 16..n - 8].copy_from_slice(&sum.to_le_bytes());
}
