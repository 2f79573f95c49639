//! Seeded fault injection against `host worker`: N jobs through M concurrent workers, on the
//! directory queue and on RabbitMQ, while workers are killed (`kill -9`, then replaced),
//! stopped (SIGTERM) or drained (SIGINT) and replaced, started late, their isolated plugin
//! servers killed, jobs cancelled (RabbitMQ's `cancel_job`) and broker connections cut, at
//! moments drawn from one seed. Then the invariants an operator relies on are checked:
//!
//! 1. every job reaches exactly one final state (passed; cancelled if a cancel was sent for
//!    it; errored only after its requeue limit), and nothing of it is left on the queue;
//!    delivery is at least once, so a job may end again after a worker that ran it was
//!    killed before the queue heard of the end (the ack, the move to `done/`), or after a
//!    cut connection lost an ack while the job was requeued as a new message: several final
//!    states are accepted when all runs but one were on workers that died, or when a
//!    `kill -9` or a cut hit the job or fired while it was under way (never at once: 2.);
//! 2. no two runs of one job overlap in time on this host: each job's script holds
//!    `flock -n` on a lock file of its own for its whole run, and appends `OVERLAP <id>` to a
//!    shared file when it finds the lock taken (by an orphaned earlier run, say);
//! 3. every passed job's log is whole and is the passed run's: each line names the run's
//!    instance (`$BUILD_DIR`), which the final state names too (directory: `DIR/log/<id>.log`
//!    is exactly that run's output; RabbitMQ: that run's parts are numbered from 0 without a
//!    gap, the last one final, the text whole; for every run, a part number seen twice has
//!    the same contents both times, never a gap);
//! 4. once the last worker has exited cleanly, no process of any job is left (each script's
//!    sleeps carry a marker in their command line, `exec -a`; processes whose working
//!    directory is in SCRIPTS_DIR count too) and SCRIPTS_DIR is empty;
//! 5. the workers' counters agree with what they did: a worker stopped at the end (paused,
//!    idle, then scraped) counts in `host_worker_jobs_total` exactly the final states it
//!    printed; every final state a worker printed was recorded on the queue (a worker prints
//!    a job's end only after its state is written, or on RabbitMQ confirmed); with no
//!    `kill -9`, the recorded final states are exactly those the workers printed; the sum
//!    of the counters of workers that were not killed -9 is at most the recorded states.
//!    Workers killed -9 lose their counters: they are left out, and said so.
//!
//! The seed (FAULTS_SEED, else one from the clock) and the fault plan are printed first,
//! then each fault as it fires with what it hit, so a failure replays:
//!
//! ```text
//! cargo test -p blackbox --test faults -- --nocapture                          # both, default sizes
//! FAULTS_SEED=123456 cargo test -p blackbox --test faults directory -- --nocapture   # replay one
//! FAULTS_JOBS=2000 FAULTS_FAULTS=300 cargo test -p blackbox --test faults -- --nocapture # long
//! ```
//!
//! (The `tests/` package is named `blackbox`: `-p tests` is not a package cargo knows.)
//!
//! Sizes: FAULTS_JOBS (default 200 on the directory queue, 150 on RabbitMQ), FAULTS_WORKERS
//! (3), FAULTS_FAULTS (30); FAULTS_TIMEOUT_SECS bounds the wait for the jobs (default 60 s +
//! 0.4 s a job; a run whose jobs stop moving ends sooner: every worker idle, nothing
//! waiting, no progress for 10 s). A replay draws the same plan: when each fault fires
//! (counted in jobs finished, plus a delay), its kind, each job's script, the workers'
//! settings. Which worker or job a fault hits depends on what runs at that moment, and is
//! printed as it happens. FAULTS_KINDS narrows the plan to some kinds of fault, to chase
//! one defect: a comma-separated list of kill9, server (a plugin server), term, int, late,
//! cancel, cut, restart (e.g. `FAULTS_KINDS=server,cut`).
//!
//! On RabbitMQ a connection cut closes only this run's workers' connections (found by their
//! local ports, closed with `rabbitmqctl close_connection`): other tests may be using the
//! broker at the same time. FAULTS_BROKER_WIDE=1 uses `rabbitmqctl close_all_connections`
//! instead and adds broker restarts (`stop_app`/`start_app`), which disturbs everyone else
//! on that broker. The directory queue has no cancel command (only RabbitMQ's
//! `worker.commands` exchange carries one, and the HTTP endpoints have none), so cancels are
//! injected on RabbitMQ only.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use blackbox::{amqp_url, artifacts, host, plugin_dir};
use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind};
use serde_json::{json, Value};

/// One run at a time: each wants the machine's cores, so that its timings (and a replay's)
/// are not shaped by the other test's load.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn directory_queue_keeps_its_invariants_under_seeded_faults() {
    let _alone = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    Harness::new(QueueKind::Dir).run();
}

#[test]
fn rabbitmq_queue_keeps_its_invariants_under_seeded_faults() {
    let _alone = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    Harness::new(QueueKind::Amqp).run();
}

/// The harness's own checks, on made-up inputs: a check that cannot fail, or fails on a
/// whole log, would make the runs above worthless.
#[test]
fn the_harness_checks_catch_what_they_should_and_only_that() {
    assert_eq!(unix_secs("1970-01-01T00:00:00Z"), Some(0.0));
    assert_eq!(unix_secs("2000-02-29T23:59:59Z"), Some(951_868_799.0));
    let t = unix_secs("2026-12-05T11:38:13.348Z").unwrap_or_default();
    assert!((t - 1_796_470_693.348).abs() < 1e-3, "{t}");
    let (mut a, mut b) = (Rng::new(5), Rng::new(5));
    assert!(
        (0..100).all(|_| a.next() == b.next()),
        "one seed, one sequence"
    );

    let spec = JobSpec {
        id: 9,
        sleeps: vec![100, 200],
        background: false,
    };
    let run = "local-1-2-ab";
    let text = spec.expected_log(run);
    assert_eq!(runs_named(&text, 9), BTreeSet::from([run.to_owned()]));
    let part =
        |n: u64, last: bool, log: &str| json!({"id": 9, "number": n, "final": last, "log": log});
    let check = |parts: &[Value]| {
        let mut v = Vec::new();
        check_parts(&spec, parts, &[run.to_owned()], &mut v);
        v
    };
    let (first, rest) = text.split_at(20); // a line cut in two
                                           // Whole: in one part; in parts cut mid-line; with an empty final part; a part twice.
    assert_eq!(check(&[part(0, true, &text)]), Vec::<String>::new());
    assert_eq!(
        check(&[part(0, false, first), part(1, true, rest)]),
        Vec::<String>::new()
    );
    assert_eq!(
        check(&[
            part(1, false, rest),
            part(0, false, first),
            part(2, true, "")
        ]),
        Vec::<String>::new()
    );
    assert_eq!(
        check(&[
            part(0, false, first),
            part(0, false, first),
            part(1, true, rest)
        ]),
        Vec::<String>::new()
    );
    // Another run's parts beside it do not matter; its own gap does.
    let other = spec.expected_log("local-7-0-cd");
    assert_eq!(
        check(&[part(0, true, &text), part(0, false, &other[..30])]),
        Vec::<String>::new()
    );
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let gap = check(&[
        part(0, false, lines[0]),
        part(2, true, &lines[2..].concat()),
    ]);
    assert!(gap.iter().any(|v| v.contains("a gap")), "{gap:?}");
    assert!(gap.iter().any(|v| v.contains("not whole")), "{gap:?}");
    // Not whole: the end missing; no final part; a part twice with different contents; two
    // runs in one part.
    assert_eq!(check(&[part(0, true, lines[0])]).len(), 1);
    assert_eq!(check(&[part(0, false, &text)]).len(), 1);
    let twice = check(&[
        part(0, false, lines[0]),
        part(0, false, &lines[..2].concat()),
        part(1, true, &lines[1..].concat()),
    ]);
    assert!(
        twice.iter().any(|v| v.contains("different contents")),
        "{twice:?}"
    );
    let mixed = check(&[part(0, true, &format!("{text}{other}"))]);
    assert!(mixed.iter().any(|v| v.contains("mixes")), "{mixed:?}");

    let lines = vec![
        "host: job 5 started on instance local-1".to_owned(),
        "host: job 5 requeued after 1s: the worker shut down".to_owned(),
        "host: job 5 passed (exit code 0) after 1s".to_owned(),
        "host: job 6 cancelled after 2s: cancelled on request".to_owned(),
    ];
    assert_eq!(
        finals_in(&lines),
        [(5, "passed".to_owned()), (6, "cancelled".to_owned())]
    );
    let m = parse_metrics(
        "# HELP x\nhost_worker_jobs_total{state=\"passed\"} 12\nhost_worker_requeues_total 3\n",
    );
    assert_eq!(m.jobs.get("passed"), Some(&12));
    assert_eq!(m.requeues, 3);
}

// ---------------------------------------------------------------------------------------
// Seeded randomness and the plan

/// xorshift64*, seeded through splitmix64: the same seed draws the same plan.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        Self((z ^ (z >> 31)) | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    /// In `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi.saturating_sub(lo) + 1)
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> Option<T> {
        (!items.is_empty()).then(|| items[self.below(items.len() as u64) as usize])
    }
}

/// The seed of this test process: FAULTS_SEED, else one from the clock (both tests use it).
fn process_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| match std::env::var("FAULTS_SEED") {
        Ok(s) if !s.trim().is_empty() => s
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("FAULTS_SEED={s:?} is not a number: {e}")),
        _ => {
            let t = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            (t.as_nanos() as u64 ^ (u64::from(std::process::id()) << 20)) % 1_000_000_000
        }
    })
}

