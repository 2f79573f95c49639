//! A job's messages to the broker, in the order they were sent, each kept until the broker
//! confirms it.
//!
//! A message goes out without waiting for the confirm of the one before (the channel keeps
//! their order on the wire and in the queues), nor for lapin's I/O thread to write it: its
//! frames are queued on the channel, in order, when it is sent, and the write and the
//! confirm are awaited together later (so a job's messages share the I/O thread's wake-ups
//! instead of taking one round trip each); the job's delivery is acked only once
//! [`Outbox::flush`] has seen every confirm. A connection lost on the way takes the
//! unconfirmed messages with it: they go out again on the next connection, in their order.
//! A message the broker had taken in before the loss but whose confirm was lost with it goes
//! out twice (same contents); nothing is left out.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use lapin::options::BasicPublishOptions;
use lapin::Confirmation;
use lapin::PublisherConfirm;
use tokio::sync::watch;

use super::connection::{Lane, Link};
use super::publish::{persistent, poll_once};

/// Messages out but not yet confirmed, at most, before a send waits for the oldest confirm:
/// with the job's log channel, this bounds what a job holds while the broker is away.
const MAX_UNCONFIRMED: usize = 64;

struct Message {
    exchange: &'static str,
    key: String,
    kind: &'static str,
    /// Shared with the publish still in progress (it may have to go out again).
    body: Arc<Vec<u8>>,
    /// The connection it went out on and how far it got; `None` until it has gone out
    /// (again).
    sent: Option<(u64, Sent)>,
}

/// A publish whose frames are queued on the channel: lapin's I/O thread has yet to write
/// them (then it gives the confirm to wait for), or has written them.
enum Sent {
    Writing(Pin<Box<dyn Future<Output = Result<PublisherConfirm, lapin::Error>> + Send>>),
    Written(PublisherConfirm),
}

/// See the module's doc.
pub(super) struct Outbox {
    link: watch::Receiver<Option<Link>>,
    lane: Lane,
    pending: VecDeque<Message>,
    /// The pause before messages the broker refused go out again (it grows while the broker
    /// goes on refusing them), and whether this job said so already.
    refused_wait: Duration,
    said_refused: bool,
}

/// What became of a message sent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Settled {
    /// The broker took it in.
    Confirmed,
    /// The broker refused it (nack): a queue at its length limit with `reject-publish`, a
    /// broker limit. Sent again at once, it is refused again at once.
    Refused,
    /// The write or the confirm was lost with the channel or the connection.
    Lost,
}

/// What the broker made of the message.
async fn confirmed(sent: Sent) -> Settled {
    let confirm = match sent {
        Sent::Written(confirm) => confirm,
        Sent::Writing(write) => match write.await {
            Ok(confirm) => confirm,
            Err(e) => {
                tracing::debug!("a publish was not written ({e}); the message goes out again");
                return Settled::Lost;
            }
        },
    };
    match confirm.await {
        Ok(Confirmation::Ack(_) | Confirmation::NotRequested) => Settled::Confirmed,
        Ok(Confirmation::Nack(_)) => Settled::Refused,
        // The channel or the connection went away: lapin rejects what it still waited for.
        Err(e) => {
            tracing::debug!("a confirm was lost ({e}); the message goes out again");
            Settled::Lost
        }
    }
}

/// The first pause before refused messages go out again, and the longest.
const REFUSED_WAIT: Duration = Duration::from_millis(100);
const REFUSED_WAIT_MAX: Duration = Duration::from_secs(5);

impl Outbox {
    pub(super) fn new(link: watch::Receiver<Option<Link>>, lane: Lane) -> Self {
        Self {
            link,
            lane,
            pending: VecDeque::new(),
            refused_wait: REFUSED_WAIT,
            said_refused: false,
        }
    }

    /// Sends a persistent message after every earlier one, without waiting for its confirm
    /// (but for the oldest ones, when [`MAX_UNCONFIRMED`] are out). Waits while there is no
    /// connection.
    pub(super) async fn send(
        &mut self,
        exchange: &'static str,
        key: &str,
        kind: &'static str,
        body: Vec<u8>,
    ) {
        self.pending.push_back(Message {
            exchange,
            key: key.to_owned(),
            kind,
            body: Arc::new(body),
            sent: None,
        });
        self.go_out().await;
        while self.pending.len() > MAX_UNCONFIRMED {
            self.settle_front().await;
        }
    }

