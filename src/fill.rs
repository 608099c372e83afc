//! Filling one buffer's parts side by side: decompressed arrays (Orbax's
//! zstd chunks, an `.npz`'s deflated entries), each written into its own
//! place of one buffer, on every core once there is enough to fill; and
//! the bound on how much they may decompress to.

/// Decompressed bytes a checkpoint may make per byte it stores compressed,
/// beyond [`SLACK`]: a decompression bomb stops there (a real model's
/// weights hardly compress, and its zeros are few).
const MAX_RATIO: usize = 64;
/// Decompressed bytes any checkpoint may make.
const SLACK: usize = 64 << 20;

/// Why `total` decompressed bytes from `packed` stored ones are refused
/// (more than [`MAX_RATIO`] times as many plus [`SLACK`]), or None.
pub(crate) fn beyond_ratio(total: usize, packed: usize) -> Option<String> {
    (total > packed.saturating_mul(MAX_RATIO).saturating_add(SLACK))
        .then(|| format!("more than {MAX_RATIO} times as many plus {} MB, refused", SLACK >> 20))
}

/// Decompressed bytes in all from which every core takes a part
/// (`CNTSCOPE_TEST_PARALLEL_BYTES` lowers it in tests).
fn parallel_min_bytes() -> usize {
    static BYTES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *BYTES.get_or_init(|| {
        std::env::var("CNTSCOPE_TEST_PARALLEL_BYTES").ok().and_then(|v| v.parse().ok()).unwrap_or(4 << 20)
    })
}

/// The parts `(start, len)` of `buf`, in increasing order and disjoint.
pub(crate) fn split<'b>(mut buf: &'b mut [u8], places: &[(usize, usize)]) -> Vec<&'b mut [u8]> {
    let mut parts = Vec::with_capacity(places.len());
    let mut at = 0;
    for &(start, len) in places {
        let (_, tail) = std::mem::take(&mut buf).split_at_mut(start - at);
        let (part, tail) = tail.split_at_mut(len);
        parts.push(part);
        (buf, at) = (tail, start + len);
    }
    parts
}

/// Runs `fill(item, part)` for each item and its part: a part per thread
/// at a time, on every core when the parts hold `total` bytes from
/// [`parallel_min_bytes`] up. Returns the error of the first item (in
/// their order) that failed, whichever thread met it.
pub(crate) fn side_by_side<T: Sync>(
    items: &[T],
    parts: Vec<&mut [u8]>,
    total: usize,
    fill: impl Fn(&T, &mut [u8]) -> Result<(), String> + Sync,
) -> Result<(), String> {
    let threads =
        if total < parallel_min_bytes() { 1 } else { std::thread::available_parallelism().map_or(1, |n| n.get()) };
    let queue = std::sync::Mutex::new(items.iter().zip(parts).enumerate());
    let failed = std::sync::Mutex::new(std::collections::BTreeMap::new());
    let work = || loop {
        let Some((i, (item, part))) = queue.lock().unwrap_or_else(|e| e.into_inner()).next() else { break };
        if let Err(e) = fill(item, part) {
            failed.lock().unwrap_or_else(|e| e.into_inner()).insert(i, e);
        }
    };
    std::thread::scope(|s| {
        for _ in 1..threads.min(items.len()) {
            s.spawn(work);
        }
        work();
    });
    match failed.into_inner().unwrap_or_else(|e| e.into_inner()).into_iter().next() {
        Some((_, e)) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decompressed_bytes_are_bounded_by_the_stored_ones() {
        let bound = 1000 * 64 + (64 << 20);
        assert_eq!(beyond_ratio(bound, 1000), None);
        assert_eq!(beyond_ratio(bound + 1, 1000).unwrap(), "more than 64 times as many plus 64 MB, refused");
        assert!(beyond_ratio(usize::MAX, usize::MAX).is_none());
    }

    #[test]
    fn every_part_is_filled_and_the_first_error_wins() {
        let mut buf = vec![0u8; 40];
        let places = [(0, 3), (8, 5), (16, 0), (24, 16)];
        let parts = split(&mut buf, &places);
        let items: Vec<u8> = (1..=4).collect();
        side_by_side(&items, parts, usize::MAX, |&k, part| {
            part.fill(k);
            Ok(())
        })
        .unwrap();
        let want: Vec<u8> = (0..40)
            .map(|i| match i {
                0..3 => 1,
                8..13 => 2,
                24..40 => 4,
                _ => 0,
            })
            .collect();
        assert_eq!(buf, want);
        let parts = split(&mut buf, &places);
        let e =
            side_by_side(&items, parts, usize::MAX, |&k, _| if k % 2 == 0 { Err(format!("item {k}")) } else { Ok(()) });
        assert_eq!(e.unwrap_err(), "item 2");
    }
}
