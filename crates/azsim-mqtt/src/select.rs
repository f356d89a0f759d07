//! Waiting on two futures at once without an executor-specific `select` (the firmware runs on
//! embassy, the host tests on tokio).

use core::future::{Future, poll_fn};
use core::pin::pin;
use core::task::Poll;

/// Which of two futures finished first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Either<A, B> {
    /// The first one.
    Left(A),
    /// The second one.
    Right(B),
}

/// Runs `a` and `b` until one finishes, then drops the other. `a` is polled first, so when both
/// are ready the left one wins.
pub async fn select<A: Future, B: Future>(a: A, b: B) -> Either<A::Output, B::Output> {
    let mut a = pin!(a);
    let mut b = pin!(b);
    poll_fn(|cx| {
        if let Poll::Ready(x) = a.as_mut().poll(cx) {
            return Poll::Ready(Either::Left(x));
        }
        if let Poll::Ready(x) = b.as_mut().poll(cx) {
            return Poll::Ready(Either::Right(x));
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::future::{pending, ready};

    fn block_on<F: Future>(f: F) -> F::Output {
        let waker = std::task::Waker::noop();
        let mut cx = core::task::Context::from_waker(waker);
        let mut f = pin!(f);
        loop {
            if let Poll::Ready(x) = f.as_mut().poll(&mut cx) {
                return x;
            }
        }
    }

    #[test]
    fn the_ready_side_wins() {
        assert_eq!(
            block_on(select(pending::<u8>(), ready(2u16))),
            Either::Right(2)
        );
        assert_eq!(
            block_on(select(ready(1u8), pending::<u16>())),
            Either::Left(1)
        );
    }

    #[test]
    fn the_left_side_wins_a_tie() {
        assert_eq!(block_on(select(ready(1u8), ready(2u8))), Either::Left(1));
    }
}
