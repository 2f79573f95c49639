//! Deduplication of deliveries: **a message is not a job.** A message is identified by its
//! job id and a SHA-256 digest of its body ([`MessageKey`]). Only a delivery the broker marks
//! `redelivered` may be answered from what this worker ran (joined to a run of the same
//! message still going on here, or acked when such a run ended with a final state); any other
//! delivery runs, whatever its job id. A requeue publishes a *new* message (its body carries
//! the raised requeue count) and is never remembered as finished. travis publishes the same
//! job id again when a build is restarted: a different message, which runs (after the run of
//! the same id on this worker ends: the worker never runs one job id twice at once).

use super::*;

/// What identifies a message: its job id and the digest of its body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct MessageKey {
    pub(super) job_id: u64,
    pub(super) digest: [u8; 32],
}

impl MessageKey {
    pub(super) fn of(job_id: u64, body: &[u8]) -> Self {
        use sha2::Digest as _;
        Self {
            job_id,
            digest: sha2::Sha256::digest(body).into(),
        }
    }
}

/// The machine lock key's prefix of a queue: a digest of its vhost and name, as a file
/// name. Not of the broker's address: one broker has many names (`localhost`,
/// `127.0.0.1`, a DNS alias), and two workers of a machine naming it differently must still
/// share their locks. (Two brokers whose vhost and queue names agree share them too: runs
/// of equal job ids then wait for each other, which is safe.)
pub(super) fn lock_prefix(s: &AmqpSettings) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{}\n{}", s.broker.vhost(), s.queue_name));
    hex(&digest[..8])
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How many finished messages are remembered for answering their redeliveries.
pub(super) const FINISHED_REMEMBERED: usize = 10_000;

/// The messages this worker runs or ran (see the module doc for the rule). `A` is what
/// answers a delivery (lapin's acker; a stand-in in the unit tests).
pub(super) struct Seen<A = lapin::Acker> {
    /// Messages being run here, each with the redeliveries of it that arrived meanwhile
    /// (acked with it).
    pub(super) running: HashMap<MessageKey, Vec<A>>,
    /// Messages whose run here ended with a final state, oldest first.
    pub(super) finished: VecDeque<MessageKey>,
    pub(super) finished_set: std::collections::HashSet<MessageKey>,
}

/// What [`Seen::arrived`] says of a delivery.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Arrival {
    /// Run it.
    Run,
    /// A redelivery of a message running here: acked when that run ends.
    Joined,
    /// A redelivery of a message that finished here: ack it, do not run it.
    AlreadyFinished,
}

impl<A> Default for Seen<A> {
    fn default() -> Self {
        Self {
            running: HashMap::new(),
            finished: VecDeque::new(),
            finished_set: std::collections::HashSet::new(),
        }
    }
}

impl<A: Clone> Seen<A> {
    /// Applies the rule to a delivery of `key`; `acker` is kept when it joins a run.
    pub(super) fn arrived(&mut self, key: MessageKey, redelivered: bool, acker: &A) -> Arrival {
        if redelivered {
            if let Some(ackers) = self.running.get_mut(&key) {
                ackers.push(acker.clone());
                return Arrival::Joined;
            }
            if self.finished_set.contains(&key) {
                return Arrival::AlreadyFinished;
            }
        }
        // A fresh message (even one whose twin runs here: published twice) runs; the
        // worker serialises runs of one job id.
        self.running.entry(key).or_default();
        Arrival::Run
    }

    /// Whether a redelivery of `key` joined its run here.
    pub(super) fn has_joined(&self, key: &MessageKey) -> bool {
        self.running.get(key).is_some_and(|a| !a.is_empty())
    }

