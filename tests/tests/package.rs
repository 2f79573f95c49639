//! The Debian package (`packaging/deb/build`): what it holds, and, as root, installed with
//! `dpkg -i`: the command on PATH beside bind9's `host`, the plugin directory that passes
//! the host's own trust checks and refuses what is dropped into it, the unit accepted by
//! `systemd-analyze verify`, the worker started exactly as the unit's `ExecStart` with its
//! environment file (READY=1, STATUS=, WATCHDOG=1 and STOPPING=1 to a notify socket, a drain
//! on the unit's stop signal), and `dpkg -r` removing everything but the queue's data.

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blackbox::{run, workspace, Guard};

const UNIT: &str = "/lib/systemd/system/ci-host-worker.service";
const DEFAULTS: &str = "/etc/default/ci-host-worker";
const LIB: &str = "/usr/lib/ci-host";

/// Builds the package (a release build; quick when `.ci/run` built it already), once for
/// the tests of this file.
fn package() -> PathBuf {
    static DEB: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    DEB.get_or_init(build_package).clone()
}

fn build_package() -> PathBuf {
    let out = Command::new("bash")
        .arg(workspace().join("packaging/deb/build"))
        .arg(workspace().join("target/debian"))
        .output()
        .expect("run packaging/deb/build");
    assert!(
        out.status.success(),
        "packaging/deb/build failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn the_package_holds_the_binary_pinned_plugins_unit_and_settings_and_not_usr_bin_host() {
    let deb = package();
    let listing = run({
        let mut c = Command::new("dpkg-deb");
        c.arg("-c").arg(&deb);
        c
    });
    assert_eq!(listing.code, Some(0), "{}", listing.stderr);
    let entry = |path: &str| {
        listing
            .stdout
            .lines()
            .find(|l| l.split_whitespace().nth(5) == Some(path))
            .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
    };
    for (path, mode) in [
        ("./usr/lib/ci-host/host", "-rwxr-xr-x root/root"),
        ("./usr/lib/ci-host/plugins/", "drwxr-xr-x root/root"),
        (
            "./usr/lib/ci-host/plugins/libfake.so",
            "-rw-r--r-- root/root",
        ),
        (
            "./usr/lib/ci-host/plugins/liblocal.so",
            "-rw-r--r-- root/root",
        ),
        (
            "./usr/lib/ci-host/plugins/libdocker.so",
            "-rw-r--r-- root/root",
        ),
        (
            "./usr/lib/ci-host/plugins/plugins.lock",
            "-rw-r--r-- root/root",
        ),
        (
            "./lib/systemd/system/ci-host-worker.service",
            "-rw-r--r-- root/root",
        ),
        ("./etc/default/ci-host-worker", "-rw-r----- root/root"),
        ("./usr/lib/ci-host/start-worker", "-rwxr-xr-x root/root"),
        ("./usr/lib/ci-host/plugins.lock", "-rw-r--r-- root/root"),
        ("./usr/share/doc/ci-host/README.md", "-rw-r--r-- root/root"),
    ] {
        assert_eq!(
            entry(path).as_deref(),
            Some(mode),
            "{path}:\n{}",
            listing.stdout
        );
    }
    assert!(
        listing
            .stdout
            .contains("./usr/bin/ci-host -> ../lib/ci-host/host"),
        "{}",
        listing.stdout
    );
    // bind9-host's /usr/bin/host is left alone.
    assert_eq!(entry("./usr/bin/host"), None);
    let info = run({
        let mut c = Command::new("dpkg-deb");
        c.arg("-I").arg(&deb);
        c
    });
    assert!(info.stdout.contains("Package: ci-host"), "{}", info.stdout);
    assert!(
        info.stdout.contains("/etc/default/ci-host-worker"),
        "conffiles: {}",
        info.stdout
    );
}

/// Removes the package (purged) when dropped, and the test's queue data.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        // A file the test dropped among the plugins would keep the directory after a purge.
        let _ = std::fs::remove_file(Path::new(LIB).join("plugins/libextra.so"));
        let _ = std::fs::remove_file(Path::new(LIB).join("libextra.so"));
        let _ = Command::new("dpkg").args(["-P", "ci-host"]).output();
        let _ = std::fs::remove_dir_all("/var/lib/ci-host");
    }
}

/// `ci-host ARGS` as an operator types it, with a clean environment.
fn ci_host(args: &[&str]) -> blackbox::Ran {
    let mut c = Command::new("/usr/bin/ci-host");
    c.env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .args(args);
    run(c)
}

