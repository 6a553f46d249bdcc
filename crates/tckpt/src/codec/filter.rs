//! The reversible filters applied to a plane before zstd: differences at a distance (along
//! the elements, or along the rows) and a rank-one prediction (a level per column plus one
//! per row). The choice among them is the encoder's (`encode.rs`); these only carry it out.

/// Rows sampled per column for its prediction (a median): enough to find a column's level,
/// few enough to cost little beside coding the plane.
const RANK_ONE_SAMPLE_ROWS: usize = 31;

/// Replaces `out` with `c | w | d` for `plane` with rows of `row` bytes (the last row may be
/// short): `c[j]` the median of a sample of column `j`, `w[r]` the median of row `r` less the
/// column predictions (differences taken as signed bytes), and
/// `d[i] = p[i] - c[i mod row] - w[i div row]` (wrapping). The predictions are the writer's
/// choice; any `c` and `w` decode.
pub(super) fn rank_one_encode(plane: &[u8], row: usize, out: &mut Vec<u8>) {
    let rows = plane.len().div_ceil(row);
    let full = plane.len() / row;
    out.clear();
    out.resize(row + rows + plane.len(), 0);
    let (c, rest) = out.split_at_mut(row);
    let (w, d) = rest.split_at_mut(rows);
    // Column predictions from evenly spaced full rows.
    let sample = full.min(RANK_ONE_SAMPLE_ROWS);
    let picked: Vec<usize> = (0..sample).map(|k| k * full / sample).collect();
    let mut column = Vec::with_capacity(sample);
    for (j, cj) in c.iter_mut().enumerate() {
        column.clear();
        column.extend(picked.iter().map(|&r| plane[r * row + j]));
        let mid = column.len() / 2;
        *cj = *column.select_nth_unstable(mid).1;
    }
    // Row predictions: the median of each row's differences from its columns', as signed
    // bytes, from a histogram.
    for (r, (wr, line)) in w.iter_mut().zip(plane.chunks(row)).enumerate() {
        let out_line = &mut d[r * row..r * row + line.len()];
        let mut hist = [0u32; 256];
        for ((o, &p), &cj) in out_line.iter_mut().zip(line).zip(c.iter()) {
            *o = p.wrapping_sub(cj);
            hist[*o as usize] += 1;
        }
        // Signed order: -128..=127 is bytes 128..=255 then 0..=127.
        let half = (line.len() as u32).div_ceil(2);
        let mut seen = 0;
        *wr = (128..256)
            .chain(0..128)
            .find(|&b| {
                seen += hist[b];
                seen >= half
            })
            .unwrap_or(0) as u8;
        let wr = *wr;
        for o in out_line.iter_mut() {
            *o = o.wrapping_sub(wr);
        }
    }
}

/// Inverse of [`rank_one_encode`]: `frame` holds `c | w | d`; writes the plane to `out`.
pub(super) fn rank_one_decode(frame: &[u8], row: usize, out: &mut [u8]) {
    let rows = out.len().div_ceil(row);
    let (c, rest) = frame.split_at(row);
    let (w, d) = rest.split_at(rows);
    for ((line, residual), &wr) in out.chunks_mut(row).zip(d.chunks(row)).zip(w) {
        // In slices the compiler vectorises.
        for ((o, &x), &cj) in line.iter_mut().zip(residual).zip(c) {
            *o = x.wrapping_add(cj).wrapping_add(wr);
        }
    }
}

/// Replaces `out` with the differences of `plane` at distance `lag`: `d[i] = p[i] - p[i-lag]`
/// (wrapping), `d[i] = p[i]` for `i < lag`.
pub(super) fn delta_encode(plane: &[u8], lag: usize, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&plane[..lag.min(plane.len())]);
    out.extend(plane.iter().skip(lag).zip(plane).map(|(&b, &before)| b.wrapping_sub(before)));
}

/// Inverse of [`delta_encode`], in place; `lag` 0 leaves the plane as it is.
pub(super) fn delta_decode(plane: &mut [u8], lag: usize) {
    match lag {
        0 => {}
        1 => {
            let mut acc = 0u8;
            for b in plane {
                acc = acc.wrapping_add(*b);
                *b = acc;
            }
        }
        _ => {
            // Row by row, each row added to the one before it: slices the compiler vectorises.
            let mut start = lag;
            while start < plane.len() {
                let end = plane.len().min(start + lag);
                let (before, rest) = plane.split_at_mut(start);
                let above = &before[start - lag..end - lag];
                for (b, &a) in rest[..end - start].iter_mut().zip(above) {
                    *b = b.wrapping_add(a);
                }
                start = end;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delta_round_trips() {
        let plane = [5u8, 3, 250, 0, 0, 7];
        let mut d = Vec::new();
        delta_encode(&plane, 1, &mut d);
        assert_eq!(d, [5, 254, 247, 6, 0, 7]);
        delta_decode(&mut d, 1);
        assert_eq!(d, plane);
        delta_encode(&plane, 2, &mut d);
        assert_eq!(d, [5, 3, 245, 253, 6, 7]);
        delta_decode(&mut d, 2);
        assert_eq!(d, plane);
        delta_encode(&plane, 9, &mut d);
        assert_eq!(d, plane);
    }
}
