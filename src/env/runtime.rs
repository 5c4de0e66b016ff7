//! openraft's runtime with seeded randomness.
//!
//! openraft draws its election timeout from `AsyncRuntime::thread_rng()`. The stock
//! runtime uses the OS-seeded thread RNG, which makes a simulated run unrepeatable.
//! Here every task spawned through the runtime carries its own RNG, seeded from its
//! parent's, and the root seed comes from the node's environment (`with_seed`).

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

use openraft::async_runtime::TokioOneShotSender;
use openraft::{AsyncRuntime, OptionalSend, TokioInstant};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

tokio::task_local! {
    static TASK_RNG: RefCell<SmallRng>;
}

/// The seed used where no seeded scope exists (only outside a node, e.g. in storage
/// tests). Fixed so that even that case is repeatable.
const UNSCOPED_SEED: u64 = 0x6d63_7066_6c65_6574;

fn next_seed() -> u64 {
    TASK_RNG
        .try_with(|rng| rng.borrow_mut().gen())
        .unwrap_or(UNSCOPED_SEED)
}

/// Runs `future` with a task RNG seeded from `seed`; everything openraft spawns inside
/// derives its randomness from it.
pub async fn with_seed<F: Future>(seed: u64, future: F) -> F::Output {
    TASK_RNG
        .scope(RefCell::new(SmallRng::seed_from_u64(seed)), future)
        .await
}

#[derive(Debug, Default, PartialEq, Eq, Clone, Copy)]
pub struct SeededRuntime;

impl AsyncRuntime for SeededRuntime {
    type JoinError = tokio::task::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = tokio::task::JoinHandle<T>;
    type Sleep = tokio::time::Sleep;
    type Instant = TokioInstant;
    type TimeoutError = tokio::time::error::Elapsed;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = tokio::time::Timeout<T>;
    type ThreadLocalRng = SmallRng;
    type OneshotSender<T: OptionalSend> = TokioOneShotSender<T>;
    type OneshotReceiverError = tokio::sync::oneshot::error::RecvError;
    type OneshotReceiver<T: OptionalSend> = tokio::sync::oneshot::Receiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        let rng = RefCell::new(SmallRng::seed_from_u64(next_seed()));
        tokio::spawn(TASK_RNG.scope(rng, future))
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        tokio::time::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        tokio::time::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(
        duration: Duration,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(
        deadline: Self::Instant,
        future: F,
    ) -> Self::Timeout<R, F> {
        tokio::time::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        join_error.is_panic()
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        SmallRng::seed_from_u64(next_seed())
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (TokioOneShotSender(tx), rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn same_seed_same_draws_different_seed_different_draws() {
        let draw = |seed| {
            with_seed(seed, async {
                let first: u64 = SeededRuntime::thread_rng().gen();
                let spawned =
                    SeededRuntime::spawn(async { SeededRuntime::thread_rng().gen::<u64>() })
                        .await
                        .unwrap();
                (first, spawned)
            })
        };
        assert_eq!(draw(7).await, draw(7).await);
        assert_ne!(draw(7).await, draw(8).await);
    }
}
