//! Work split over a few scoped threads, for the batch paths (fsyncs,
//! signature checks): results in order, and no work lost to a thread that
//! could not start or that panicked.

/// Runs `work` on each `per`-sized chunk of `items`, each on its own scoped
/// thread; a chunk whose thread could not start, or panicked, is done by
/// `fallback` on the calling thread. Every thread is joined before this
/// returns; the results come in chunk order.
pub(crate) fn on_threads<T: Sync, R: Send>(
    items: &[T],
    per: usize,
    work: impl Fn(&[T]) -> R + Sync,
    fallback: impl Fn(&[T]) -> R,
) -> Vec<R> {
    let work = &work;
    std::thread::scope(|s| {
        let workers: Vec<_> = items
            .chunks(per.max(1))
            .map(|chunk| std::thread::Builder::new().spawn_scoped(s, move || work(chunk)).ok())
            .collect();
        workers
            .into_iter()
            .zip(items.chunks(per.max(1)))
            .map(|(w, chunk)| w.and_then(|w| w.join().ok()).unwrap_or_else(|| fallback(chunk)))
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::on_threads;

    #[test]
    fn chunks_come_back_in_order_and_a_panicked_one_is_done_again() {
        let items: Vec<u32> = (0..10).collect();
        let sums = on_threads(&items, 3, |c| c.iter().sum::<u32>(), |_| unreachable!());
        assert_eq!(sums, [3, 12, 21, 9]);
        let again = on_threads(
            &items,
            5,
            |c| if c[0] == 0 { panic!("a bug in the work") } else { c.len() },
            |c| c.len() * 100,
        );
        assert_eq!(again, [500, 5]);
    }
}
