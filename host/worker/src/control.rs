//! The handle on a running worker ([`Control`]): what signals and the HTTP endpoints act
//! through (pause, resize, drain, shut down), and what it reports ([`WorkerStatus`]).

use super::*;

/// A handle on a running worker: what signals and the HTTP endpoints act through.
#[derive(Clone)]
pub struct Control(pub(crate) Arc<Shared>);

/// What `GET /worker` answers.
#[derive(Debug, Serialize)]
pub struct WorkerStatus {
    /// The worker's id.
    pub worker_id: String,
    /// The backend it runs jobs on.
    pub backend: String,
    /// Jobs at once.
    pub pool_size: usize,
    /// Intake paused (SIGUSR2).
    pub paused: bool,
    /// Taking no new jobs, finishing (SIGINT) or requeueing (SIGTERM) the running ones.
    pub draining: bool,
    /// Seconds since the worker started.
    pub uptime_secs: f64,
    /// The running jobs.
    pub running: Vec<RunningStatus>,
}

impl WorkerStatus {
    /// Whether jobs are taken, in words: `taking jobs`, `paused` or `draining`.
    pub fn intake(&self) -> &'static str {
        if self.draining {
            "draining"
        } else if self.paused {
            "paused"
        } else {
            "taking jobs"
        }
    }
}

/// One running job in [`WorkerStatus`].
#[derive(Debug, Serialize)]
pub struct RunningStatus {
    /// The job.
    pub job_id: u64,
    /// Its backend.
    pub backend: String,
    /// Its instance, once started.
    pub instance_id: Option<String>,
    /// Seconds since it was claimed.
    pub elapsed_secs: f64,
}

impl Control {
    /// Pauses or resumes intake (SIGUSR2); returns whether it is paused now.
    pub fn toggle_pause(&self) -> bool {
        let paused = !self.0.paused.fetch_xor(true, Ordering::SeqCst);
        self.0.changed.notify_waiters();
        paused
    }

    /// Pauses intake (the original's `DELETE /worker {"graceful": true, "pause": true}`).
    pub fn pause(&self) {
        self.0.paused.store(true, Ordering::SeqCst);
        self.0.changed.notify_waiters();
    }

    /// Sets the pool's size (the original's `PATCH /worker {"poolSize": N}`), within 1 and
    /// [`MAX_POOL_SIZE`]; returns the new size. Slots taken away go once jobs free them.
    pub fn set_pool_size(&self, n: usize) -> usize {
        let n = n.clamp(1, MAX_POOL_SIZE);
        loop {
            let now = self.0.pool_size.load(Ordering::SeqCst);
            if now == n {
                return n;
            }
            let moved = if now < n { self.grow() } else { self.shrink() };
            if moved == now {
                return now; // at a bound
            }
        }
    }

    /// One more job at once (SIGTTIN, `POST /pool/increment`), never above
    /// [`MAX_POOL_SIZE`]; returns the new size.
    pub fn grow(&self) -> usize {
        let grown = self
            .0
            .pool_size
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < MAX_POOL_SIZE).then_some(n + 1)
            });
        match grown {
            Ok(old) => {
                self.0.slots.add_permits(1);
                old + 1
            }
            Err(n) => n,
        }
    }

    /// One job fewer at once, never below one (SIGTTOU, `POST /pool/decrement`): the slot
    /// goes once a job frees it. Returns the new size.
    pub fn shrink(&self) -> usize {
        let shrunk = self
            .0
            .pool_size
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n > 1).then(|| n - 1)
            });
        match shrunk {
            Ok(old) => {
                let slots = Arc::clone(&self.0.slots);
                tokio::spawn(async move {
                    if let Ok(permit) = slots.acquire_owned().await {
                        permit.forget();
                    }
                });
                old - 1
            }
            Err(n) => n,
        }
    }

    /// Whether the worker takes no new jobs (draining or shutting down).
    pub fn draining(&self) -> bool {
        self.0.draining.load(Ordering::SeqCst)
    }

    /// Takes no new jobs; running ones finish (SIGINT).
    pub fn drain(&self) {
        if !self.0.draining.swap(true, Ordering::SeqCst) {
            // Said at once: a worker with nothing running stops within the millisecond.
            crate::notify::send("STOPPING=1");
        }
        self.0.changed.notify_waiters();
    }

    /// Takes no new jobs and cancels the running ones, which are requeued (SIGTERM, or a
    /// second SIGINT). Called again, it abandons stops still in progress.
    pub fn shutdown(&self) {
        self.0.shutting_down.store(true, Ordering::SeqCst);
        self.drain();
        self.cancel_all(CancelReason::Shutdown);
    }

    /// Whether a shutdown began (a second one abandons stops in progress).
    pub fn shutting_down(&self) -> bool {
        self.0.shutting_down.load(Ordering::SeqCst)
    }

    /// Cancels job `job_id` if this worker runs it (state cancelled); false if it does not.
    pub fn cancel(&self, job_id: u64) -> bool {
        let running = self.0.running.lock().unwrap_or_else(|e| e.into_inner());
        let mut found = false;
        for r in running.values().filter(|r| r.job_id == job_id) {
            found |= r.cancel.try_send(CancelReason::Requested).is_ok();
        }
        found
    }

    fn cancel_all(&self, reason: CancelReason) {
        let running = self.0.running.lock().unwrap_or_else(|e| e.into_inner());
        for r in running.values() {
            let _ = r.cancel.try_send(reason);
        }
    }

    /// Whether the worker takes jobs now (`GET /ready`): not paused, not draining, and its
    /// queue usable.
    pub fn ready(&self) -> bool {
        !self.0.paused.load(Ordering::SeqCst)
            && !self.0.draining.load(Ordering::SeqCst)
            && (self.0.queue_problem)().is_none()
    }

    /// Why the queue cannot be used now, if it cannot.
    pub fn queue_problem(&self) -> Option<String> {
        (self.0.queue_problem)()
    }

    /// The worker's state (`GET /worker`).
    pub fn status(&self) -> WorkerStatus {
        let running = self.0.running.lock().unwrap_or_else(|e| e.into_inner());
        WorkerStatus {
            worker_id: self.0.worker_id.clone(),
            backend: self.0.backend.clone(),
            pool_size: self.0.pool_size.load(Ordering::SeqCst),
            paused: self.0.paused.load(Ordering::SeqCst),
            draining: self.0.draining.load(Ordering::SeqCst),
            uptime_secs: self.0.started_at.elapsed().as_secs_f64(),
            running: running
                .values()
                .map(|r| RunningStatus {
                    job_id: r.job_id,
                    backend: r.backend.clone(),
                    instance_id: r.instance_id.clone(),
                    elapsed_secs: r.started.elapsed().as_secs_f64(),
                })
                .collect(),
        }
    }

    /// The metrics in the Prometheus text format (`GET /metrics`).
    pub fn metrics(&self) -> String {
        self.0.metrics.render()
    }
}
