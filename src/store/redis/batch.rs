//! Batching: concurrent decisions bound for one slot go to Redis as one script call.
//!
//! Each route (a Cluster slot; the whole server on a single node) has a queue. A request joins
//! its route's queue; while fewer than [`IN_FLIGHT`] calls are in flight on that route, the
//! queue is sent at once (a lone request waits for nothing), else it goes with the next call,
//! sent as soon as one in flight answers. Under load a call carries what arrived during a round
//! trip, so round trips and script overhead per decision fall well below one, and with two
//! calls in flight Redis works on one while tollgate reads the other's answer. `decide.lua`
//! decides a call's requests in order, each at its own time and each settled on its own.

use std::sync::{Arc, Mutex, PoisonError, Weak};

use dashmap::DashMap;
use redis::cluster_routing::Slot;
use tokio::sync::oneshot;

use super::RedisStore;
use super::call::{CallFailure, Request};
use super::health::Failure;

/// Where a call goes: a Cluster slot, or `None` on a single node (any keys in one call).
pub(super) type Route = Option<Slot>;

/// The most entries one call carries; more wait for the next call.
const MAX_ENTRIES: usize = 512;

/// The most calls in flight on one route.
const IN_FLIGHT: usize = 2;

/// What a request gets back: its part of the call's reply (its own `decide.lua` reply).
pub(super) type Answer = Result<Vec<i64>, CallFailure>;

/// The queues, one per route in use (at most one per lane, and one for a single node).
#[derive(Default)]
pub(super) struct Batches {
    queues: DashMap<Route, Arc<Queue>>,
}

#[derive(Default)]
struct Queue {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    waiting: Vec<(Request, oneshot::Sender<Answer>)>,
    /// Drivers running (each with a call in flight, sending what waits when it answers).
    drivers: usize,
}

impl Batches {
    /// Queues `request` for `route`; the receiver gets its answer. Starts a driver when fewer
    /// than [`IN_FLIGHT`] run on the route.
    pub(super) fn submit(
        &self,
        store: &Weak<RedisStore>,
        route: Route,
        request: Request,
    ) -> oneshot::Receiver<Answer> {
        let (tx, rx) = oneshot::channel();
        let queue = self.queues.entry(route).or_default().clone();
        let start = {
            let mut state = queue.state.lock().unwrap_or_else(PoisonError::into_inner);
            state.waiting.push((request, tx));
            let start = state.drivers < IN_FLIGHT;
            state.drivers += usize::from(start);
            start
        };
        if start {
            tokio::spawn(drive(queue, store.clone()));
        }
        rx
    }
}

/// Sends the queue's requests, a call at a time, until none waits.
async fn drive(queue: Arc<Queue>, store: Weak<RedisStore>) {
    loop {
        let batch = {
            let mut state = queue.state.lock().unwrap_or_else(PoisonError::into_inner);
            let mut entries = 0;
            let take = state
                .waiting
                .iter()
                .take_while(|(request, _)| {
                    entries += request.entries.len();
                    entries <= MAX_ENTRIES
                })
                .count()
                .max(1);
            if state.waiting.is_empty() {
                state.drivers -= 1;
                return;
            }
            let take = take.min(state.waiting.len());
            state.waiting.drain(..take).collect::<Vec<_>>()
        };
        let (requests, replies): (Vec<Request>, Vec<_>) = batch.into_iter().unzip();
        let answers = match store.upgrade() {
            Some(store) => store.send(&requests).await,
            None => Err(CallFailure {
                failure: Failure::Connection,
                message: "the store was closed".to_owned(),
            }),
        };
        match answers {
            Ok(parts) => {
                for (reply, part) in replies.into_iter().zip(parts) {
                    let _ = reply.send(Ok(part));
                }
            }
            Err(failure) => {
                for reply in replies {
                    let _ = reply.send(Err(failure.clone()));
                }
            }
        }
    }
}
