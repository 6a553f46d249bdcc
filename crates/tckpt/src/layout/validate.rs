//! The validation that turns an index read from disk into trusted tensor layouts: every
//! number checked against the format's rules, each other and the place of the records.

use std::collections::HashSet;

use super::header::{HEADER_LEN, MAX_CHUNK_BYTES, MAX_EXPANSION, MAX_RANK, MAX_TENSORS};
use super::index::{rank_one_len, Checksum, Codec, Encoding, Entry, Index, Layout, PlaneEntry, TensorInfo};
use crate::error::{invalid, Error, Result};

fn parse_hex64(s: &str) -> Option<u64> {
    (s.len() == 16 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

/// Checks an index of a file of format `version` against the format's rules and the place of
/// the tensor records, `HEADER_LEN..records_end`. Records must tile that range in index order,
/// with no gap.
pub(crate) fn validate(index: Index, records_end: u64, version: u32) -> Result<(Vec<TensorInfo>, Vec<Layout>)> {
    if index.tensors.len() > MAX_TENSORS {
        return Err(Error::TooManyTensors { count: index.tensors.len(), max: MAX_TENSORS });
    }
    let mut names = HashSet::with_capacity(index.tensors.len());
    let mut infos = Vec::with_capacity(index.tensors.len());
    let mut layouts = Vec::with_capacity(index.tensors.len());
    let mut next = HEADER_LEN;
    for entry in index.tensors {
        if !names.insert(entry.name.clone()) {
            return Err(Error::DuplicateName { name: entry.name });
        }
        if entry.offset != next {
            return Err(invalid(&entry.name, format!("record at offset {}, expected {next}", entry.offset)));
        }
        let (info, layout) = validate_entry(entry, version)?;
        next = next.checked_add(info.stored_len).filter(|&n| n <= records_end).ok_or_else(|| {
            invalid(
                &info.name,
                format!("record of {} bytes at offset {next} runs past the index at {records_end}", info.stored_len),
            )
        })?;
        infos.push(info);
        layouts.push(layout);
    }
    if next != records_end {
        return Err(Error::InvalidTensor {
            name: infos.last().map_or_else(String::new, |i| i.name.clone()),
            reason: format!("tensor records end at {next} but the index starts at {records_end}"),
        });
    }
    Ok((infos, layouts))
}

/// Checks one entry on its own: shape, lengths, encoding, chunks, checksum text.
fn validate_entry(e: Entry, version: u32) -> Result<(TensorInfo, Layout)> {
    let name = e.name.as_str();
    if e.shape.len() > MAX_RANK {
        return Err(invalid(name, format!("rank {} exceeds the limit of {MAX_RANK}", e.shape.len())));
    }
    let elem = e.dtype.size() as u64;
    let numel = e
        .shape
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .ok_or_else(|| invalid(name, format!("shape {:?} overflows", e.shape)))?;
    let raw_len = numel
        .checked_mul(elem)
        .filter(|&r| usize::try_from(r).is_ok())
        .ok_or_else(|| invalid(name, format!("shape {:?} overflows", e.shape)))?;
    if raw_len != e.raw_len {
        return Err(invalid(
            name,
            format!("raw_len {} but dtype {:?} and shape {:?} make {raw_len}", e.raw_len, e.dtype, e.shape),
        ));
    }
    let shape = e
        .shape
        .iter()
        .map(|&d| usize::try_from(d))
        .collect::<Result<Vec<usize>, _>>()
        .map_err(|_| invalid(name, format!("shape {:?} does not fit this machine", e.shape)))?;
    match e.encoding {
        Encoding::Bytes => {}
        Encoding::Planes if e.dtype.size() > 1 => {}
        Encoding::FloatPlanes if e.dtype.is_float() => {}
        other => return Err(invalid(name, format!("encoding {other:?} does not apply to {:?}", e.dtype))),
    }
    if e.chunk_elems == 0 || e.chunk_elems.saturating_mul(elem) > MAX_CHUNK_BYTES {
        return Err(invalid(
            name,
            format!("chunk of {} elements outside 1..={}", e.chunk_elems, MAX_CHUNK_BYTES / elem),
        ));
    }
    let n_chunks = numel.div_ceil(e.chunk_elems);
    if e.chunks.len() as u64 != n_chunks {
        return Err(invalid(
            name,
            format!(
                "{} chunks listed, {numel} elements in chunks of {} make {n_chunks}",
                e.chunks.len(),
                e.chunk_elems
            ),
        ));
    }
    let planes = e.encoding.planes(e.dtype);
    let row = e.encoding.row_len(e.dtype, e.shape.last().copied().unwrap_or(1));
    let mut stored = 0u64;
    for (c, chunk) in e.chunks.iter().enumerate() {
        let elems = e.chunk_elems.min(numel - c as u64 * e.chunk_elems);
        let raw = e.encoding.plane_len(e.dtype, elems);
        if chunk.len() != planes {
            return Err(invalid(name, format!("chunk {c} has {} planes, expected {planes}", chunk.len())));
        }
        for (p, &PlaneEntry(codec, len)) in chunk.iter().enumerate() {
            let ok = match codec {
                Codec::Raw => len == raw,
                Codec::Zstd | Codec::DeltaZstd | Codec::RowDeltaZstd => {
                    len > 0 && len <= raw && raw <= len.saturating_mul(MAX_EXPANSION)
                }
                Codec::RankOneZstd => {
                    version >= 3
                        && rank_one_len(raw, row).is_some_and(|decoded| {
                            len > 0 && len <= raw && decoded <= len.saturating_mul(MAX_EXPANSION)
                        })
                }
            };
            if !ok {
                return Err(invalid(
                    name,
                    format!("chunk {c}, plane {p}: {codec:?} plane of {len} bytes for {raw} raw bytes"),
                ));
            }
            stored = stored.checked_add(len).ok_or_else(|| invalid(name, "stored length overflows"))?;
        }
    }
    if stored != e.stored_len {
        return Err(invalid(name, format!("stored_len {} but its planes add up to {stored}", e.stored_len)));
    }
    let hex =
        |s: &str| parse_hex64(s).ok_or_else(|| invalid(name, format!("checksum {s:?} is not 16 lowercase hex digits")));
    let checksum = match (version, &e.xxh3, &e.chunk_xxh3) {
        (1, Some(x), None) => Checksum::Tensor(hex(x)?),
        (2.., None, Some(sums)) if sums.len() == e.chunks.len() => {
            Checksum::Chunks(sums.iter().map(|s| hex(s)).collect::<Result<_>>()?)
        }
        (2.., None, Some(sums)) => {
            return Err(invalid(name, format!("{} chunk checksums for {} chunks", sums.len(), e.chunks.len())))
        }
        (1, _, _) => return Err(invalid(name, "a version-1 entry needs `xxh3` and no `chunk_xxh3`")),
        _ => return Err(invalid(name, format!("a version-{version} entry needs `chunk_xxh3` and no `xxh3`"))),
    };
    Ok((
        TensorInfo { name: e.name, dtype: e.dtype, shape, raw_len, stored_len: stored },
        Layout {
            encoding: e.encoding,
            // At most raw_len (which fits in usize) for a tensor with elements; 1 for a scalar.
            row: usize::try_from(row).unwrap_or(usize::MAX),
            offset: e.offset,
            checksum,
            chunk_elems: e.chunk_elems,
            chunks: e.chunks,
        },
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::super::header::FORMAT_VERSION;
    use super::super::index::hex64;
    use super::*;
    use crate::dtype::Dtype;

    fn entry() -> Entry {
        // 10 F32 elements in chunks of 4: planes of 4, 4 and 2 bytes.
        let chunk = |n| vec![PlaneEntry(Codec::Raw, n); 4];
        Entry {
            name: "w".into(),
            dtype: Dtype::F32,
            shape: vec![2, 5],
            encoding: Encoding::FloatPlanes,
            offset: HEADER_LEN,
            stored_len: 40,
            raw_len: 40,
            xxh3: None,
            chunk_elems: 4,
            chunk_xxh3: Some(vec![hex64(7), hex64(8), hex64(9)]),
            chunks: vec![chunk(4), chunk(4), chunk(2)],
        }
    }

    fn check(e: Entry) -> Result<(Vec<TensorInfo>, Vec<Layout>)> {
        let end = e.offset + e.stored_len;
        validate(Index { metadata: BTreeMap::new(), tensors: vec![e] }, end, FORMAT_VERSION)
    }

    fn reason(e: Entry) -> String {
        check(e).unwrap_err().to_string()
    }
    #[test]
    fn accepts_a_consistent_entry() {
        let (infos, layouts) = check(entry()).unwrap();
        assert_eq!(infos[0].shape, [2, 5]);
        assert_eq!(layouts[0].checksum, Checksum::Chunks(vec![7, 8, 9]));
    }

    #[test]
    fn each_version_takes_its_own_checksums() {
        let mut v1 = entry();
        v1.chunk_xxh3 = None;
        v1.xxh3 = Some(hex64(5));
        let end = v1.offset + v1.stored_len;
        let index = |e: &Entry| Index { metadata: BTreeMap::new(), tensors: vec![e.clone()] };
        let (_, layouts) = validate(index(&v1), end, 1).unwrap();
        assert_eq!(layouts[0].checksum, Checksum::Tensor(5));
        assert!(validate(index(&v1), end, 2).unwrap_err().to_string().contains("version-2 entry"));
        assert!(validate(index(&v1), end, 3).unwrap_err().to_string().contains("version-3 entry"));
        assert!(validate(index(&entry()), end, 1).unwrap_err().to_string().contains("version-1 entry"));
        let mut both = entry();
        both.xxh3 = Some(hex64(5));
        assert!(reason(both).contains("version-3 entry"));
        let mut short = entry();
        short.chunk_xxh3.as_mut().unwrap().pop();
        assert!(reason(short).contains("2 chunk checksums for 3 chunks"));
    }

    #[test]
    fn rejects_inconsistent_entries() {
        let mut e = entry();
        e.raw_len = 44;
        assert!(reason(e).contains("raw_len 44"));
        let mut e = entry();
        e.shape = vec![u64::MAX, 2];
        assert!(reason(e).contains("overflows"));
        let mut e = entry();
        e.shape = vec![1; MAX_RANK + 1];
        assert!(reason(e).contains("rank"));
        let mut e = entry();
        e.chunks.pop();
        assert!(reason(e).contains("2 chunks listed"));
        let mut e = entry();
        e.chunks[1][0] = PlaneEntry(Codec::Raw, 5);
        assert!(reason(e).contains("chunk 1, plane 0"));
        let mut e = entry();
        e.chunks[2][3] = PlaneEntry(Codec::Zstd, 3);
        e.stored_len = 41;
        assert!(reason(e).contains("chunk 2, plane 3"));
        let mut e = entry();
        e.chunk_elems = MAX_CHUNK_BYTES;
        assert!(reason(e).contains("outside"));
        let mut e = entry();
        e.chunk_xxh3.as_mut().unwrap()[1] = "XYZ".into();
        assert!(reason(e).contains("hex"));
        let mut e = entry();
        e.dtype = Dtype::I32;
        assert!(reason(e).contains("does not apply"));
    }

    #[test]
    fn rank_one_planes_need_version_3_and_two_rows() {
        // A [4, 5] F32 tensor in one chunk: planes of 20 bytes, rows of 5.
        let mut e = entry();
        e.shape = vec![4, 5];
        e.raw_len = 80;
        e.stored_len = 80 - 20 + 6;
        e.chunk_elems = 20;
        e.chunk_xxh3 = Some(vec![hex64(1)]);
        e.chunks = vec![vec![PlaneEntry(Codec::Raw, 20); 4]];
        e.chunks[0][3] = PlaneEntry(Codec::RankOneZstd, 6);
        assert!(check(e.clone()).is_ok());
        let end = e.offset + e.stored_len;
        let index = Index { metadata: BTreeMap::new(), tensors: vec![e.clone()] };
        assert!(validate(index, end, 2).unwrap_err().to_string().contains("RankOneZstd"));
        // One row only, or rows of one byte: the codec does not apply.
        let mut one_row = e.clone();
        one_row.shape = vec![1, 20];
        assert!(reason(one_row).contains("RankOneZstd"));
        let mut column = e;
        column.shape = vec![20, 1];
        assert!(reason(column).contains("RankOneZstd"));
        assert_eq!(rank_one_len(20, 5), Some(5 + 4 + 20));
        assert_eq!(rank_one_len(21, 5), Some(5 + 5 + 21));
        assert_eq!(rank_one_len(9, 5), None);
        assert_eq!(rank_one_len(u64::MAX, u64::MAX / 2 + 1), None);
    }

    #[test]
    fn rejects_records_that_do_not_tile_the_data() {
        let e = entry();
        let err = validate(
            Index { metadata: BTreeMap::new(), tensors: vec![e.clone()] },
            e.offset + e.stored_len + 1,
            FORMAT_VERSION,
        )
        .unwrap_err();
        assert!(err.to_string().contains("index starts at"), "{err}");
        let mut twice = e.clone();
        twice.offset += e.stored_len;
        let err = validate(
            Index { metadata: BTreeMap::new(), tensors: vec![e.clone(), twice] },
            e.offset + 2 * e.stored_len,
            FORMAT_VERSION,
        )
        .unwrap_err();
        assert!(matches!(err, Error::DuplicateName { .. }));
    }
}
