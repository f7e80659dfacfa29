//! How far a request's handler got, for the access line and metrics of a
//! request that is never answered (its client left, or the drain deadline
//! passed): the model asked for, the route, and the provider of the attempt
//! that was under way and how many attempts had started.
//!
//! Nothing is written while the request goes well. The handler keeps what
//! it has reached in a [`ProgressWatch`] on its own stack (borrows, no
//! copies); only when the handler is dropped before answering does the
//! watch copy it into the [`RequestProgress`], which the request context's
//! drop guard reads just after.

use crate::access_log::{RequestedModel, RouteName};
use crate::proxy::failover::AttemptReport;
use crate::proxy::request::ChatRequest;
use crate::proxy::route::Route;
use crate::proxy::upstream::UpstreamInfo;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Owned by the request's caller, so that both the handler and the request
/// context's drop guard can borrow it.
#[derive(Default)]
pub struct RequestProgress {
    /// The connection's peer, for the access line. Carried here, borrowed,
    /// rather than as an argument of the request's future: a field more in
    /// that future's first state made the compiler copy the whole future
    /// (~2 KB, ~450 instructions) where it had built it in place.
    client: Option<IpAddr>,
    /// Boxed: a pointer's room in every request's future, and an
    /// allocation only for a request that is never answered.
    left: Mutex<Option<Box<LeftAt>>>,
    /// The provider of the attempt under way and the attempts started,
    /// kept once the request is logged: for the answer the connection gives
    /// in the handler's place at the drain deadline.
    last_attempt: Mutex<Option<(Arc<str>, u32)>>,
    /// Whether the connection reads the request's body as the handler asks
    /// (one over its first read): only then is `key` kept.
    reads_body: bool,
    /// The client key the request was checked against, once it is: the
    /// connection charges the body it reads to the key's share.
    key: Mutex<Option<Arc<str>>>,
}

/// What an unanswered request had reached.
pub struct LeftAt {
    pub model: RequestedModel,
    pub route: Option<RouteName>,
    /// The provider of the last attempt started, with `attempts` counting
    /// every attempt started (the cancelled one too).
    pub upstream: Option<UpstreamInfo>,
}

impl RequestProgress {
    /// For a request that came from `client`; `reads_body` when the
    /// connection reads its body as the handler asks.
    pub fn from_client(client: IpAddr, reads_body: bool) -> Self {
        RequestProgress {
            client: Some(client),
            reads_body,
            ..RequestProgress::default()
        }
    }

    /// The connection's peer (the unspecified address for a request that
    /// came from no connection: tests).
    pub fn client(&self) -> IpAddr {
        self.client
            .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED))
    }

    /// Records the client key the request was checked against, when the
    /// connection reads its body (the common small body came whole with
    /// its head, and needs nothing kept).
    pub fn set_key(&self, key: &Arc<str>) {
        if self.reads_body
            && let Ok(mut kept) = self.key.lock()
        {
            *kept = Some(key.clone());
        }
    }

    /// The client key the request was checked against, once it has been;
    /// none when the gateway runs without keys.
    pub fn key(&self) -> Option<Arc<str>> {
        self.key.lock().ok().and_then(|key| key.clone())
    }

    /// Starts watching a request that has been read: its model is known.
    pub fn watch<'p, 'c>(&'p self, chat: &'c ChatRequest) -> ProgressWatch<'p, 'c> {
        ProgressWatch {
            progress: self,
            chat,
            route: None,
            report: AttemptReport::default(),
        }
    }

    /// What the handler had reached, when it was dropped before answering.
    pub fn take(&self) -> Option<Box<LeftAt>> {
        self.left.lock().map_or(None, |mut left| left.take())
    }

    /// Keeps the provider and attempt count of a request taken by
    /// [`take`](Self::take), for [`last_attempt`](Self::last_attempt).
    pub fn keep_last_attempt(&self, upstream: &UpstreamInfo) {
        if let Ok(mut slot) = self.last_attempt.lock() {
            *slot = Some((upstream.provider.clone(), upstream.attempts));
        }
    }

    /// The provider an unanswered request was last sent to, and how many
    /// attempts it had started.
    pub fn last_attempt(&self) -> Option<(Arc<str>, u32)> {
        self.last_attempt
            .lock()
            .map_or(None, |mut last| last.take())
    }
}

/// The handler's side: filled in as the request goes on, and copied out
/// only if the handler is dropped before [`answered`](Self::answered).
pub struct ProgressWatch<'p, 'c> {
    progress: &'p RequestProgress,
    chat: &'c ChatRequest,
    /// The route the model matched.
    pub route: Option<&'c Route>,
    /// Updated by the fail-over loop as each attempt starts.
    pub report: AttemptReport<'c>,
}

impl ProgressWatch<'_, '_> {
    /// The handler has its answer: nothing to record.
    pub fn answered(self) {
        std::mem::forget(self);
    }
}

impl Drop for ProgressWatch<'_, '_> {
    fn drop(&mut self) {
        let left = LeftAt {
            model: RequestedModel {
                name: self.chat.logged_model(),
                stream: self.chat.stream,
            },
            route: self.route.map(|route| RouteName(route.name.clone())),
            upstream: self.report.target.map(|target| UpstreamInfo {
                attempts: self.report.attempts,
                ..UpstreamInfo::new(target)
            }),
        };
        if let Ok(mut slot) = self.progress.left.lock() {
            *slot = Some(Box::new(left));
        }
    }
}
