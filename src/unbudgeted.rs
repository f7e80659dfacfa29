//! Polls that tokio's cooperative budget must not refuse: deadlines, and
//! the check for a client leaving.
//!
//! tokio gives a task a budget of operations per poll; once the task has
//! spent it, every socket, timer and channel it polls answers `Pending`
//! (and the task is woken again at once). A future that reads a peer
//! sending without pause spends the budget at every poll, so a deadline or
//! a check polled after that read is refused at every poll as well and
//! never fires: a provider flooding comments kept a stream past its
//! first-byte and idle limits, a flood of interim heads held a request
//! past its head deadline, and a client that left went unnoticed. Polled
//! through [`poll`], they are asked outside the budget (what they cost is
//! a timer's check, or a read that finds nothing: no flood of their own).

use std::future::Future;
use std::task::{Context, Poll};

/// `check` polled once, outside the task's cooperative budget.
pub fn poll<T>(cx: &mut Context<'_>, check: impl FnMut(&mut Context<'_>) -> Poll<T>) -> Poll<T> {
    let check = tokio::task::coop::unconstrained(std::future::poll_fn(check));
    std::pin::pin!(check).poll(cx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A task that has spent its budget still sees a deadline that has
    /// passed, through [`poll`]; polled plainly, the same timer is
    /// refused.
    #[tokio::test]
    async fn a_passed_deadline_is_seen_with_the_budget_spent() {
        let mut timer = std::pin::pin!(tokio::time::sleep(Duration::ZERO));
        tokio::time::sleep(Duration::from_millis(2)).await;
        let (plain, unbudgeted) = std::future::poll_fn(|cx| {
            // Spends the task's budget, as a read of a flood does.
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            for _ in 0..1000 {
                tx.send(()).unwrap();
            }
            while rx.poll_recv(cx).is_ready() {}
            let plain = timer.as_mut().poll(cx).is_ready();
            let unbudgeted = poll(cx, |cx| timer.as_mut().poll(cx)).is_ready();
            Poll::Ready((plain, unbudgeted))
        })
        .await;
        assert!(!plain, "the budget was not spent: the test shows nothing");
        assert!(unbudgeted);
    }
}
