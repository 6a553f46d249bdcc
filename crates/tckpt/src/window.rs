//! Planning a read: the chunks of the tensors asked for, in file order; the windows they are
//! decoded in, which bound what a reader holds at once; and the file ranges each window
//! reads, or asks the kernel to read ahead. Pure: the reader (`reader.rs`) carries the plan out.

use std::ops::Range;

use crate::layout::{Layout, TensorInfo};

/// A chunk to decode: its position among the tensors asked for (`k`), its index in its
/// tensor, its record's file offset, and its stored and raw lengths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkRef {
    pub k: usize,
    pub chunk: usize,
    pub at: u64,
    pub stored: usize,
    pub raw: usize,
}

/// Every chunk of `tensors` (positions in the index, in file order), in file order.
pub(crate) fn chunks<'a>(
    tensors: &'a [usize],
    infos: &'a [TensorInfo],
    layouts: &'a [Layout],
) -> impl Iterator<Item = ChunkRef> + 'a {
    tensors.iter().enumerate().flat_map(move |(k, &i)| {
        let (info, layout) = (&infos[i], &layouts[i]);
        let elem = info.dtype.size() as u64;
        let mut offset = layout.offset;
        layout.chunks.iter().enumerate().map(move |(c, planes)| {
            // All numbers were validated against the file's length and each other.
            let stored: u64 = planes.iter().map(|p| p.1).sum();
            let at = offset;
            offset += stored;
            let raw = layout.chunk_raw_len(c, info.raw_len, elem) as usize;
            ChunkRef { k, chunk: c, at, stored: stored as usize, raw }
        })
    })
}

/// One chunk of a window: its position in the tensors asked for, its index in its tensor, its
/// record's file offset and stored length, and where its raw bytes go in the window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WindowChunk {
    pub k: usize,
    pub chunk: usize,
    pub at: u64,
    pub stored: usize,
    pub raw: Range<usize>,
}

/// Gathers chunks into windows: whole chunks in file order, at least one, up to `limit`
/// bytes of the file (`mapped`: the span from its first chunk to the end of its last, which
/// is what a mapped window keeps resident; read: the stored bytes) and up to `raw_limit`
/// raw bytes (what decoding into a scratch window holds).
pub(crate) struct Windows<I: Iterator<Item = ChunkRef>> {
    chunks: I,
    pending: Option<ChunkRef>,
    limit: usize,
    raw_limit: usize,
    mapped: bool,
}

impl<I: Iterator<Item = ChunkRef>> Windows<I> {
    pub(crate) fn new(mut chunks: I, limit: usize, raw_limit: usize, mapped: bool) -> Self {
        let pending = chunks.next();
        Windows { chunks, pending, limit, raw_limit, mapped }
    }
}

impl<I: Iterator<Item = ChunkRef>> Iterator for Windows<I> {
    type Item = Vec<WindowChunk>;

    fn next(&mut self) -> Option<Vec<WindowChunk>> {
        self.pending?;
        let mut window: Vec<WindowChunk> = Vec::new();
        let (mut stored_total, mut raw_total) = (0usize, 0usize);
        while let Some(c) = self.pending {
            let size = match (self.mapped, window.first()) {
                (true, Some(first)) => (c.at + c.stored as u64 - first.at) as usize,
                _ => stored_total + c.stored,
            };
            if !window.is_empty() && (size > self.limit || raw_total + c.raw > self.raw_limit) {
                break;
            }
            window.push(WindowChunk {
                k: c.k,
                chunk: c.chunk,
                at: c.at,
                stored: c.stored,
                raw: raw_total..raw_total + c.raw,
            });
            stored_total += c.stored;
            raw_total += c.raw;
            self.pending = self.chunks.next();
        }
        Some(window)
    }
}

/// Where each chunk's stored bytes lie in a mapped window, which starts at its first chunk.
pub(crate) fn mapped_ranges(window: &[WindowChunk]) -> Vec<Range<usize>> {
    let base = window.first().map_or(0, |w| w.at);
    window.iter().map(|w| (w.at - base) as usize..(w.at - base) as usize + w.stored).collect()
}

/// A read of a window that is not mapped: where each chunk's stored bytes go in the buffer
/// (packed, in order), the buffer's length, and the reads that fill it, one per run of
/// contiguous records: (file offset, buffer range).
pub(crate) struct ReadPlan {
    pub stored: Vec<Range<usize>>,
    pub len: usize,
    pub reads: Vec<(u64, Range<usize>)>,
}