fn env_usize(name: &str, default: usize) -> usize {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{name}={v:?} is not a number: {e}")),
        _ => default,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum QueueKind {
    Dir,
    Amqp,
}

struct Config {
    seed: u64,
    jobs: usize,
    workers: usize,
    faults: usize,
    broker_wide: bool,
    timeout: Duration,
    /// FAULTS_KINDS, as given (empty: every kind this queue has).
    kinds: String,
}

impl Config {
    fn from_env(kind: QueueKind) -> Self {
        let jobs = env_usize(
            "FAULTS_JOBS",
            if kind == QueueKind::Amqp { 150 } else { 200 },
        )
        .max(1);
        Self {
            seed: process_seed(),
            jobs,
            workers: env_usize("FAULTS_WORKERS", 3).max(1),
            faults: env_usize("FAULTS_FAULTS", 30),
            broker_wide: std::env::var("FAULTS_BROKER_WIDE").is_ok_and(|v| v.trim() == "1"),
            timeout: Duration::from_secs(env_usize("FAULTS_TIMEOUT_SECS", 60 + jobs * 2 / 5) as u64),
            kinds: std::env::var("FAULTS_KINDS")
                .unwrap_or_default()
                .trim()
                .to_owned(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Kill9,
    PluginServer,
    Term,
    Int,
    Late,
    Cancel,
    Cut,
    BrokerRestart,
}

impl Kind {
    /// FAULTS_KINDS's names.
    const NAMES: [(&'static str, Kind); 8] = [
        ("kill9", Kind::Kill9),
        ("server", Kind::PluginServer),
        ("term", Kind::Term),
        ("int", Kind::Int),
        ("late", Kind::Late),
        ("cancel", Kind::Cancel),
        ("cut", Kind::Cut),
        ("restart", Kind::BrokerRestart),
    ];

    fn name(self) -> &'static str {
        match self {
            Kind::Kill9 => "kill -9 a worker",
            Kind::PluginServer => "kill -9 a plugin server",
            Kind::Term => "SIGTERM a worker",
            Kind::Int => "SIGINT a worker",
            Kind::Late => "start a worker late",
            Kind::Cancel => "cancel_job",
            Kind::Cut => "cut broker connections",
            Kind::BrokerRestart => "broker stop_app/start_app",
        }
    }
}

/// A fault of the plan: it fires `delay` after `at_done` jobs have finished (or 10 s after
/// the previous fault, if the jobs stop moving).
struct Planned {
    at_done: usize,
    delay: Duration,
    kind: Kind,
    /// Before the replacement starts (kill -9, SIGTERM, SIGINT); the broker's downtime.
    pause: Duration,
}

fn plan(rng: &mut Rng, cfg: &Config, kind: QueueKind) -> Vec<Planned> {
    let mut weights = vec![
        (Kind::Kill9, 3),
        (Kind::PluginServer, 2),
        (Kind::Term, 2),
        (Kind::Int, 2),
        (Kind::Late, 1),
    ];
    if kind == QueueKind::Amqp {
        weights.push((Kind::Cancel, 3));
        weights.push((Kind::Cut, 2));
        if cfg.broker_wide {
            weights.push((Kind::BrokerRestart, 1));
        }
    }
    if !cfg.kinds.is_empty() {
        let wanted: Vec<Kind> = cfg
            .kinds
            .split(',')
            .map(|n| {
                Kind::NAMES
                    .iter()
                    .find(|(name, _)| *name == n.trim())
                    .map(|(_, k)| *k)
                    .unwrap_or_else(|| {
                        panic!(
                            "FAULTS_KINDS: {n:?} is not one of {:?}",
                            Kind::NAMES.map(|(name, _)| name)
                        )
                    })
            })
            .collect();
        for k in &wanted {
            assert!(
                weights.iter().any(|(w, _)| w == k),
                "FAULTS_KINDS: {} is not a fault of this queue{}",
                k.name(),
                if *k == Kind::BrokerRestart {
                    " (restarts need FAULTS_BROKER_WIDE=1)"
                } else {
                    ""
                }
            );
        }
        weights.retain(|(k, _)| wanted.contains(k));
    }
    let total: u64 = weights.iter().map(|(_, w)| w).sum();
    // Late starts replace initial workers: at most all but one start late.
    let mut late = 0;
    let lo = cfg.jobs * 2 / 100;
    let hi = (cfg.jobs * 85 / 100).max(lo);
    let mut plan: Vec<Planned> = (0..cfg.faults)
        .map(|_| {
            let kind = loop {
                let mut r = rng.below(total);
                let mut chosen = weights[0].0;
                for (k, w) in &weights {
                    if r < *w {
                        chosen = *k;
                        break;
                    }
                    r -= w;
                }
                if chosen == Kind::Late {
                    if late + 1 >= cfg.workers {
                        if weights.len() == 1 {
                            break Kind::Late; // only late starts asked for: one more worker each
                        }
                        continue;
                    }
                    late += 1;
                }
                break chosen;
            };
            let pause = match kind {
                // Mostly soon, as a supervisor restarts a worker; sometimes later.
                Kind::Kill9 | Kind::Term | Kind::Int if rng.chance(70) => rng.range(0, 200),
                Kind::Kill9 | Kind::Term | Kind::Int => rng.range(200, 1500),
                Kind::BrokerRestart => rng.range(1000, 4000),
                _ => 0,
            };
            Planned {
                at_done: rng.range(lo as u64, hi as u64) as usize,
                delay: Duration::from_millis(rng.range(0, 400)),
                kind,
                pause: Duration::from_millis(pause),
            }
        })
        .collect();
    plan.sort_by_key(|p| p.at_done);
    plan
}

/// A job: its id, the sleeps of its script (ms), and whether it leaves a process in the
/// background (which the backend's stop must end).
struct JobSpec {
    id: u64,
    sleeps: Vec<u64>,
    background: bool,
}

impl JobSpec {
    fn draw(rng: &mut Rng, id: u64) -> Self {
        let steps = rng.range(1, 3);
        Self {
            id,
            sleeps: (0..steps).map(|_| rng.range(50, 500)).collect(),
            background: rng.chance(15),
        }
    }

    /// The script: takes the job's lock for the whole run (or records the overlap), then
    /// prints lines naming the run's instance between marked sleeps.
    fn script(&self, locks: &Path, marker: &str) -> String {
        let id = self.id;
        let lock = locks.join(format!("{id}.lock"));
        let overlaps = locks.join("overlaps");
        let (lock, overlaps) = (lock.display(), overlaps.display());
        let mut s = format!(
            "R=\"${{BUILD_DIR##*/host-}}\"\n\
             exec 9>>'{lock}'\n\
             if flock -n 9; then echo \"$R $(date +%s.%N)\" >&9\n\
             else echo \"OVERLAP {id} $R $(date +%s.%N) holder $(tail -n 1 '{lock}')\" >> '{overlaps}'; fi\n\
             echo \"J{id}.$R line 1\"\n"
        );
        if self.background {
            s.push_str(&format!(
                "(exec -a {marker} sleep 120) </dev/null >/dev/null 2>&1 9>&- &\n"
            ));
        }
        for (i, ms) in self.sleeps.iter().enumerate() {
            s.push_str(&format!(
                "(exec -a {marker} sleep {}.{:03})\necho \"J{id}.$R line {}\"\n",
                ms / 1000,
                ms % 1000,
                i + 2
            ));
        }
        s.push_str(&format!("echo \"J{id}.$R end\"\n"));
        s
    }

    /// What run `run` (an instance id) prints.
    fn expected_log(&self, run: &str) -> String {
        let mut s = String::new();
        for k in 1..=self.sleeps.len() + 1 {
            s.push_str(&format!("J{}.{run} line {k}\n", self.id));
        }
        s.push_str(&format!("J{}.{run} end\n", self.id));
        s
    }
}

/// The run (instance id) each whole line of `text` names, for job `id`.
fn runs_named(text: &str, id: u64) -> BTreeSet<String> {
    let prefix = format!("J{id}.");
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n'))
        .filter_map(|l| {
            l.strip_prefix(&prefix)?
                .split(' ')
                .next()
                .map(str::to_owned)
        })
        .filter(|r| !r.is_empty())
        .collect()
}

// ---------------------------------------------------------------------------------------
// Processes

fn kill(signal: &str, pid: u32) -> bool {
    Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Live processes (not zombies) whose command line contains `marker` or whose working
/// directory is under `dir`: (pid, command line).
fn job_processes(marker: &str, dir: &Path) -> Vec<(u32, String)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().next())
            .unwrap_or("");
        if state == "Z" || state.is_empty() {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline"))
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .unwrap_or_default();
        let in_dir = std::fs::read_link(e.path().join("cwd")).is_ok_and(|c| c.starts_with(dir));
        if cmdline.contains(marker) || in_dir {
            found.push((pid, cmdline.trim().to_owned()));
        }
    }
    found
}

/// The plugin servers among the children of `pid`.
fn plugin_servers_of(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for e in entries.flatten() {
        let Some(child) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let mut fields = stat
            .rsplit_once(')')
            .map(|(_, r)| r.split_whitespace())
            .into_iter()
            .flatten();
        let state = fields.next().unwrap_or("Z");
        let ppid: u32 = fields.next().and_then(|p| p.parse().ok()).unwrap_or(0);
        if ppid != pid || state == "Z" {
            continue;
        }
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        if String::from_utf8_lossy(&cmdline).contains("__host-plugin-server") {
            found.push(child);
        }
    }
    found
}

/// Local ports of `pid`'s established TCP connections to `port`.
fn tcp_ports_to(pid: u32, port: u16) -> BTreeSet<u16> {
    let mut inodes = HashSet::new();
    if let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path()) {
                let link = link.to_string_lossy().into_owned();
                if let Some(inode) = link
                    .strip_prefix("socket:[")
                    .and_then(|r| r.strip_suffix(']'))
                {
                    inodes.insert(inode.to_owned());
                }
            }
        }
    }
    let mut ports = BTreeSet::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 10 || f[3] != "01" || !inodes.contains(f[9]) {
                continue;
            }
            let port_of = |a: &str| {
                a.rsplit_once(':')
                    .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            };
            if port_of(f[2]) == Some(port) {
                if let Some(local) = port_of(f[1]) {
                    ports.insert(local);
                }
            }
        }
    }
    ports
}

/// `rabbitmqctl` aimed at the tests' broker (as `blackbox::rabbitmqctl`), without asserting
/// success: a connection may close on its own between a listing and its closing.
fn ctl(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("rabbitmqctl");
    if amqp_url().contains(":25677/") {
        cmd.args(["-n", "hosttests@localhost"]);
    }
    cmd.args(args)
        .output()
        .expect("rabbitmqctl (the RabbitMQ fault test cuts connections with it)")
}

/// host:port of the tests' broker.
fn broker_addr() -> String {
    let rest = amqp_url()
        .split_once('@')
        .map_or(amqp_url(), |(_, r)| r)
        .trim_start_matches("amqp://");
    rest.split('/').next().unwrap_or(rest).to_owned()
}

fn broker_port() -> u16 {
    broker_addr()
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(5672)
}

/// Starts the broker's application again when dropped: a failing run must not leave the
/// machine's broker stopped.
struct StartApp;

