//! One ordered parallel loop for the CPU engine: items computed on several
//! threads, their results folded in index order. Which thread computes an
//! item never changes its result, and the fold's order is fixed, so the
//! (floating-point) results do not depend on the thread count.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;

/// Runs `run(i)` for every `i` in `0..count` on this thread and up to
/// `threads - 1` others, each claiming the next item, and hands each result
/// to `fold` in index order, as soon as those before it are in (all on
/// this thread when `threads <= 1`). A result that finished before an
/// earlier one waits; the others wait for a slot when `threads` results
/// are queued.
pub(crate) fn ordered<T: Send>(count: usize, threads: usize, run: impl Fn(usize) -> T + Sync, mut fold: impl FnMut(T)) {
    let threads = threads.min(count);
    if threads <= 1 {
        return (0..count).for_each(|i| fold(run(i)));
    }
    let next = AtomicUsize::new(0);
    let claim = || Some(next.fetch_add(1, Ordering::Relaxed)).filter(|&i| i < count);
    let (tx, rx) = mpsc::sync_channel::<(usize, T)>(threads);
    std::thread::scope(|s| {
        for _ in 1..threads {
            let (tx, claim, run) = (tx.clone(), &claim, &run);
            s.spawn(move || {
                while let Some(i) = claim() {
                    if tx.send((i, run(i))).is_err() {
                        break;
                    }
                }
            });
        }
        drop(tx);
        let mut waiting = BTreeMap::new();
        let mut due = 0;
        let mut arrive = |i: usize, part: T, waiting: &mut BTreeMap<usize, T>| {
            waiting.insert(i, part);
            while let Some(part) = waiting.remove(&due) {
                fold(part);
                due += 1;
            }
        };
        // This thread is one of the workers.
        while let Some(i) = claim() {
            let part = run(i);
            arrive(i, part, &mut waiting);
            while let Ok((j, part)) = rx.try_recv() {
                arrive(j, part, &mut waiting);
            }
        }
        for (j, part) in rx {
            arrive(j, part, &mut waiting);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_in_order_on_any_thread_count() {
        for threads in [1, 2, 3, 8] {
            let mut seen = Vec::new();
            // Early items are the slow ones, so later ones finish first.
            ordered(
                20,
                threads,
                |i| {
                    std::thread::sleep(std::time::Duration::from_micros(((20 - i) * 50) as u64));
                    i
                },
                |i| seen.push(i),
            );
            assert_eq!(seen, (0..20).collect::<Vec<_>>(), "{threads} threads");
        }
    }
}