/// The value of `key=` in the unit's [Service] section.
fn unit_value(unit: &str, key: &str) -> String {
    unit.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in the unit"))
        .trim()
        .to_owned()
}

/// KEY=VALUE lines of an environment file as systemd reads them (comments and blanks
/// skipped; these files use no quoting).
fn environment_file(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// Datagrams on `socket` until `want` is among their lines, for at most `secs`.
fn notified(socket: &UnixDatagram, want: &str, secs: u64, seen: &mut Vec<String>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        if let Ok(n) = socket.recv(&mut buf) {
            let message = String::from_utf8_lossy(&buf[..n]).into_owned();
            let found = message.lines().any(|l| l == want);
            seen.push(message);
            if found {
                return true;
            }
        }
    }
    false
}

#[test]
fn installed_it_runs_the_worker_as_the_unit_says_and_removes_cleanly() {
    if !is_root() {
        println!("skipped: installing a package (dpkg -i) needs root; the package's contents are checked by the other test");
        return;
    }
    let deb = package();
    let _cleanup = Installed;
    let _ = std::fs::remove_dir_all("/var/lib/ci-host");
    let out = run({
        let mut c = Command::new("dpkg");
        c.arg("-i").arg(&deb);
        c
    });
    assert_eq!(out.code, Some(0), "dpkg -i: {}{}", out.stdout, out.stderr);

    // The command on PATH finds the three plugins in the installed directory, pinned.
    let out = ci_host(&["list-backends"]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    for alias in ["fake", "local", "docker"] {
        assert!(out.stdout.contains(alias), "{alias}: {}", out.stdout);
    }
    // A file dropped into the directory is refused: not pinned by the lock, and, when
    // another user owns it, by the trust rules too.
    let extra = Path::new(LIB).join("plugins/libextra.so");
    std::fs::copy(Path::new(LIB).join("plugins/libfake.so"), &extra).unwrap();
    let out = ci_host(&["list-backends"]);
    assert!(
        out.stdout
            .contains("libextra.so: refused: not listed in the plugin lock"),
        "a file the lock does not pin: {}{}",
        out.stdout,
        out.stderr
    );
    let nobody = Command::new("chown")
        .arg("nobody")
        .arg(&extra)
        .status()
        .unwrap();
    assert!(nobody.success());
    let out = ci_host(&["list-backends"]);
    assert!(
        out.stdout.contains("libextra.so: refused:") && out.stdout.contains("is owned by uid"),
        "a file of another user: {}{}",
        out.stdout,
        out.stderr
    );
    std::fs::remove_file(&extra).unwrap();
    // Nor beside the binary (its own directory is searched too): a lock there pins nothing.
    let beside = Path::new(LIB).join("libextra.so");
    std::fs::copy(Path::new(LIB).join("plugins/libfake.so"), &beside).unwrap();
    let out = ci_host(&["list-backends"]);
    std::fs::remove_file(&beside).unwrap();
    assert!(
        out.stdout
            .contains("/usr/lib/ci-host/libextra.so: refused: not listed in the plugin lock"),
        "a file beside the binary: {}{}",
        out.stdout,
        out.stderr
    );

    // The unit as systemd reads it.
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_ok()
    {
        let verify = run({
            let mut c = Command::new("systemd-analyze");
            c.args(["verify", UNIT]);
            c
        });
        assert_eq!(
            verify.code,
            Some(0),
            "systemd-analyze verify: {}{}",
            verify.stdout,
            verify.stderr
        );
    } else {
        println!("not checked: systemd-analyze is not installed (apt-get install systemd), so the unit is not verified");
    }
    let unit = std::fs::read_to_string(UNIT).unwrap();
    assert_eq!(unit_value(&unit, "Type"), "notify");
    let exec: Vec<String> = unit_value(&unit, "ExecStart")
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let env = environment_file(Path::new(DEFAULTS));
    // The settings file as travis-ci/worker's are written: `export KEY="VALUE"` lines work.
    let mut settings = std::fs::OpenOptions::new()
        .append(true)
        .open(DEFAULTS)
        .unwrap();
    std::io::Write::write_all(&mut settings, b"export TRAVIS_WORKER_POOL_SIZE=\"3\"\n").unwrap();
    drop(settings);
    let stop_signal = unit_value(&unit, "KillSignal");
    if !Path::new("/run/systemd/system").is_dir() {
        println!("systemd is not PID 1 here: the unit is started by hand as its ExecStart says, with a notify socket of the test's own");
    }

    // The worker, started as the unit starts it: the environment file's settings, a notify
    // socket and a watchdog. Its directory queue is the one the settings name.
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("notify");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let queue = format!(
        "{}/{}",
        env["TRAVIS_WORKER_BASE_DIR"], env["TRAVIS_WORKER_QUEUE_NAME"]
    );
    let url = format!("file://{queue}");
    for job in ["hello.json", "failing.json", "slow.json"] {
        let path = workspace().join("examples/jobs").join(job);
        let out = ci_host(&["enqueue", "--queue", &url, &path.display().to_string()]);
        assert_eq!(out.code, Some(0), "{}", out.stderr);
    }
    // A job must not see the notify socket (it could tell systemd the worker stopped).
    let spy = dir.path().join("spy.json");
    std::fs::write(
        &spy,
        r#"{"job": {"id": 77}, "script": "echo notify=${NOTIFY_SOCKET:-none} watchdog=${WATCHDOG_USEC:-none}\n"}"#,
    )
    .unwrap();
    let out = ci_host(&["enqueue", "--queue", &url, &spy.display().to_string()]);
    assert_eq!(out.code, Some(0), "{}", out.stderr);

    // As systemd starts it: the ExecStart line, an environment of systemd's own (the start
    // script reads the settings file), the notify socket and a watchdog.
    let mut cmd = Command::new(&exec[0]);
    cmd.args(&exec[1..])
        .env_clear()
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut worker = Guard(cmd.spawn().unwrap());
    let pid = worker.0.id();
    let mut seen = Vec::new();
    assert!(
        notified(&socket, "READY=1", 30, &mut seen),
        "no READY=1: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|m| m.contains("STATUS=") && m.contains("of 3 job(s) running")),
        "{seen:?}"
    );
    assert!(
        notified(&socket, "WATCHDOG=1", 5, &mut seen),
        "no WATCHDOG=1: {seen:?}"
    );
    // The quick jobs end while slow.json (3 s) still runs; the unit's stop signal then
    // drains: STOPPING=1 at once, and the slow job finishes instead of being requeued.
    let done = Path::new(&queue).join("done");
    let ended = || std::fs::read_dir(&done).map_or(0, |d| d.count());
    let deadline = Instant::now() + Duration::from_secs(60);
    while ended() < 3 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(ended(), 3, "the quick jobs did not end");
    blackbox::signal(&format!("-{}", stop_signal.trim_start_matches("SIG")), pid);
    assert!(
        notified(&socket, "STOPPING=1", 2, &mut seen),
        "no STOPPING=1: {seen:?}"
    );
    let (status, stderr) = worker.wait_with_stderr();
    assert_eq!(ended(), 4, "the slow job did not finish");
    let log = std::fs::read_to_string(Path::new(&queue).join("log/77.log")).unwrap();
    assert_eq!(log, "notify=none watchdog=none\n");
    assert_eq!(status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("job 1001 passed"), "{stderr}");
    assert!(stderr.contains("job 1003 passed"), "the slow job: {stderr}");

    // Removal takes what the package installed and leaves the queue's data and, until a
    // purge, the settings.
    let out = run({
        let mut c = Command::new("dpkg");
        c.args(["-r", "ci-host"]);
        c
    });
    assert_eq!(out.code, Some(0), "dpkg -r: {}{}", out.stdout, out.stderr);
    for gone in [LIB, "/usr/bin/ci-host", UNIT, "/usr/share/doc/ci-host"] {
        assert!(
            Path::new(gone).symlink_metadata().is_err(),
            "{gone} is left"
        );
    }
    assert!(
        Path::new(DEFAULTS).exists(),
        "the settings file went before a purge"
    );
    assert_eq!(
        std::fs::read_dir(&done).unwrap().count(),
        4,
        "the queue's data went"
    );
    let out = run({
        let mut c = Command::new("dpkg");
        c.args(["-P", "ci-host"]);
        c
    });
    assert_eq!(out.code, Some(0), "dpkg -P: {}{}", out.stdout, out.stderr);
    assert!(
        !Path::new(DEFAULTS).exists(),
        "the settings file is left after a purge"
    );
    assert!(done.is_dir(), "a purge took the queue's data");
}
