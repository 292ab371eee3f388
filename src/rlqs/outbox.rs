//! What waits to be sent on one stream. Actions are kept per bucket, a later one replacing an
//! earlier one not yet sent, so a slow reader costs at most one pending action per bucket.

use std::collections::BTreeMap;
use std::sync::{Mutex, PoisonError};

use tokio::sync::Notify;

use super::ReportError;
use super::assignment::Action;
use super::bucket::BucketName;

/// How a stream ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Normally: the Envoy closed its side, or the server is stopping.
    Finished,
    /// With an error that says what was wrong.
    Failed(ReportError),
}

/// The next thing to send.
#[derive(Debug)]
pub enum Next {
    /// Actions, one per bucket.
    Actions(Vec<(BucketName, Action)>),
    /// Nothing more: end the stream so.
    End(End),
}

/// One stream's pending actions.
#[derive(Debug, Default)]
pub struct Outbox {
    pending: Mutex<Pending>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct Pending {
    actions: BTreeMap<BucketName, Action>,
    end: Option<End>,
}

impl Outbox {
    /// Queues `action` on `bucket`, replacing one not yet sent.
    pub fn push(&self, bucket: BucketName, action: Action) {
        self.lock().actions.insert(bucket, action);
        self.wake.notify_one();
    }

    /// Ends the stream once what is queued has been sent; the first end wins.
    pub fn end(&self, end: End) {
        self.lock().end.get_or_insert(end);
        self.wake.notify_one();
    }

    /// Waits for actions, or the end. Queued actions go first.
    pub async fn next(&self) -> Next {
        loop {
            {
                let mut pending = self.lock();
                if !pending.actions.is_empty() {
                    let actions = std::mem::take(&mut pending.actions);
                    return Next::Actions(actions.into_iter().collect());
                }
                if let Some(end) = pending.end.clone() {
                    return Next::End(end);
                }
            }
            // One reader: a wake-up given before this wait is kept as a permit.
            self.wake.notified().await;
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::FutureExt;

    use super::*;

    fn bucket(v: &str) -> BucketName {
        BucketName::new([("k".to_owned(), v.to_owned())])
    }

    #[test]
    fn a_later_action_replaces_one_not_sent_and_the_end_comes_last() {
        let outbox = Outbox::default();
        assert!(outbox.next().now_or_never().is_none(), "nothing yet");
        outbox.push(bucket("a"), Action::Abandon);
        let assign = Action::Assign {
            assignment: crate::rlqs::Assignment::DenyAll,
            ttl_secs: 3,
        };
        outbox.push(bucket("a"), assign);
        outbox.end(End::Finished);
        outbox.end(End::Failed(ReportError::NoDomain));
        match outbox.next().now_or_never() {
            Some(Next::Actions(actions)) => assert_eq!(actions, [(bucket("a"), assign)]),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            outbox.next().now_or_never(),
            Some(Next::End(End::Finished))
        ));
    }
}