impl Drop for StartApp {
    fn drop(&mut self) {
        let _ = ctl(&["start_app"]);
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(broker_addr()).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// GET `url` with curl: the body, if the answer was a success.
fn http_get(url: &str) -> Option<String> {
    let out = Command::new("curl")
        .args(["-s", "-f", "-m", "10", url])
        .output()
        .expect("curl (the fault test reads the workers' HTTP endpoints with it)");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

// ---------------------------------------------------------------------------------------
// Workers

#[derive(Clone, Debug, Default, PartialEq)]
struct Metrics {
    jobs: BTreeMap<String, u64>,
    requeues: u64,
    redeliveries: u64,
}

fn parse_metrics(text: &str) -> Metrics {
    let value = |v: &str| v.trim().parse::<f64>().map(|f| f as u64).unwrap_or(0);
    let mut m = Metrics::default();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("host_worker_jobs_total{state=\"") {
            if let Some((state, v)) = rest.split_once("\"} ") {
                m.jobs.insert(state.to_owned(), value(v));
            }
        } else if let Some(v) = line.strip_prefix("host_worker_requeues_total ") {
            m.requeues = value(v);
        } else if let Some(v) = line.strip_prefix("host_worker_redeliveries_total ") {
            m.redeliveries = value(v);
        }
    }
    m
}

/// What a worker wrote on stderr, read by a thread of its own.
#[derive(Default)]
struct Out {
    lines: Vec<String>,
    url: Option<String>,
    ready: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fate {
    /// Runs as started.
    Running,
    /// Killed with SIGKILL by a fault: its counters are lost.
    Killed9,
    /// Sent SIGTERM or SIGINT by a fault; must exit 0.
    Signalled(&'static str),
    /// Paused, scraped and sent SIGINT at the end; must exit 0.
    Stopping,
    /// Killed by the harness after it failed to exit or to start.
    Forced,
}

struct Worker {
    n: usize,
    slot: usize,
    pid: u32,
    pool: u64,
    isolated: bool,
    child: Child,
    out: Arc<Mutex<Out>>,
    reader: Option<std::thread::JoinHandle<()>>,
    fate: Fate,
    signalled_at: Option<Instant>,
    exit: Option<ExitStatus>,
    /// The last /metrics read while it ran, with how many stderr lines it had written then.
    last: Option<(Metrics, usize)>,
    /// /metrics read at the end, paused and idle, just before SIGINT.
    exact: Option<(Metrics, usize)>,
}

impl Worker {
    fn alive(&self) -> bool {
        self.exit.is_none()
    }

    fn out(&self) -> std::sync::MutexGuard<'_, Out> {
        self.out.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn url(&self) -> Option<String> {
        self.out().url.clone()
    }

    fn ready(&self) -> bool {
        self.out().ready
    }

    fn lines(&self) -> Vec<String> {
        self.out().lines.clone()
    }

    fn label(&self) -> String {
        format!(
            "#{} (slot {}, pid {}, pool {}{})",
            self.n,
            self.slot,
            self.pid,
            self.pool,
            if self.isolated { ", isolated" } else { "" }
        )
    }

    fn tail(&self, n: usize) -> String {
        let out = self.out();
        let from = out.lines.len().saturating_sub(n);
        out.lines[from..].join("\n    ")
    }

    /// `GET /worker`: the job ids running, and whether intake is paused.
    fn status(&self) -> Option<(Vec<u64>, bool)> {
        let body = http_get(&format!("{}/worker", self.url()?))?;
        let v: Value = serde_json::from_str(&body).ok()?;
        let running = v["running"]
            .as_array()?
            .iter()
            .filter_map(|r| r["job_id"].as_u64())
            .collect();
        Some((running, v["paused"].as_bool().unwrap_or(false)))
    }

    fn scrape(&self) -> Option<(Metrics, usize)> {
        let lines = self.out().lines.len();
        let body = http_get(&format!("{}/metrics", self.url()?))?;
        Some((parse_metrics(&body), lines))
    }

    /// The final states it printed: (job id, state).
    fn finals_printed(&self) -> Vec<(u64, String)> {
        finals_in(&self.out().lines)
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

const FINAL_STATES: [&str; 4] = ["passed", "failed", "errored", "cancelled"];

/// `host: job <id> <state> ...` lines with a final state.
fn finals_in(lines: &[String]) -> Vec<(u64, String)> {
    lines
        .iter()
        .filter_map(|l| {
            let mut it = l.strip_prefix("host: job ")?.split_whitespace();
            let id = it.next()?.parse().ok()?;
            let state = it.next()?;
            FINAL_STATES
                .contains(&state)
                .then(|| (id, state.to_owned()))
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// The directory queue

struct DirQ {
    dir: tempfile::TempDir,
}

fn job_files(dir: &Path) -> Vec<(u64, String)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !name.ends_with(".json") {
                return None;
            }
            let id = name
                .trim_end_matches(".json")
                .rsplit_once('-')
                .and_then(|(_, id)| id.parse().ok())?;
            Some((id, name))
        })
        .collect()
}

impl DirQ {
    fn url(&self) -> String {
        format!("file://{}", self.dir.path().display())
    }

    fn path(&self, sub: &str) -> PathBuf {
        self.dir.path().join(sub)
    }

    /// Puts every job in `new/` as `host enqueue` does (a hidden file, then a rename; names
    /// in enqueue order).
    fn enqueue(&self, docs: &[(u64, Value)]) {
        let new = self.path("new");
        std::fs::create_dir_all(&new).expect("mkdir new/");
        let base = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, (id, doc)) in docs.iter().enumerate() {
            let tmp = new.join(format!(".{id}.tmp"));
            std::fs::write(&tmp, doc.to_string()).expect("write a job");
            let name = format!("{:024}-{id}.json", base + i as u128);
            std::fs::rename(&tmp, new.join(name)).expect("rename a job into new/");
        }
    }

    fn progress(&self) -> usize {
        job_files(&self.path("done")).len()
    }

    /// Jobs in `new/` or claimed by a worker, alive or not.
    fn waiting(&self) -> usize {
        let mut n = job_files(&self.path("new")).len();
        if let Ok(claims) = std::fs::read_dir(self.path("claimed")) {
            for c in claims.flatten() {
                n += job_files(&c.path()).len();
            }
        }
        n
    }

    fn check(&self, specs: &[JobSpec], v: &mut Vec<String>) -> Seen {
        let mut seen = Seen::default();
        let mut placed: BTreeMap<u64, Vec<String>> = BTreeMap::new();
        for sub in ["new", "done", "rejected"] {
            for (id, name) in job_files(&self.path(sub)) {
                placed.entry(id).or_default().push(format!("{sub}/{name}"));
            }
        }
        if let Ok(claims) = std::fs::read_dir(self.path("claimed")) {
            for c in claims.flatten() {
                let who = c.file_name().to_string_lossy().into_owned();
                for (id, name) in job_files(&c.path()) {
                    placed
                        .entry(id)
                        .or_default()
                        .push(format!("claimed/{who}/{name}"));
                }
            }
        }
        if let Ok(rejected) = std::fs::read_dir(self.path("rejected")) {
            let names: Vec<String> = rejected
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            if !names.is_empty() {
                v.push(format!("[1 queue] files in rejected/: {names:?}"));
            }
        }
        for spec in specs {
            let id = spec.id;
            let text = std::fs::read_to_string(self.path("state").join(format!("{id}.jsonl")))
                .unwrap_or_default();
            let mut states = Vec::new();
            for line in text.lines() {
                match serde_json::from_str::<Value>(line) {
                    Ok(s) => states.push(s),
                    Err(e) => v.push(format!(
                        "[1 queue] job {id}: a state line that is not JSON ({e}): {line:?}"
                    )),
                }
            }
            let name = |s: &Value| s["state"].as_str().unwrap_or("?").to_owned();
            let history: Vec<String> = states.iter().map(name).collect();
            let finals: Vec<&Value> = states
                .iter()
                .filter(|s| FINAL_STATES.contains(&name(s).as_str()))
                .collect();
            if let Some(last) = states
                .iter()
                .rposition(|s| FINAL_STATES.contains(&name(s).as_str()))
            {
                let first = states
                    .iter()
                    .position(|s| FINAL_STATES.contains(&name(s).as_str()))
                    .unwrap_or(last);
                if first + 1 < states.len() {
                    v.push(format!(
                        "[1 final state] job {id}: states recorded after its first final state: {}",
                        history.join(",")
                    ));
                }
            }
            let files = placed.remove(&id).unwrap_or_default();
            let in_done = files.iter().filter(|f| f.starts_with("done/")).count();
            let elsewhere: Vec<&String> =
                files.iter().filter(|f| !f.starts_with("done/")).collect();
            if !elsewhere.is_empty() {
                v.push(format!(
                    "[1 queue] job {id}: left on the queue as {elsewhere:?} (states: {})",
                    history.join(",")
                ));
            }
            if !finals.is_empty() && in_done != 1 {
                v.push(format!(
                    "[1 queue] job {id}: {in_done} file(s) in done/ for a job with a final state"
                ));
            }
            // The passed run's log: exactly what that run (its instance) printed.
            if finals.len() == 1 && name(finals[0]) == "passed" {
                let run = finals[0]["instance_id"].as_str().unwrap_or("");
                let log =
                    std::fs::read(self.path("log").join(format!("{id}.log"))).unwrap_or_default();
                let log = String::from_utf8_lossy(&log);
                let expected = spec.expected_log(run);
                if run.is_empty() || log != expected {
                    v.push(format!(
                        "[3 log] job {id}: the log of its passed run {run:?} is not that run's whole output: {} (expected {} bytes: {:?}...)",
                        preview(&log),
                        expected.len(),
                        expected.lines().next().unwrap_or("")
                    ));
                }
            }
            seen.runs
                .insert(id, history.iter().filter(|s| *s == "received").count());
            seen.finals.insert(
                id,
                finals
                    .iter()
                    .map(|s| {
                        let mut reason = s["reason"].as_str().unwrap_or("").to_owned();
                        if name(s) != "passed" {
                            let log = std::fs::read(self.path("log").join(format!("{id}.log")))
                                .unwrap_or_default();
                            let log = String::from_utf8_lossy(&log);
                            let tail: String = log
                                .chars()
                                .rev()
                                .take(200)
                                .collect::<Vec<_>>()
                                .into_iter()
                                .rev()
                                .collect();
                            reason.push_str(&format!(
                                " (exit code {}; the log ends: {tail:?})",
                                s["exit_code"]
                            ));
                        }
                        (
                            name(s),
                            reason,
                            s["instance_id"].as_str().unwrap_or("").to_owned(),
                        )
                    })
                    .collect(),
            );
            let times: Vec<f64> = states
                .iter()
                .filter_map(|s| s["at"].as_str().and_then(unix_secs))
                .collect();
            if let (Some(from), Some(to)) = (
                times.iter().copied().reduce(f64::min),
                times.iter().copied().reduce(f64::max),
            ) {
                seen.span.insert(id, (from - 0.2, to + 0.2));
            }
            seen.history.insert(id, history.join(","));
        }
        for (id, files) in placed {
            v.push(format!(
                "[1 queue] files of a job that was never queued ({id}): {files:?}"
            ));
        }
        seen
    }
}

/// Unix seconds of an RFC 3339 UTC time as the worker writes them
/// (`2026-12-05T11:38:13.348Z`, `2026-12-05T11:38:13Z`).
fn unix_secs(t: &str) -> Option<f64> {
    let t = t.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.splitn(3, '-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let mut c = time.splitn(3, ':');
    let (h, min) = (
        c.next()?.parse::<i64>().ok()?,
        c.next()?.parse::<i64>().ok()?,
    );
    let sec: f64 = c.next()?.parse().ok()?;
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + h * 3600 + min * 60) as f64 + sec)
}

fn preview(s: &str) -> String {
    let mut p: String = s.chars().take(240).collect();
    if p.len() < s.len() {
        p.push_str("...");
    }
    format!("{} bytes {p:?}", s.len())
}

/// What the queue recorded, per job.
#[derive(Default)]
struct Seen {
    /// Final states, (state, reason, instance of the run), in the order recorded.
    finals: BTreeMap<u64, Vec<(String, String, String)>>,
    /// Every state, for messages.
    history: BTreeMap<u64, String>,
    /// How often a worker took it (received).
    runs: BTreeMap<u64, usize>,
    /// From its first to its last recorded state, in Unix seconds (padded by the
    /// timestamps' resolution).
    span: BTreeMap<u64, (f64, f64)>,
}

// ---------------------------------------------------------------------------------------
// RabbitMQ

/// What the collector read from the state and log queues: each distinct message once (a
/// message republished after a lost confirm arrives twice with the same bytes).
#[derive(Default)]
struct Collected {
    states: BTreeMap<u64, Vec<(String, Value)>>,
    logs: BTreeMap<u64, Vec<Value>>,
    distinct: HashSet<(bool, Vec<u8>)>,
    finished: BTreeSet<u64>,
    last: Option<Instant>,
    connections: u32,
    errors: Vec<String>,
}

impl Collected {
    fn record(&mut self, is_log: bool, kind: String, data: &[u8]) {
        self.last = Some(Instant::now());
        if !self.distinct.insert((is_log, data.to_vec())) {
            return;
        }
        let body: Value = match serde_json::from_slice(data) {
            Ok(b) => b,
            Err(e) => {
                self.errors.push(format!(
                    "a message that is not JSON ({e}): {:?}",
                    String::from_utf8_lossy(data)
                ));
                return;
            }
        };
        let Some(id) = body["id"].as_u64() else {
            self.errors.push(format!("a message without an id: {body}"));
            return;
        };
        if is_log {
            self.logs.entry(id).or_default().push(body);
        } else {
            if kind == "job:test:finish" {
                self.finished.insert(id);
            }
            self.states.entry(id).or_default().push((kind, body));
        }
    }
}

async fn collect_once(
    states: &str,
    logs: &str,
    data: &Mutex<Collected>,
    stop: &AtomicBool,
) -> Result<(), String> {
    let e = |e: lapin::Error| e.to_string();
    let conn = Connection::connect(amqp_url(), ConnectionProperties::default())
        .await
        .map_err(e)?;
    data.lock().unwrap_or_else(|p| p.into_inner()).connections += 1;
    let ch = conn.create_channel().await.map_err(e)?;
    ch.basic_qos(1000, BasicQosOptions::default())
        .await
        .map_err(e)?;
    let durable = QueueDeclareOptions {
        durable: true,
        ..Default::default()
    };
    let mut consumers = Vec::new();
    for q in [states, logs] {
        ch.queue_declare(q.into(), durable, FieldTable::default())
            .await
            .map_err(e)?;
        consumers.push(
            ch.basic_consume(
                q.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(e)?,
        );
    }
    let mut log_consumer = consumers.pop().ok_or("no consumer")?;
    let mut state_consumer = consumers.pop().ok_or("no consumer")?;
    loop {
        if stop.load(Ordering::SeqCst) {
            let _ = conn.close(200, "collected".into()).await;
            return Ok(());
        }
        let (is_log, d) = tokio::select! {
            d = state_consumer.next() => (false, d),
            d = log_consumer.next() => (true, d),
            () = tokio::time::sleep(Duration::from_millis(100)) => continue,
        };
        let d = match d {
            Some(Ok(d)) => d,
            Some(Err(err)) => return Err(err.to_string()),
            None => return Err("the broker cancelled the collector's consumer".into()),
        };
        let kind = d
            .properties
            .kind()
            .as_ref()
            .map(|k| k.to_string())
            .unwrap_or_default();
        data.lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(is_log, kind, &d.data);
        // Acked once recorded: a message lost with the connection before that comes again.
        d.acker.ack(BasicAckOptions::default()).await.map_err(e)?;
    }
}

struct AmqpQ {
    rt: tokio::runtime::Runtime,
    jobs: String,
    states: String,
    logs: String,
    conn: Option<Connection>,
    ch: Option<Channel>,
    data: Arc<Mutex<Collected>>,
    stop: Arc<AtomicBool>,
    collector: Option<std::thread::JoinHandle<()>>,
}

impl AmqpQ {
    fn new(seed: u64) -> Self {
        let base = format!("faults-{seed}-{}", std::process::id());
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a runtime for the test's broker connection");
        let mut q = Self {
            rt,
            jobs: base.clone(),
            states: format!("{base}.states"),
            logs: format!("{base}.logs"),
            conn: None,
            ch: None,
            data: Arc::default(),
            stop: Arc::default(),
            collector: None,
        };
        // The queues exist before any worker publishes: nothing is published to nowhere.
        let names = [q.jobs.clone(), q.states.clone(), q.logs.clone()];
        q.op("declare the run's queues", |ch| {
            let names = names.clone();
            async move {
                for n in names {
                    let durable = QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    };
                    ch.queue_declare(n.as_str().into(), durable, FieldTable::default())
                        .await?;
                }
                Ok(())
            }
        })
        .unwrap_or_else(|e| panic!("harness setup: {e}"));
        let (data, stop) = (Arc::clone(&q.data), Arc::clone(&q.stop));
        let (states, logs) = (q.states.clone(), q.logs.clone());
        q.collector = Some(std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for the collector");
            rt.block_on(async {
                while !stop.load(Ordering::SeqCst) {
                    match collect_once(&states, &logs, &data, &stop).await {
                        Ok(()) => break,
                        Err(e) => {
                            data.lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .errors
                                .push(format!(
                                    "collector: at {:.1} (Unix): {e}",
                                    SystemTime::now()
                                        .duration_since(UNIX_EPOCH)
                                        .map_or(0.0, |d| d.as_secs_f64())
                                ));
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            })
        }));
        q
    }

    fn data(&self) -> std::sync::MutexGuard<'_, Collected> {
        self.data.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn channel(&mut self) -> Result<Channel, String> {
        if let Some(ch) = &self.ch {
            if ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        if !self.conn.as_ref().is_some_and(|c| c.status().connected()) {
            self.conn = Some(
                self.rt
                    .block_on(Connection::connect(
                        amqp_url(),
                        ConnectionProperties::default(),
                    ))
                    .map_err(|e| format!("connect: {e}"))?,
            );
        }
        let conn = self.conn.as_ref().ok_or("no connection")?;
        let ch = self
            .rt
            .block_on(conn.create_channel())
            .map_err(|e| format!("channel: {e}"))?;
        self.ch = Some(ch.clone());
        Ok(ch)
    }

    /// Runs `f` on a channel, reconnecting and retrying (for up to 15 s) when the broker or
    /// the connection fails under it.
    fn op<T, Fut>(&mut self, what: &str, f: impl Fn(Channel) -> Fut) -> Result<T, String>
    where
        Fut: Future<Output = Result<T, lapin::Error>>,
    {
        let mut last = String::new();
        for _ in 0..60 {
            match self.channel() {
                Ok(ch) => match self.rt.block_on(f(ch)) {
                    Ok(v) => return Ok(v),
                    Err(e) => {
                        last = e.to_string();
                        self.ch = None;
                    }
                },
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        Err(format!("{what}: {last}"))
    }

    /// Publishes the jobs once, each confirmed. Not retried: a retry could queue a job twice.
    fn publish(&mut self, docs: &[(u64, Value)]) {
        let conn = self
            .rt
            .block_on(Connection::connect(
                amqp_url(),
                ConnectionProperties::default(),
            ))
            .unwrap_or_else(|e| panic!("harness setup: connect to publish the jobs: {e}"));
        let jobs = self.jobs.clone();
        self.rt
            .block_on(async {
                let ch = conn.create_channel().await?;
                ch.confirm_select(ConfirmSelectOptions::default()).await?;
                let mut confirms = Vec::new();
                for (_, doc) in docs {
                    confirms.push(
                        ch.basic_publish(
                            "".into(),
                            jobs.as_str().into(),
                            BasicPublishOptions::default(),
                            doc.to_string().as_bytes(),
                            BasicProperties::default().with_delivery_mode(2),
                        )
                        .await?,
                    );
                }
                for c in confirms {
                    c.await?;
                }
                let _ = conn.close(200, "published".into()).await;
                Ok::<(), lapin::Error>(())
            })
            .unwrap_or_else(|e| panic!("harness setup: publish the jobs: {e}"));
    }

    fn cancel(&mut self, job_id: u64) -> Result<(), String> {
        self.op("publish cancel_job", |ch| async move {
            ch.exchange_declare(
                "worker.commands".into(),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions::default(),
                FieldTable::default(),
            )
            .await?;
            let body = json!({"type": "cancel_job", "job_id": job_id, "source": "faults", "reason": "the fault harness asked"});
            ch.basic_publish(
                "worker.commands".into(),
                "".into(),
                BasicPublishOptions::default(),
                body.to_string().as_bytes(),
                BasicProperties::default(),
            )
            .await?;
            Ok(())
        })
    }

    /// Messages ready in queue `name`.
    fn count(&mut self, name: &str) -> Option<u32> {
        let name = name.to_owned();
        self.op("count messages", |ch| {
            let name = name.clone();
            async move {
                let passive = QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                };
                Ok(ch
                    .queue_declare(name.as_str().into(), passive, FieldTable::default())
                    .await?
                    .message_count())
            }
        })
        .ok()
    }

    fn progress(&self) -> usize {
        self.data().finished.len()
    }

    /// Jobs with a start and no finish yet, as the states say.
    fn started_unfinished(&self) -> Vec<u64> {
        let data = self.data();
        data.states
            .iter()
            .filter(|(id, s)| {
                !data.finished.contains(id) && s.iter().any(|(k, _)| k == "job:test:start")
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Takes what is left in the jobs queue (after every worker exited): the job ids.
    fn leftovers(&mut self) -> Vec<String> {
        let jobs = self.jobs.clone();
        self.op("read what is left in the jobs queue", |ch| {
            let jobs = jobs.clone();
            async move {
                let mut left = Vec::new();
                while let Some(m) = ch
                    .basic_get(jobs.as_str().into(), BasicGetOptions { no_ack: true })
                    .await?
                {
                    let id = serde_json::from_slice::<Value>(&m.delivery.data)
                        .ok()
                        .and_then(|v| v["job"]["id"].as_u64());
                    left.push(id.map_or_else(
                        || format!("{:?}", String::from_utf8_lossy(&m.delivery.data)),
                        |i| i.to_string(),
                    ));
                }
                Ok(left)
            }
        })
        .unwrap_or_else(|e| vec![format!("(cannot read the jobs queue: {e})")])
    }

    /// Waits until the collector has read everything on the reporting queues.
    fn drain_reports(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let (states, logs) = (self.states.clone(), self.logs.clone());
            let empty = self.count(&states) == Some(0) && self.count(&logs) == Some(0);
            let quiet = self
                .data()
                .last
                .is_none_or(|t| t.elapsed() > Duration::from_millis(500));
            if empty && quiet {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    fn check(&mut self, specs: &[JobSpec], v: &mut Vec<String>) -> Seen {
        let left = self.leftovers();
        if !left.is_empty() {
            v.push(format!(
                "[1 queue] {} message(s) left in the jobs queue after every worker exited (job ids): {}",
                left.len(),
                left.join(", ")
            ));
        }
        let data = self.data();
        for e in &data.errors {
            if !e.starts_with("collector: ") {
                v.push(format!("[1 queue] on a reporting queue: {e}"));
            }
        }
        let mut seen = Seen::default();
        for spec in specs {
            let id = spec.id;
            let states = data.states.get(&id).map(Vec::as_slice).unwrap_or(&[]);
            let mut history = Vec::new();
            let mut finals = Vec::new();
            let mut passed_runs = Vec::new();
            for (kind, body) in states {
                let state = body["state"].as_str().unwrap_or("?");
                let state = if state == "canceled" {
                    "cancelled"
                } else {
                    state
                };
                history.push(format!("{}:{state}", kind.trim_start_matches("job:test:")));
                if kind == "job:test:finish" {
                    let run = body["meta"]["instance_id"].as_str().unwrap_or("");
                    let mut reason = body["meta"]["reason"].as_str().unwrap_or("").to_owned();
                    if state != "passed" {
                        // The wire has no exit code: the end of that run's log says more.
                        let parts = data.logs.get(&id).map(Vec::as_slice).unwrap_or(&[]);
                        reason.push_str(&format!(" (its log ends: {})", log_tail(parts, id, run)));
                    }
                    finals.push((state.to_owned(), reason, run.to_owned()));
                    if state == "passed" {
                        passed_runs.push(
                            body["meta"]["instance_id"]
                                .as_str()
                                .unwrap_or("")
                                .to_owned(),
                        );
                    }
                }
            }
            let parts = data.logs.get(&id).map(Vec::as_slice).unwrap_or(&[]);
            check_parts(spec, parts, &passed_runs, v);
            seen.runs.insert(
                id,
                states
                    .iter()
                    .filter(|(k, _)| k == "job:test:receive")
                    .count(),
            );
            let times: Vec<f64> = states
                .iter()
                .flat_map(|(_, b)| {
                    ["received_at", "started_at", "finished_at"]
                        .into_iter()
                        .filter_map(move |k| b[k].as_str().and_then(unix_secs))
                })
                .collect();
            if let (Some(from), Some(to)) = (
                times.iter().copied().reduce(f64::min),
                times.iter().copied().reduce(f64::max),
            ) {
                seen.span.insert(id, (from - 1.0, to + 1.0));
            }
            seen.finals.insert(id, finals);
            seen.history.insert(id, history.join(","));
        }
        seen
    }
}

impl Drop for AmqpQ {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(c) = self.collector.take() {
            let _ = c.join();
        }
        let names = [self.jobs.clone(), self.states.clone(), self.logs.clone()];
        let _ = self.op("delete the run's queues", |ch| {
            let names = names.clone();
            async move {
                for n in names {
                    ch.queue_delete(n.as_str().into(), QueueDeleteOptions::default())
                        .await?;
                }
                Ok(())
            }
        });
    }
}

/// The end of run `run`'s log, from its parts that name it.
fn log_tail(bodies: &[Value], id: u64, run: &str) -> String {
    let mut parts: Vec<(u64, &str)> = bodies
        .iter()
        .filter_map(|b| Some((b["number"].as_u64()?, b["log"].as_str()?)))
        .filter(|(_, text)| runs_named(text, id).contains(run))
        .collect();
    parts.sort();
    let text: String = parts.iter().map(|(_, t)| *t).collect();
    let tail: String = text
        .chars()
        .rev()
        .take(200)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("{tail:?}")
}

/// A log part as the checks need it.
struct Part {
    number: u64,
    last: bool,
    text: String,
}

/// The log parts of one job: parts are told apart by the run (instance) their whole lines
/// name; a part naming no run (an empty final part, or a fragment of a line) may belong to
/// any. Checks that no part mixes runs, that a run's part number seen twice has the same
/// contents, that no run has a gap, and that each passed run's parts make its whole log.
fn check_parts(spec: &JobSpec, bodies: &[Value], passed_runs: &[String], v: &mut Vec<String>) {
    let id = spec.id;
    let mut by_run: BTreeMap<String, BTreeMap<u64, Part>> = BTreeMap::new();
    let mut anyone: Vec<Part> = Vec::new();
    for b in bodies {
        let (Some(number), Some(last), Some(text)) = (
            b["number"].as_u64(),
            b["final"].as_bool(),
            b["log"].as_str(),
        ) else {
            v.push(format!("[3 log] job {id}: a malformed log part: {b}"));
            continue;
        };
        let part = Part {
            number,
            last,
            text: text.to_owned(),
        };
        let runs = runs_named(text, id);
        match runs.len() {
            0 => anyone.push(part),
            1 => {
                let run = runs.into_iter().next().unwrap_or_default();
                let parts = by_run.entry(run.clone()).or_default();
                if let Some(before) = parts.get(&number) {
                    if before.text != part.text || before.last != part.last {
                        v.push(format!(
                            "[3 log] job {id}: run {run}: part {number} arrived twice with different contents: {:?} / {:?}",
                            before.text, part.text
                        ));
                    }
                } else {
                    parts.insert(number, part);
                }
            }
            _ => v.push(format!(
                "[3 log] job {id}: part {number} mixes the text of runs {runs:?}: {:?}",
                text
            )),
        }
    }
    for (run, parts) in &by_run {
        let Some(&max) = parts.keys().next_back() else {
            continue;
        };
        let missing: Vec<u64> = (0..max)
            .filter(|n| !parts.contains_key(n) && !anyone.iter().any(|p| p.number == *n))
            .collect();
        if !missing.is_empty() {
            v.push(format!(
                "[3 log] job {id}: run {run}: part(s) {missing:?} missing before part {max} (a gap)"
            ));
        }
    }
    for run in passed_runs {
        if run.is_empty() {
            v.push(format!(
                "[3 log] job {id}: its passed state names no instance: its log cannot be told from other runs'"
            ));
            continue;
        }
        let expected = spec.expected_log(run);
        let empty = BTreeMap::new();
        let own = by_run.get(run).unwrap_or(&empty);
        let mut text = String::new();
        let mut whole = false;
        for n in 0..=own.len() as u64 + anyone.len() as u64 {
            let rest = expected.get(text.len()..).unwrap_or("");
            let next = match own.get(&n) {
                Some(p) => Some(p).filter(|p| rest.starts_with(p.text.as_str())),
                None => anyone
                    .iter()
                    .find(|p| p.number == n && rest.starts_with(p.text.as_str())),
            };
            let Some(p) = next else { break };
            text.push_str(&p.text);
            if p.last {
                whole = text == expected;
                break;
            }
        }
        if !whole {
            let numbers: Vec<String> = own
                .values()
                .map(|p| format!("{}{}", p.number, if p.last { " (final)" } else { "" }))
                .collect();
            v.push(format!(
                "[3 log] job {id}: the log of its passed run {run} is not whole: parts {numbers:?} of that run, {} part(s) naming no run; text put together: {}; expected {}",
                anyone.len(),
                preview(&text),
                preview(&expected)
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------
// The harness

enum Q {
    Dir(DirQ),
    Amqp(Box<AmqpQ>),
}

impl Q {
    fn progress(&self) -> usize {
        match self {
            Q::Dir(d) => d.progress(),
            Q::Amqp(a) => a.progress(),
        }
    }

    fn waiting(&mut self) -> Option<usize> {
        match self {
            Q::Dir(d) => Some(d.waiting()),
            Q::Amqp(a) => {
                let jobs = a.jobs.clone();
                a.count(&jobs).map(|n| n as usize)
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum End {
    AllFinal,
    Settled,
    TimedOut,
}

enum Fire {
    Done(String),
    NotYet,
    Skip(String),
}

/// How long a signalled worker may take to exit.
const EXIT_WAIT: Duration = Duration::from_secs(60);
/// With no progress, the next fault fires after this anyway.
const MAX_GAP: Duration = Duration::from_secs(10);
/// Every worker idle, nothing waiting, no progress for this long: the jobs left are lost.
const SETTLE: Duration = Duration::from_secs(10);

struct Harness {
    kind: QueueKind,
    cfg: Config,
    t0: Instant,
    rng: Rng,
    specs: Vec<JobSpec>,
    plan: Vec<Planned>,
    q: Q,
    plugins: tempfile::TempDir,
    scripts: tempfile::TempDir,
    locks: tempfile::TempDir,
    marker: String,
    workers: Vec<Worker>,
    /// Replacements due: when, why, the slot they take.
    pending: Vec<(Instant, String, usize)>,
    /// Slots handed out (a replacement takes its predecessor's).
    slots: usize,
    /// Plugin servers seen: pid -> worker number.
    servers: BTreeMap<u32, usize>,
    /// The faults that fired: when (Unix seconds), what.
    fault_log: Vec<(f64, String)>,
    /// Plugin servers the harness killed: pid -> when (seconds into the run).
    killed_servers: BTreeMap<u32, f64>,
    /// Per kind: planned, fired, skipped.
    tally: BTreeMap<Kind, [usize; 3]>,
    violations: Vec<String>,
    cancelled: BTreeSet<u64>,
    /// Per job: the faults that hit it while it ran.
    touched: BTreeMap<u64, Vec<String>>,
}

impl Harness {
    fn new(kind: QueueKind) -> Self {
        let cfg = Config::from_env(kind);
        let tag = if kind == QueueKind::Dir { 'd' } else { 'a' };
        let mut plan_rng = Rng::new(cfg.seed ^ if kind == QueueKind::Dir { 0xD1 } else { 0xA3 });
        let rng = Rng::new(cfg.seed.wrapping_mul(31) ^ u64::from(u32::from(tag)));
        let plan = plan(&mut plan_rng, &cfg, kind);
        // Job ids of their own on RabbitMQ: cancel commands go to every worker on the broker.
        let base = match kind {
            QueueKind::Dir => 0,
            QueueKind::Amqp => 7_000_000_000 + (cfg.seed % 100_000) * 1_000_000,
        };
        let specs = (1..=cfg.jobs as u64)
            .map(|i| JobSpec::draw(&mut plan_rng, base + i))
            .collect();
        let q = match kind {
            QueueKind::Dir => Q::Dir(DirQ {
                dir: tempfile::tempdir().expect("temp dir"),
            }),
            QueueKind::Amqp => Q::Amqp(Box::new(AmqpQ::new(cfg.seed))),
        };
        let mut tally = BTreeMap::new();
        for p in &plan {
            tally.entry(p.kind).or_insert([0; 3])[0] += 1;
        }
        Self {
            kind,
            marker: format!("fltmk{}p{}{tag}x", cfg.seed, std::process::id()),
            cfg,
            t0: Instant::now(),
            rng,
            specs,
            plan,
            q,
            plugins: plugin_dir(&[("liblocal.so", &artifacts().local)]),
            scripts: tempfile::tempdir().expect("temp dir"),
            locks: tempfile::tempdir().expect("temp dir"),
            workers: Vec::new(),
            pending: Vec::new(),
            slots: 0,
            servers: BTreeMap::new(),
            fault_log: Vec::new(),
            killed_servers: BTreeMap::new(),
            tally,
            violations: Vec::new(),
            cancelled: BTreeSet::new(),
            touched: BTreeMap::new(),
        }
    }

    fn say(&self, text: &str) {
        println!(
            "[{:>8.3}s {}] {text}",
            self.t0.elapsed().as_secs_f64(),
            if self.kind == QueueKind::Dir {
                "dir"
            } else {
                "amqp"
            }
        );
    }

    fn test_name(&self) -> &'static str {
        match self.kind {
            QueueKind::Dir => "directory_queue_keeps_its_invariants_under_seeded_faults",
            QueueKind::Amqp => "rabbitmq_queue_keeps_its_invariants_under_seeded_faults",
        }
    }

    fn replay(&self) -> String {
        format!(
            "FAULTS_SEED={} FAULTS_JOBS={} FAULTS_WORKERS={} FAULTS_FAULTS={}{}{} cargo test -p blackbox --test faults {} -- --nocapture",
            self.cfg.seed,
            self.cfg.jobs,
            self.cfg.workers,
            self.cfg.faults,
            if self.cfg.broker_wide { " FAULTS_BROKER_WIDE=1" } else { "" },
            if self.cfg.kinds.is_empty() { String::new() } else { format!(" FAULTS_KINDS={}", self.cfg.kinds) },
            self.test_name()
        )
    }

    fn run(mut self) {
        let late = self.plan.iter().filter(|p| p.kind == Kind::Late).count();
        let initial = self.cfg.workers.saturating_sub(late).max(1);
        println!(
            "\n==== faults on the {} queue: FAULTS_SEED={} (replay: {}) ====",
            if self.kind == QueueKind::Dir {
                "directory"
            } else {
                "RabbitMQ"
            },
            self.cfg.seed,
            self.replay()
        );
        println!(
            "jobs {}, workers {} ({} at first, {late} late), faults {}, marker {}, scripts {}, locks {}",
            self.cfg.jobs,
            self.cfg.workers,
            initial,
            self.cfg.faults,
            self.marker,
            self.scripts.path().display(),
            self.locks.path().display()
        );
        if let Q::Dir(d) = &self.q {
            println!("queue {}", d.url());
        }
        if let Q::Amqp(a) = &self.q {
            println!(
                "queues {} / {} / {}{}",
                a.jobs,
                a.states,
                a.logs,
                if self.cfg.broker_wide {
                    " (FAULTS_BROKER_WIDE=1: cuts and restarts hit the whole broker)"
                } else {
                    " (cuts close this run's worker connections only)"
                }
            );
        }
        println!("fault plan (fires when that many jobs have finished, after the delay):");
        for (i, p) in self.plan.iter().enumerate() {
            let pause = match p.kind {
                Kind::Kill9 | Kind::Term | Kind::Int => {
                    format!(", replacement after {} ms", p.pause.as_millis())
                }
                Kind::BrokerRestart => format!(", down {} ms", p.pause.as_millis()),
                _ => String::new(),
            };
            println!(
                "  {:>3}. at {:>5} done +{:>3} ms: {}{pause}",
                i + 1,
                p.at_done,
                p.delay.as_millis(),
                p.kind.name()
            );
        }
        self.marker_is_visible();
        let docs: Vec<(u64, Value)> = self
            .specs
            .iter()
            .map(|s| {
                let script = s.script(self.locks.path(), &self.marker);
                let doc = json!({
                    "job": {"id": s.id, "number": format!("{}.1", s.id), "queued_at": "2026-11-26T00:00:00Z"},
                    "uuid": format!("uuid-{}", s.id),
                    "repository": {"slug": "faults/harness"},
                    "script": script,
                });
                (s.id, doc)
            })
            .collect();
        match &mut self.q {
            Q::Dir(d) => d.enqueue(&docs),
            Q::Amqp(a) => a.publish(&docs),
        }
        self.t0 = Instant::now();
        self.say(&format!("queued {} jobs", docs.len()));
        for _ in 0..initial {
            let slot = self.new_slot();
            self.start_worker("initial", slot);
        }
        let end = self.drive();
        self.say(&format!("jobs: {end:?}; stopping the workers"));
        self.stop_all();
        let summary = self.check(end);
        println!("{summary}");
        if !self.violations.is_empty() {
            panic!(
                "{} invariant violation(s) on the {} queue, seed {} (replay: {}):\n  - {}",
                self.violations.len(),
                if self.kind == QueueKind::Dir {
                    "directory"
                } else {
                    "RabbitMQ"
                },
                self.cfg.seed,
                self.replay(),
                self.violations.join("\n  - ")
            );
        }
    }

    /// The check of leftover processes relies on `exec -a` putting the marker in a
    /// command line: made sure of before it is relied on.
    fn marker_is_visible(&self) {
        let probe = format!("{}probe", self.marker);
        // The marker reaches bash through its environment: only the sleep's command line
        // carries it.
        let mut child = Command::new("bash")
            .args(["-c", "exec -a \"$FAULTS_PROBE\" sleep 30"])
            .env("FAULTS_PROBE", &probe)
            .stdin(Stdio::null())
            .spawn()
            .expect("bash");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut found = Vec::new();
        while !found.iter().any(|(pid, _)| *pid == child.id()) && Instant::now() < deadline {
            found = job_processes(&probe, Path::new("/nonexistent-faults"));
            std::thread::sleep(Duration::from_millis(20));
        }
        let pgrep = Command::new("pgrep")
            .args(["-f", &probe])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        for (pid, _) in &found {
            kill("-KILL", *pid);
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            found.iter().any(|(pid, _)| *pid == child.id()),
            "harness setup: a process started with `exec -a {probe}` is not visible in /proc"
        );
        assert!(
            found
                .iter()
                .all(|(pid, _)| pgrep.split_whitespace().any(|p| p == pid.to_string())),
            "harness setup: pgrep -f {probe} does not see {found:?} (it said {pgrep:?})"
        );
    }

    fn worker_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec!["--queue".into()];
        match &self.q {
            Q::Dir(d) => a.push(d.url()),
            Q::Amqp(q) => a.extend([
                amqp_url().to_owned(),
                "--queue-name".into(),
                q.jobs.clone(),
                "--state-queue".into(),
                q.states.clone(),
                "--log-queue".into(),
                q.logs.clone(),
            ]),
        }
        a
    }

    fn new_slot(&mut self) -> usize {
        self.slots += 1;
        self.slots - 1
    }

    /// Starts a worker in `slot`: slot 0's is isolated (`--isolate all`), so that there is
    /// a plugin server to kill; another's one time in four.
    fn start_worker(&mut self, why: &str, slot: usize) {
        let isolated = slot == 0 || self.rng.chance(25);
        let pool = self.rng.range(2, 4);
        let mut cmd = host(self.plugins.path());
        cmd.arg("worker");
        if isolated {
            cmd.args(["--isolate", "all"]);
        }
        cmd.args(["-b", "local", "--pool-size", &pool.to_string()])
            .args(["--max-requeues", "50", "--http", "127.0.0.1:0", "-c"])
            .arg(format!("SCRIPTS_DIR={}", self.scripts.path().display()))
            .args(self.worker_args())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn host worker");
        let stderr = child.stderr.take().expect("piped stderr");
        let out = Arc::new(Mutex::new(Out::default()));
        let shared = Arc::clone(&out);
        let reader = std::thread::spawn(move || {
            let mut r = BufReader::new(stderr);
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match r.read_until(b'\n', &mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                let mut o = shared.lock().unwrap_or_else(|e| e.into_inner());
                if let Some(url) = line.strip_prefix("host: worker HTTP endpoints on ") {
                    o.url = Some(url.trim().to_owned());
                }
                if line.starts_with("host: worker ") && line.ends_with(" job(s) at once") {
                    o.ready = true;
                }
                o.lines.push(line);
            }
        });
        let w = Worker {
            n: self.workers.len() + 1,
            slot,
            pid: child.id(),
            pool,
            isolated,
            child,
            out,
            reader: Some(reader),
            fate: Fate::Running,
            signalled_at: None,
            exit: None,
            last: None,
            exact: None,
        };
        self.say(&format!("started worker {} ({why})", w.label()));
        self.workers.push(w);
    }

    /// Notes the exits of workers, and whether each was expected.
    fn reap(&mut self) {
        let mut notes = Vec::new();
        let mut replace = Vec::new();
        for w in &mut self.workers {
            if w.exit.is_some() {
                continue;
            }
            match w.child.try_wait() {
                Ok(Some(st)) => {
                    w.exit = Some(st);
                    match w.fate {
                        Fate::Running => {
                            notes.push((
                                true,
                                format!(
                                    "[worker] worker {} exited on its own ({st}); its last lines:\n    {}",
                                    w.label(),
                                    w.tail(15)
                                ),
                            ));
                            replace.push(w.slot);
                        }
                        Fate::Signalled(sig) if !st.success() => notes.push((
                            true,
                            format!(
                                "[worker] worker {} ended {st} after {sig}, not exit 0; its last lines:\n    {}",
                                w.label(),
                                w.tail(15)
                            ),
                        )),
                        Fate::Stopping if !st.success() => notes.push((
                            true,
                            format!(
                                "[worker] worker {} ended {st} after the final SIGINT, not exit 0; its last lines:\n    {}",
                                w.label(),
                                w.tail(15)
                            ),
                        )),
                        _ => notes.push((false, format!("worker {} exited ({st})", w.label()))),
                    }
                }
                Ok(None) => {
                    let late = w.signalled_at.is_some_and(|t| t.elapsed() > EXIT_WAIT);
                    if late {
                        let sig = match w.fate {
                            Fate::Signalled(s) => s,
                            _ => "the final SIGINT",
                        };
                        notes.push((
                            true,
                            format!(
                                "[worker] worker {} did not exit within {}s of {sig} (killed now); its last lines:\n    {}",
                                w.label(),
                                EXIT_WAIT.as_secs(),
                                w.tail(15)
                            ),
                        ));
                        let _ = w.child.kill();
                        w.exit = w.child.wait().ok();
                        w.fate = Fate::Forced;
                    }
                }
                Err(e) => panic!("wait for worker {}: {e}", w.label()),
            }
        }
        for (violation, text) in notes {
            self.say(&text);
            if violation {
                self.violations.push(text);
            }
        }
        for slot in replace {
            self.start_worker("replacing a worker that exited on its own", slot);
        }
    }

    fn start_due(&mut self) {
        let now = Instant::now();
        let due: Vec<(String, usize)> = self
            .pending
            .iter()
            .filter(|(t, _, _)| *t <= now)
            .map(|(_, why, slot)| (why.clone(), *slot))
            .collect();
        self.pending.retain(|(t, _, _)| *t > now);
        for (why, slot) in due {
            self.start_worker(&why, slot);
        }
    }

    fn idle(&mut self) -> bool {
        if !self.pending.is_empty() {
            return false;
        }
        for w in self.workers.iter().filter(|w| w.alive()) {
            if w.fate != Fate::Running || !w.ready() {
                return false;
            }
            match w.status() {
                Some((running, _)) if running.is_empty() => {}
                _ => return false,
            }
        }
        self.q.waiting() == Some(0)
    }

    fn drive(&mut self) -> End {
        let deadline = self.t0 + self.cfg.timeout;
        let mut next = 0;
        let mut armed = 0;
        let mut due_at: Vec<Option<Instant>> = vec![None; self.plan.len()];
        let mut last_fault = Instant::now();
        let mut last_scrape = Instant::now();
        let mut last_print = Instant::now();
        let mut last_idle_check = Instant::now();
        let mut quiet: Option<(Instant, usize)> = None;
        loop {
            self.reap();
            self.start_due();
            let done = self.q.progress();
            let now = Instant::now();
            if done >= self.cfg.jobs {
                if next < self.plan.len() {
                    self.say(&format!(
                        "every job finished; {} fault(s) of the plan did not fire",
                        self.plan.len() - next
                    ));
                }
                return End::AllFinal;
            }
            // Every worker idle, nothing waiting and no progress: what is left is lost (the
            // faults still planned would hit idle workers; they are not waited for).
            if last_idle_check.elapsed() > Duration::from_millis(500) {
                last_idle_check = Instant::now();
                if self.idle() {
                    match quiet {
                        Some((since, d)) if d == done => {
                            if since.elapsed() > SETTLE {
                                self.say(&format!(
                                    "{done}/{} jobs finished and nothing has moved for {}s: every worker idle, nothing waiting; {} fault(s) of the plan not fired",
                                    self.cfg.jobs,
                                    SETTLE.as_secs(),
                                    self.plan.len() - next
                                ));
                                return End::Settled;
                            }
                        }
                        _ => quiet = Some((Instant::now(), done)),
                    }
                } else {
                    quiet = None;
                }
            }
            // Each fault is due `delay` after its threshold is reached (after the previous
            // fault, if the jobs move too slowly to reach it); due ones fire in order,
            // several in one round when several are due.
            let stalled = quiet.is_none() && last_fault.elapsed() > MAX_GAP;
            while armed < self.plan.len()
                && (self.plan[armed].at_done <= done || (armed == next && stalled))
            {
                due_at[armed] = Some(now + self.plan[armed].delay);
                armed += 1;
            }
            while next < self.plan.len() {
                let Some(t) = due_at[next].filter(|t| now >= *t) else {
                    break;
                };
                let kind = self.plan[next].kind;
                let outcome = self.fire(next);
                let tally = self.tally.entry(kind).or_insert([0; 3]);
                let text = match outcome {
                    Fire::Done(text) => {
                        tally[1] += 1;
                        let at = SystemTime::now()
                            .duration_since(UNIX_EPOCH)
                            .map_or(0.0, |d| d.as_secs_f64());
                        let what = format!(
                            "#{} {} at {:.1}s",
                            next + 1,
                            kind.name(),
                            self.t0.elapsed().as_secs_f64()
                        );
                        self.fault_log.push((at, what));
                        Some(text)
                    }
                    Fire::Skip(why) => {
                        tally[2] += 1;
                        Some(format!("skipped: {why}"))
                    }
                    Fire::NotYet if now > t + Duration::from_secs(10) => {
                        tally[2] += 1;
                        Some("skipped: no target for 10 s".into())
                    }
                    Fire::NotYet => None,
                };
                let Some(text) = text else { break };
                self.say(&format!(
                    "FAULT {}/{} ({} done) {}: {text}",
                    next + 1,
                    self.plan.len(),
                    done,
                    kind.name()
                ));
                next += 1;
                last_fault = Instant::now();
            }
            if now > deadline {
                self.say(&format!(
                    "timed out after {}s with {done}/{} jobs finished",
                    self.cfg.timeout.as_secs(),
                    self.cfg.jobs
                ));
                return End::TimedOut;
            }
            if last_scrape.elapsed() > Duration::from_secs(2) {
                last_scrape = Instant::now();
                for w in self.workers.iter_mut() {
                    if w.alive() && w.fate == Fate::Running {
                        if let Some(m) = w.scrape() {
                            w.last = Some(m);
                        }
                    }
                    if w.alive() && w.isolated {
                        for pid in plugin_servers_of(w.pid) {
                            self.servers.insert(pid, w.n);
                        }
                    }
                }
            }
            if last_print.elapsed() > Duration::from_secs(5) {
                last_print = Instant::now();
                let alive: Vec<String> = self
                    .workers
                    .iter()
                    .filter(|w| w.alive())
                    .map(|w| format!("#{}", w.n))
                    .collect();
                let waiting = self.q.waiting();
                self.say(&format!(
                    "progress: {done}/{} jobs finished, {} fault(s) fired, workers alive {alive:?}, waiting {waiting:?}",
                    self.cfg.jobs, next
                ));
            }
            std::thread::sleep(Duration::from_millis(40));
        }
    }

    fn touch(&mut self, jobs: &[u64], what: &str) {
        let at = format!("{what} at {:.1}s", self.t0.elapsed().as_secs_f64());
        for id in jobs {
            self.touched.entry(*id).or_default().push(at.clone());
        }
    }

    /// Alive workers still running as started (not signalled), and ready when `ready`.
    fn candidates(&self, ready: bool) -> Vec<usize> {
        (0..self.workers.len())
            .filter(|&i| {
                let w = &self.workers[i];
                w.alive() && w.fate == Fate::Running && (!ready || w.ready())
            })
            .collect()
    }

    fn fire(&mut self, i: usize) -> Fire {
        let (kind, pause) = (self.plan[i].kind, self.plan[i].pause);
        match kind {
            Kind::Kill9 => {
                let alive: Vec<usize> = (0..self.workers.len())
                    .filter(|&i| self.workers[i].alive())
                    .collect();
                let Some(t) = self.rng.pick(&alive) else {
                    return Fire::NotYet;
                };
                let running = self.workers[t].status().map(|s| s.0).unwrap_or_default();
                let w = &mut self.workers[t];
                let _ = w.child.kill();
                w.exit = w.child.wait().ok();
                // A worker signalled before has its replacement already.
                let replace = w.fate == Fate::Running;
                w.fate = Fate::Killed9;
                let label = w.label();
                self.touch(
                    &running,
                    &format!("kill -9 of worker #{}", self.workers[t].n),
                );
                if replace {
                    self.pending.push((
                        Instant::now() + pause,
                        format!("replacing #{}", self.workers[t].n),
                        self.workers[t].slot,
                    ));
                }
                Fire::Done(format!("killed worker {label} running jobs {running:?}"))
            }
            Kind::PluginServer => {
                let mut servers = Vec::new();
                for (i, w) in self.workers.iter().enumerate() {
                    if w.alive() && w.isolated {
                        for s in plugin_servers_of(w.pid) {
                            servers.push((i, s));
                        }
                    }
                }
                for &(i, pid) in &servers {
                    self.servers.insert(pid, self.workers[i].n);
                }
                let Some((t, server)) = self.rng.pick(&servers) else {
                    return Fire::NotYet;
                };
                let running = self.workers[t].status().map(|s| s.0).unwrap_or_default();
                // Still that worker's plugin server (not a pid reused meanwhile)?
                if !plugin_servers_of(self.workers[t].pid).contains(&server)
                    || !kill("-KILL", server)
                {
                    return Fire::NotYet;
                }
                let label = self.workers[t].label();
                self.killed_servers
                    .insert(server, self.t0.elapsed().as_secs_f64());
                self.touch(
                    &running,
                    &format!(
                        "kill -9 of the plugin server of worker #{}",
                        self.workers[t].n
                    ),
                );
                Fire::Done(format!(
                    "killed plugin server pid {server} of worker {label} running jobs {running:?}"
                ))
            }
            Kind::Term | Kind::Int => {
                let Some(t) = self.rng.pick(&self.candidates(true)) else {
                    return Fire::NotYet;
                };
                let (sig, name) = if kind == Kind::Term {
                    ("-TERM", "SIGTERM")
                } else {
                    ("-INT", "SIGINT")
                };
                let running = self.workers[t].status().map(|s| s.0).unwrap_or_default();
                let w = &mut self.workers[t];
                if let Some(m) = w.scrape() {
                    w.last = Some(m);
                }
                kill(sig, w.pid);
                w.fate = Fate::Signalled(name);
                w.signalled_at = Some(Instant::now());
                let (label, n, slot) = (w.label(), w.n, w.slot);
                self.touch(&running, &format!("{name} of worker #{n}"));
                self.pending
                    .push((Instant::now() + pause, format!("replacing #{n}"), slot));
                Fire::Done(format!(
                    "sent {name} to worker {label} running jobs {running:?}"
                ))
            }
            Kind::Late => {
                let slot = self.new_slot();
                self.start_worker("late start", slot);
                Fire::Done(format!("worker #{} started", self.workers.len()))
            }
            Kind::Cancel => {
                let Q::Amqp(a) = &mut self.q else {
                    return Fire::Skip("no cancel on this queue".into());
                };
                let mut targets = a.started_unfinished();
                if targets.is_empty() {
                    let finished = a.data().finished.clone();
                    targets = self
                        .specs
                        .iter()
                        .map(|s| s.id)
                        .filter(|id| !finished.contains(id))
                        .collect();
                }
                let Some(id) = self.rng.pick(&targets) else {
                    return Fire::NotYet;
                };
                let Q::Amqp(a) = &mut self.q else {
                    return Fire::NotYet;
                };
                match a.cancel(id) {
                    Ok(()) => {
                        self.cancelled.insert(id);
                        self.touch(&[id], "cancel_job");
                        Fire::Done(format!("cancel_job {id}"))
                    }
                    Err(e) => Fire::Skip(format!("cannot publish cancel_job {id}: {e}")),
                }
            }
            Kind::Cut => {
                let alive: Vec<usize> = (0..self.workers.len())
                    .filter(|&i| self.workers[i].alive())
                    .collect();
                let mut running = Vec::new();
                for &i in &alive {
                    running.extend(self.workers[i].status().map(|s| s.0).unwrap_or_default());
                }
                let text = if self.cfg.broker_wide {
                    let out = ctl(&[
                        "close_all_connections",
                        "the fault harness cuts every connection",
                    ]);
                    if !out.status.success() {
                        return Fire::Skip(format!(
                            "rabbitmqctl close_all_connections: {}",
                            String::from_utf8_lossy(&out.stderr)
                        ));
                    }
                    "closed every connection to the broker".to_owned()
                } else {
                    let port = broker_port();
                    let mut ports = BTreeSet::new();
                    for &i in &alive {
                        ports.extend(tcp_ports_to(self.workers[i].pid, port));
                    }
                    if ports.is_empty() {
                        return Fire::NotYet;
                    }
                    let listing = ctl(&[
                        "-q",
                        "--no-table-headers",
                        "list_connections",
                        "peer_port",
                        "pid",
                    ]);
                    let mut closed = 0;
                    for line in String::from_utf8_lossy(&listing.stdout).lines() {
                        let Some((peer, pid)) = line.split_once('\t') else {
                            continue;
                        };
                        if peer.trim().parse().is_ok_and(|p: u16| ports.contains(&p)) {
                            let out = ctl(&[
                                "close_connection",
                                pid.trim(),
                                "the fault harness cuts this connection",
                            ]);
                            closed += usize::from(out.status.success());
                        }
                    }
                    if closed == 0 {
                        return Fire::NotYet;
                    }
                    format!(
                        "closed {closed} connection(s) of workers {:?} (local ports {ports:?})",
                        alive.iter().map(|&i| self.workers[i].n).collect::<Vec<_>>()
                    )
                };
                self.touch(&running, "a connection cut");
                Fire::Done(format!("{text}; jobs running {running:?}"))
            }
            Kind::BrokerRestart => {
                let restart = StartApp;
                let out = ctl(&["stop_app"]);
                if !out.status.success() {
                    return Fire::Skip(format!(
                        "rabbitmqctl stop_app: {}",
                        String::from_utf8_lossy(&out.stderr)
                    ));
                }
                std::thread::sleep(pause);
                drop(restart);
                let running: Vec<u64> = self.specs.iter().map(|s| s.id).collect();
                self.touch(&running, "a broker restart");
                Fire::Done(format!(
                    "broker stopped for {} ms, started again",
                    pause.as_millis()
                ))
            }
        }
    }

    /// Ends the run: replacements still due start (each kill -9 gets the replacement that
    /// recovers its claims), every worker is made ready, idle and paused, its counters read,
    /// then it is drained with SIGINT and must exit 0.
    fn stop_all(&mut self) {
        for (_, why, slot) in std::mem::take(&mut self.pending) {
            self.start_worker(&why, slot);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline
            && self.candidates(false).len() != self.candidates(true).len()
        {
            self.reap();
            std::thread::sleep(Duration::from_millis(50));
        }
        for i in self.candidates(false) {
            if !self.workers[i].ready() {
                let w = &mut self.workers[i];
                let text = format!(
                    "[worker] worker {} never said it was ready (killed); its last lines:\n    {}",
                    w.label(),
                    w.tail(15)
                );
                let _ = w.child.kill();
                w.exit = w.child.wait().ok();
                w.fate = Fate::Forced;
                self.say(&text);
                self.violations.push(text);
            }
        }
        // Let what is still moving (a redelivery, a requeue) settle, up to 30 s.
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut idle_twice = 0;
        while idle_twice < 2 && Instant::now() < deadline {
            self.reap();
            idle_twice = if self.idle() { idle_twice + 1 } else { 0 };
            std::thread::sleep(Duration::from_millis(300));
        }
        let stopping = self.candidates(true);
        for &i in &stopping {
            kill("-USR2", self.workers[i].pid);
        }
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut waiting: BTreeSet<usize> = stopping.iter().copied().collect();
        while !waiting.is_empty() && Instant::now() < deadline {
            self.reap();
            waiting.retain(|&i| {
                let w = &self.workers[i];
                w.alive() && !matches!(w.status(), Some((r, true)) if r.is_empty())
            });
            std::thread::sleep(Duration::from_millis(100));
        }
        for &i in &stopping {
            let w = &mut self.workers[i];
            if !w.alive() {
                continue; // reaped (and judged) already: its pid is no longer ours to signal
            }
            if waiting.contains(&i) {
                self.violations.push(format!(
                    "[worker] worker {} was not idle and paused within 60 s of SIGUSR2",
                    w.label()
                ));
            } else if let Some(m) = w.scrape() {
                w.exact = Some(m);
            }
            kill("-INT", w.pid);
            w.fate = Fate::Stopping;
            w.signalled_at = Some(Instant::now());
        }
        while self.workers.iter().any(Worker::alive) {
            self.reap();
            std::thread::sleep(Duration::from_millis(50));
        }
        for w in &mut self.workers {
            if let Some(r) = w.reader.take() {
                let deadline = Instant::now() + Duration::from_secs(5);
                while !r.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(20));
                }
                if r.is_finished() {
                    let _ = r.join();
                }
            }
        }
        self.say("every worker has exited");
    }

    /// Who ran instance `run` (its id holds the pid of the process that made it).
    /// Whether a fault that makes a broker deliver a job again, or a worker requeue it
    /// while the broker still holds the first message (a killed worker or plugin server, a
    /// cut or restarted broker connection), hit job `id` or fired while it was under way:
    /// at least once then allows it to end twice (one after the other; invariant 2 checks
    /// that they never overlap).
    fn redelivery_cause(&self, id: u64, span: Option<&(f64, f64)>) -> bool {
        let cause = |what: &str| {
            what.contains("kill -9") || what.contains("cut broker") || what.contains("stop_app")
        };
        let hit = self
            .touched
            .get(&id)
            .is_some_and(|h| h.iter().any(|w| cause(w)));
        let around = span.is_some_and(|(from, to)| {
            self.fault_log
                .iter()
                .any(|(t, what)| t >= from && t <= to && cause(what))
        });
        hit || around
    }

    /// Whether the worker that ran `run` (itself, or through its plugin server) was killed.
    fn died(&self, run: &str) -> bool {
        let Some(pid) = run
            .strip_prefix("local-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            return false;
        };
        let n = match self.workers.iter().find(|w| w.pid == pid) {
            Some(w) => w.n,
            None => match self.servers.get(&pid) {
                Some(n) => *n,
                None => return false,
            },
        };
        self.workers
            .iter()
            .any(|w| w.n == n && matches!(w.fate, Fate::Killed9 | Fate::Forced))
    }

    fn who(&self, run: &str) -> String {
        let Some(pid) = run
            .strip_prefix("local-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            return "unknown".into();
        };
        if let Some(w) = self.workers.iter().find(|w| w.pid == pid) {
            return format!("worker #{}, {:?}", w.n, w.fate);
        }
        let killed = self
            .killed_servers
            .get(&pid)
            .map(|t| format!(", killed -9 by the harness at {t:.1}s"))
            .unwrap_or_default();
        match self.servers.get(&pid) {
            Some(n) => format!("the plugin server pid {pid} of worker #{n}{killed}"),
            None => format!("pid {pid}"),
        }
    }

    /// The faults that hit job `id` while it ran, and the others that fired between its
    /// first and its last recorded state (`span`, Unix seconds).
    fn hint(&self, id: u64, span: Option<&(f64, f64)>) -> String {
        let hit = self.touched.get(&id).cloned().unwrap_or_default();
        let around: Vec<&str> = span
            .map(|(from, to)| {
                self.fault_log
                    .iter()
                    .filter(|(t, _)| t >= from && t <= to)
                    .map(|(_, what)| what.as_str())
                    .collect()
            })
            .unwrap_or_default();
        let mut parts = Vec::new();
        if !hit.is_empty() {
            parts.push(format!(
                "faults that hit it while it ran: {}",
                hit.join("; ")
            ));
        }
        if !around.is_empty() {
            let n = around.len();
            let shown: Vec<&str> = around.into_iter().take(8).collect();
            parts.push(format!(
                "faults between its first and last state: {}{}",
                shown.join("; "),
                if n > 8 {
                    format!("; and {} more", n - 8)
                } else {
                    String::new()
                }
            ));
        }
        if parts.is_empty() {
            String::new()
        } else {
            format!(" [{}]", parts.join(" | "))
        }
    }

    /// Checks the invariants; returns the summary.
    fn check(&mut self, end: End) -> String {
        let mut v = Vec::new();
        if let Q::Amqp(a) = &mut self.q {
            if !a.drain_reports() {
                v.push("[harness] the reporting queues did not drain within 30 s: the states and log parts read may be incomplete".into());
            }
        }
        let seen = match &mut self.q {
            Q::Dir(d) => d.check(&self.specs, &mut v),
            Q::Amqp(a) => a.check(&self.specs, &mut v),
        };

        // 1. Exactly one final state each, and an expected one.
        let mut by_state: BTreeMap<String, usize> = BTreeMap::new();
        let (mut none, mut several, mut again) = (0, 0, 0);
        for spec in &self.specs {
            let id = spec.id;
            let finals = &seen.finals[&id];
            let history = &seen.history[&id];
            for (state, reason, _) in finals {
                *by_state.entry(state.clone()).or_default() += 1;
                let fine = state == "passed"
                    || (state == "cancelled" && self.cancelled.contains(&id))
                    || (state == "errored"
                        && reason.contains("requeued")
                        && reason.contains("limit"));
                if !fine {
                    v.push(format!(
                        "[1 final state] job {id}: ended {state} ({reason:?}), which it should not (states: {history}){}",
                        self.hint(id, seen.span.get(&id))
                    ));
                }
            }
            match finals.len() {
                1 => {}
                0 => {
                    none += 1;
                    v.push(format!(
                        "[1 final state] job {id}: no final state (states: {}){}",
                        if history.is_empty() { "none" } else { history },
                        self.hint(id, seen.span.get(&id))
                    ));
                }
                // At least once: a worker killed after it recorded a job's final state but
                // before the queue heard of it (the ack, the move to done/) leaves the job to
                // run again. Several final states are fine when all runs but one were on
                // workers that died; never at once (invariant 2 checks that).
                _ if finals.iter().filter(|(_, _, run)| !self.died(run)).count() <= 1
                    || self.redelivery_cause(id, seen.span.get(&id)) =>
                {
                    again += 1;
                }
                n => {
                    several += 1;
                    let runs: Vec<String> = finals
                        .iter()
                        .map(|(s, _, run)| format!("{s} by run {run} ({})", self.who(run)))
                        .collect();
                    v.push(format!(
                        "[1 final state] job {id}: {n} final states: {} (states: {history}){}",
                        runs.join(", "),
                        self.hint(id, seen.span.get(&id))
                    ));
                }
            }
        }

        // 2. No two runs of a job at once.
        let overlaps =
            std::fs::read_to_string(self.locks.path().join("overlaps")).unwrap_or_default();
        for line in overlaps.lines() {
            let id: u64 = line
                .split_whitespace()
                .nth(1)
                .and_then(|i| i.parse().ok())
                .unwrap_or(0);
            // OVERLAP <id> <run> <time> holder <run> <time>
            let f: Vec<&str> = line.split_whitespace().collect();
            let secs = |i: usize| f.get(i).and_then(|t| t.parse::<f64>().ok());
            let detail = match (f.get(2), f.get(5), secs(3), secs(6)) {
                (Some(run), Some(holder), Some(at), Some(since)) => format!(
                    "run {run} ({}) started while run {holder} ({}), which took the lock {:.3}s before, still held it",
                    self.who(run),
                    self.who(holder),
                    at - since
                ),
                _ => line.to_owned(),
            };
            v.push(format!(
                "[2 overlap] job {id}: {detail}{}",
                self.hint(id, seen.span.get(&id))
            ));
        }

        // 4. Nothing left behind.
        let left = job_processes(&self.marker, self.scripts.path());
        for (pid, cmd) in &left {
            v.push(format!("[4 leftover] a job's process is still running after the last worker exited: pid {pid}: {cmd}"));
        }
        for _ in 0..3 {
            for (pid, _) in job_processes(&self.marker, self.scripts.path()) {
                kill("-KILL", pid);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let dirs: Vec<String> = std::fs::read_dir(self.scripts.path())
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        for d in &dirs {
            let owner = self.who(d.trim_start_matches("host-"));
            v.push(format!(
                "[4 leftover] working directory {d} is still in SCRIPTS_DIR, made by {owner}"
            ));
        }

        // 5. Counters and what the workers printed.
        let mut printed: BTreeMap<u64, Vec<(String, usize)>> = BTreeMap::new();
        let mut counted: BTreeMap<String, u64> = BTreeMap::new();
        let mut lost = Vec::new();
        let (mut requeues, mut redeliveries) = (0, 0);
        for w in &self.workers {
            let mine = w.finals_printed();
            for (id, state) in &mine {
                printed.entry(*id).or_default().push((state.clone(), w.n));
            }
            let mut mine_by_state: BTreeMap<String, u64> = BTreeMap::new();
            for (_, s) in &mine {
                *mine_by_state.entry(s.clone()).or_default() += 1;
            }
            let clean = w.exit.is_some_and(|e| e.success());
            if w.fate == Fate::Killed9 || w.fate == Fate::Forced {
                lost.push(format!(
                    "#{}: {}",
                    w.n,
                    w.last
                        .as_ref()
                        .map_or("never read".into(), |(m, _)| format!(
                            "{:?} at the last read",
                            m.jobs
                        ))
                ));
                continue;
            }
            let best = w.exact.as_ref().or(w.last.as_ref());
            if let Some((m, _)) = best {
                for (s, n) in &m.jobs {
                    *counted.entry(s.clone()).or_default() += n;
                }
                requeues += m.requeues;
                redeliveries += m.redeliveries;
            }
            if let (Some((m, at_line)), true) = (&w.exact, clean) {
                let lines = w.lines();
                let after = finals_in(&lines[(*at_line).min(lines.len())..]);
                let states: BTreeSet<&String> = m.jobs.keys().chain(mine_by_state.keys()).collect();
                for s in states {
                    let (c, p) = (
                        m.jobs.get(s).copied().unwrap_or(0),
                        mine_by_state.get(s).copied().unwrap_or(0),
                    );
                    // A job ending after the read is printed after it: then only c <= p holds.
                    if c > p || (c < p && after.is_empty()) {
                        v.push(format!(
                            "[5 metrics] worker {}: host_worker_jobs_total{{state=\"{s}\"}} is {c}, read paused and idle before its last SIGINT, but it printed {p} job(s) ending {s}",
                            w.label()
                        ));
                    }
                }
            } else if let (Some((m, _)), true) = (&w.last, clean) {
                for (s, c) in &m.jobs {
                    let p = mine_by_state.get(s).copied().unwrap_or(0);
                    if *c > p {
                        v.push(format!(
                            "[5 metrics] worker {}: host_worker_jobs_total{{state=\"{s}\"}} was {c} before it was signalled, but it printed only {p} job(s) ending {s} by its exit",
                            w.label()
                        ));
                    }
                }
            }
        }
        for (s, c) in &counted {
            let recorded = by_state.get(s).copied().unwrap_or(0) as u64;
            if *c > recorded {
                v.push(format!(
                    "[5 metrics] host_worker_jobs_total{{state=\"{s}\"}} summed over the workers not killed -9 is {c}, more than the {recorded} {s} state(s) recorded"
                ));
            }
        }
        // A worker killed -9 (or by the harness) may die between recording a state and
        // printing it: only without such a kill must every recorded state have been printed.
        let killed = self
            .workers
            .iter()
            .any(|w| matches!(w.fate, Fate::Killed9 | Fate::Forced));
        for spec in &self.specs {
            let id = spec.id;
            let recorded: Vec<&String> = seen.finals[&id].iter().map(|f| &f.0).collect();
            let said = printed.get(&id).cloned().unwrap_or_default();
            let mut unmatched: Vec<&String> = recorded.clone();
            for (s, n) in &said {
                match unmatched.iter().position(|r| *r == s) {
                    Some(i) => {
                        unmatched.remove(i);
                    }
                    None => v.push(format!(
                        "[5 metrics] job {id}: worker #{n} printed that it ended {s}, but no such final state was recorded (recorded: {recorded:?}){}",
                        self.hint(id, seen.span.get(&id))
                    )),
                }
            }
            if !killed && !unmatched.is_empty() {
                v.push(format!(
                    "[5 metrics] job {id}: final state(s) {unmatched:?} recorded that no worker printed, and no worker was killed -9"
                ));
            }
        }

        let reruns: usize = seen.runs.values().map(|r| r.saturating_sub(1)).sum();
        let mut s = String::new();
        s.push_str(&format!(
            "\n==== faults summary: {} queue, FAULTS_SEED={} ({:.1}s, end: {end:?}) ====\n",
            if self.kind == QueueKind::Dir {
                "directory"
            } else {
                "RabbitMQ"
            },
            self.cfg.seed,
            self.t0.elapsed().as_secs_f64()
        ));
        s.push_str(&format!(
            "jobs {}: final states {by_state:?}, without one {none}, with several {several} (and {again} ended again after a worker died or a connection was cut, as at-least-once allows); runs {} ({reruns} beyond the first); cancels sent {:?}\n",
            self.cfg.jobs,
            seen.runs.values().sum::<usize>(),
            self.cancelled
        ));
        let count = |f: &dyn Fn(&Worker) -> bool| self.workers.iter().filter(|w| f(w)).count();
        s.push_str(&format!(
            "workers started {} ({} isolated): killed -9 {}, SIGTERM {}, SIGINT {}, stopped at the end {}, forced {}\n",
            self.workers.len(),
            count(&|w| w.isolated),
            count(&|w| w.fate == Fate::Killed9),
            count(&|w| w.fate == Fate::Signalled("SIGTERM")),
            count(&|w| w.fate == Fate::Signalled("SIGINT")),
            count(&|w| w.fate == Fate::Stopping),
            count(&|w| w.fate == Fate::Forced),
        ));
        s.push_str("faults (planned / fired / skipped):\n");
        for (k, [p, f, sk]) in &self.tally {
            s.push_str(&format!("  {:<28} {p:>3} / {f:>3} / {sk:>3}\n", k.name()));
        }
        s.push_str(&format!(
            "counters of workers not killed -9: jobs_total {counted:?}, requeues_total {requeues}, redeliveries_total {redeliveries}; lost with kill -9: {}\n",
            if lost.is_empty() { "none".into() } else { lost.join(", ") }
        ));
        s.push_str(&format!(
            "overlaps {}, processes left {}, working directories left {}\n",
            overlaps.lines().count(),
            left.len(),
            dirs.len()
        ));
        if let Q::Amqp(a) = &self.q {
            let data = a.data();
            let cut = data.connections.saturating_sub(1);
            if cut > 0 && !self.cfg.broker_wide {
                s.push_str(&format!(
                    "NOTE: the collector's own connection was lost {cut} time(s): something outside this run (another test's close_all_connections or broker restart?) cut connections too\n"
                ));
            }
            let t0 = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64())
                - self.t0.elapsed().as_secs_f64();
            for e in data
                .errors
                .iter()
                .filter_map(|e| e.strip_prefix("collector: at "))
                .take(5)
            {
                // "<Unix secs> (Unix): <error>", shown on the run's clock
                let (at, rest) = e.split_once(" (Unix): ").unwrap_or(("0", e));
                let at = at.parse::<f64>().map_or(0.0, |a| a - t0);
                s.push_str(&format!("  the collector at {at:.1}s: {rest}\n"));
            }
        }
        self.violations.extend(v);
        s.push_str(&format!("violations: {}\n", self.violations.len()));
        for x in &self.violations {
            s.push_str(&format!("  - {x}\n"));
        }
        s.push_str(&format!("replay: {}\n", self.replay()));
        s
    }
}

impl Drop for Harness {
    fn drop(&mut self) {
        for w in &mut self.workers {
            if w.alive() {
                let _ = w.child.kill();
                w.exit = w.child.wait().ok();
            }
        }
        for _ in 0..3 {
            let left = job_processes(&self.marker, self.scripts.path());
            if left.is_empty() {
                break;
            }
            for (pid, _) in left {
                kill("-KILL", pid);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