/// The reads of a window that is not mapped.
pub(crate) fn read_plan(window: &[WindowChunk]) -> ReadPlan {
    let mut stored = Vec::with_capacity(window.len());
    let mut len = 0;
    for w in window {
        stored.push(len..len + w.stored);
        len += w.stored;
    }
    let mut reads = Vec::new();
    let mut run = 0;
    while run < window.len() {
        let mut end = run + 1;
        while end < window.len() && window[end].at == window[end - 1].at + window[end - 1].stored as u64 {
            end += 1;
        }
        reads.push((window[run].at, stored[run].start..stored[end - 1].end));
        run = end;
    }
    ReadPlan { stored, len, reads }
}

/// The file range to ask the kernel to read ahead before `window` decodes: from where the
/// last advice ended (`advised`) or the window's start, to `ahead` bytes past the window's
/// end but not past the records asked for (`records_end`); `None` when nothing is left.
pub(crate) fn read_ahead(advised: u64, window: &[WindowChunk], records_end: u64, ahead: u64) -> Option<Range<u64>> {
    let (first, last) = (window.first()?, window.last()?);
    let from = advised.max(first.at);
    let to = (last.at + last.stored as u64 + ahead).min(records_end);
    (to > from).then_some(from..to)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunks of the given (file offset, stored, raw) lengths, of one tensor.
    fn refs(chunks: &[(u64, usize, usize)]) -> Vec<ChunkRef> {
        chunks.iter().enumerate().map(|(c, &(at, stored, raw))| ChunkRef { k: 0, chunk: c, at, stored, raw }).collect()
    }

    fn sizes(windows: impl Iterator<Item = Vec<WindowChunk>>) -> Vec<Vec<usize>> {
        windows.map(|w| w.iter().map(|c| c.chunk).collect()).collect()
    }

    #[test]
    fn windows_hold_whole_chunks_up_to_the_limit_and_a_larger_one_alone() {
        let chunks = refs(&[(16, 4, 8), (20, 4, 8), (24, 10, 20), (34, 2, 4), (36, 2, 4)]);
        let windows = Windows::new(chunks.clone().into_iter(), 8, usize::MAX, false);
        assert_eq!(sizes(windows), [vec![0, 1], vec![2], vec![3, 4]]);
        // Decoding into scratch, the raw bytes are bounded too.
        let windows: Vec<_> = Windows::new(chunks.into_iter(), 8, 8, false).collect();
        assert_eq!(sizes(windows.iter().cloned()), [vec![0], vec![1], vec![2], vec![3, 4]]);
        assert_eq!(windows[3][1].raw, 4..8);
        assert_eq!(Windows::new(std::iter::empty(), 8, 8, false).next(), None);
    }

    #[test]
    fn a_mapped_window_counts_the_span_it_maps_gaps_included() {
        // Tensors not asked for lie between chunks 0 and 1: mapped, the window would span them.
        let chunks = refs(&[(16, 4, 8), (30, 4, 8)]);
        assert_eq!(sizes(Windows::new(chunks.clone().into_iter(), 10, usize::MAX, true)), [vec![0], vec![1]]);
        assert_eq!(sizes(Windows::new(chunks.into_iter(), 10, usize::MAX, false)), [vec![0, 1]]);
    }

    #[test]
    fn a_read_window_is_packed_and_read_once_per_run_of_contiguous_records() {
        let window: Vec<WindowChunk> =
            Windows::new(refs(&[(16, 4, 8), (20, 3, 8), (40, 5, 8)]).into_iter(), 99, 99, false).next().unwrap();
        let plan = read_plan(&window);
        assert_eq!(plan.stored, [0..4, 4..7, 7..12]);
        assert_eq!(plan.len, 12);
        assert_eq!(plan.reads, [(16, 0..7), (40, 7..12)]);
        assert_eq!(mapped_ranges(&window), [0..4, 4..7, 24..29]);
    }

    #[test]
    fn read_ahead_goes_past_the_window_only_as_far_as_the_records_asked_for() {
        let window: Vec<WindowChunk> = Windows::new(refs(&[(100, 10, 10)]).into_iter(), 99, 99, true).next().unwrap();
        assert_eq!(read_ahead(0, &window, 1000, 50), Some(100..160));
        assert_eq!(read_ahead(0, &window, 130, 50), Some(100..130));
        assert_eq!(read_ahead(160, &window, 1000, 50), None);
        assert_eq!(read_ahead(120, &window, 1000, 50), Some(120..160));
    }
}