    /// Takes over `other`'s messages (another task's of the same job), to be confirmed with
    /// these.
    pub(super) fn absorb(&mut self, mut other: Outbox) {
        self.pending.append(&mut other.pending);
    }

    /// Returns once the broker has confirmed every message, sending again, in order, those
    /// a lost connection took.
    pub(super) async fn flush(&mut self) {
        loop {
            self.settle_sent().await;
            if self.pending.is_empty() {
                return;
            }
            self.go_out().await;
        }
    }

    /// Waits for the oldest message's confirm; if it does not come, for every confirm, and
    /// sends the unconfirmed again.
    async fn settle_front(&mut self) {
        if let Some(m) = self.pending.front_mut() {
            if let Some((_, confirm)) = m.sent.take() {
                match confirmed(confirm).await {
                    Settled::Confirmed => {
                        self.refused_wait = REFUSED_WAIT;
                        self.pending.pop_front();
                        return;
                    }
                    Settled::Refused => self.refused().await,
                    Settled::Lost => {}
                }
            }
        }
        // Those after it went out on the same channel: they go again after it, not before.
        self.settle_sent().await;
        self.go_out().await;
    }

    /// The broker refused a message: said once per job, and a pause (growing while the
    /// refusals go on) before it goes out again, instead of a loop as fast as the broker
    /// answers.
    async fn refused(&mut self) {
        if !self.said_refused {
            self.said_refused = true;
            tracing::warn!(
                "the broker refused a message (nack: a queue at its length limit with reject-publish, or a broker limit); it goes out again, after pauses of up to {} s",
                REFUSED_WAIT_MAX.as_secs()
            );
        }
        tokio::time::sleep(self.refused_wait).await;
        self.refused_wait = (self.refused_wait * 2).min(REFUSED_WAIT_MAX);
    }

    /// Waits for the confirm of every message out: the confirmed ones are done, the others
    /// are marked to go out again.
    async fn settle_sent(&mut self) {
        let mut left = VecDeque::with_capacity(self.pending.len());
        let mut refused = false;
        for mut m in std::mem::take(&mut self.pending) {
            if let Some((_, confirm)) = m.sent.take() {
                match confirmed(confirm).await {
                    Settled::Confirmed => {
                        self.refused_wait = REFUSED_WAIT;
                        continue;
                    }
                    Settled::Refused => refused = true,
                    Settled::Lost => {}
                }
            }
            left.push_back(m);
        }
        self.pending = left;
        if refused {
            self.refused().await;
        }
    }

    /// Sends, in order, every message that has not gone out on the current connection,
    /// waiting for one (with backoff) while there is none.
    async fn go_out(&mut self) {
        let mut wait = Duration::from_millis(50);
        loop {
            let current = self.link.borrow_and_update().clone();
            if let Some(link) = current {
                // Messages out on a lost connection are settled first, so that those to go
                // again keep their place before the newer ones.
                if self
                    .pending
                    .iter()
                    .any(|m| matches!(&m.sent, Some((g, _)) if *g != link.generation))
                {
                    self.settle_sent().await;
                }
                match self.publish_unsent(&link).await {
                    Ok(()) => return,
                    Err(e) => tracing::debug!("publish failed, retrying after a reconnect: {e}"),
                }
            }
            // A new connection, or a pause before the same one is tried again.
            let _ = tokio::time::timeout(wait, self.link.changed()).await;
            wait = (wait * 2).min(Duration::from_secs(2));
        }
    }

    async fn publish_unsent(&mut self, link: &Link) -> Result<(), lapin::Error> {
        for m in self.pending.iter_mut().filter(|m| m.sent.is_none()) {
            let (channel, body) = (link.channel(self.lane).clone(), Arc::clone(&m.body));
            let (exchange, key, kind) = (m.exchange, m.key.as_str().into(), m.kind);
            let mut write: Pin<Box<dyn Future<Output = _> + Send>> = Box::pin(async move {
                channel
                    .basic_publish(
                        exchange.into(),
                        key,
                        BasicPublishOptions::default(),
                        &body,
                        persistent(kind),
                    )
                    .await
            });
            // The first poll queues the frames (and takes the confirm's place in the
            // channel's order); the write is awaited with the confirm.
            let sent = match poll_once(write.as_mut()).await {
                Poll::Ready(confirm) => Sent::Written(confirm?),
                Poll::Pending => Sent::Writing(write),
            };
            m.sent = Some((link.generation, sent));
        }
        Ok(())
    }
}