    /// The run of `key` ended, with a final state or not (a requeue, a reject); returns the
    /// redeliveries to ack with it.
    pub(super) fn ended(&mut self, key: MessageKey, finished: bool) -> Vec<A> {
        let extra = self.running.remove(&key).unwrap_or_default();
        if finished && self.finished_set.insert(key) {
            self.finished.push_back(key);
            if self.finished.len() > FINISHED_REMEMBERED {
                if let Some(old) = self.finished.pop_front() {
                    self.finished_set.remove(&old);
                }
            }
        }
        extra
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_broker_named_two_ways_gives_one_lock_prefix() {
        let settings = |url: &str| AmqpSettings {
            broker: Broker::new(url, &TlsSettings::default(), DEFAULT_HEARTBEAT)
                .unwrap_or_else(|e| panic!("{e}")),
            logs_broker: None,
            queue_name: "builds.linux".into(),
            prefetch: 1,
            state_queue: String::new(),
            log_queue: String::new(),
            infra: String::new(),
            machine_locks: None,
            consumer_priority: None,
        };
        let a = lock_prefix(&settings("amqp://guest:guest@127.0.0.1:5672/%2f"));
        assert_eq!(a, lock_prefix(&settings("amqp://u:p@localhost:5672/")));
        assert_eq!(a, lock_prefix(&settings("amqp://localhost")));
        assert_ne!(a, lock_prefix(&settings("amqp://localhost/other")));
    }

    fn key(id: u64, body: &str) -> MessageKey {
        MessageKey::of(id, body.as_bytes())
    }

    /// D1: a requeue republishes the job; the broker may hand the new message back before
    /// the old one is acked. A message is not a job: the new one runs.
    #[test]
    fn a_requeued_jobs_new_message_runs_while_the_old_one_is_still_unacked() {
        let mut seen = Seen::<u32>::default();
        let first = key(7, r#"{"job":{"id":7}}"#);
        assert_eq!(seen.arrived(first, false, &1), Arrival::Run);
        let requeued = key(7, r#"{"job":{"id":7},"meta":{"requeue_count":1}}"#);
        assert_eq!(seen.arrived(requeued, false, &2), Arrival::Run);
        assert!(seen.ended(first, false).is_empty());
        assert!(seen.ended(requeued, true).is_empty());
    }

    /// D2: a requeue is never finished: the requeued message, or the old one redelivered,
    /// runs again here.
    #[test]
    fn a_requeue_is_never_remembered_as_finished() {
        let mut seen = Seen::<u32>::default();
        let m = key(7, "a");
        assert_eq!(seen.arrived(m, false, &1), Arrival::Run);
        seen.ended(m, false);
        assert_eq!(seen.arrived(m, true, &2), Arrival::Run);
    }

    /// Only a redelivery may be answered from what this worker ran.
    #[test]
    fn only_a_redelivery_of_the_same_message_is_answered_from_what_ran_here() {
        let mut seen = Seen::<u32>::default();
        let m = key(7, "a");
        assert_eq!(seen.arrived(m, false, &1), Arrival::Run);
        assert_eq!(seen.arrived(m, true, &2), Arrival::Joined);
        // The same job id in another body (a restarted build) is another message.
        assert_eq!(seen.arrived(key(7, "b"), true, &3), Arrival::Run);
        assert_eq!(seen.ended(m, true), vec![2]);
        assert_eq!(seen.arrived(m, true, &4), Arrival::AlreadyFinished);
        // Published again, not redelivered: it runs.
        assert_eq!(seen.arrived(m, false, &5), Arrival::Run);
    }

    #[test]
    fn finished_messages_are_remembered_within_a_bound() {
        let mut seen = Seen::<u32>::default();
        for i in 0..(FINISHED_REMEMBERED as u64 + 10) {
            let m = key(i, "x");
            seen.arrived(m, false, &0);
            seen.ended(m, true);
        }
        assert_eq!(seen.finished.len(), FINISHED_REMEMBERED);
        assert_eq!(seen.finished_set.len(), FINISHED_REMEMBERED);
        assert_eq!(seen.arrived(key(0, "x"), true, &0), Arrival::Run);
    }
}
