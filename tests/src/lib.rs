//! Support for the black-box tests: builds the real artifacts (the `host` binary, the plugin
//! libraries, the test fixtures) and runs the binary the way a person would.
//!
//! The workspace's own plugins and the host are built with `cargo build` into the normal
//! target directory (cargo does not hold its lock while tests run). Test-only fixture
//! plugins are built into `<target>/fixtures`, so they never land beside the real host
//! binary, where its default plugin search would find them.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};

pub mod worker;

/// Paths of the built artifacts.
#[derive(Debug)]
pub struct Artifacts {
    /// The `host` binary.
    pub host: PathBuf,
    /// The fake backend's library.
    pub fake: PathBuf,
    /// The local backend's library.
    pub local: PathBuf,
    /// The docker backend's library.
    pub docker: PathBuf,
    /// The target directory (`target/`).
    pub target: PathBuf,
    /// `debug` or `release`.
    pub profile: String,
}

/// The workspace root.
pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    c.current_dir(workspace());
    c
}

/// The shared-library file name of crate `name` on this platform.
pub fn dylib_name(name: &str) -> String {
    format!(
        "{}{name}{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    )
}

/// Builds (once per test process) and returns the host binary and the workspace plugins.
pub fn artifacts() -> &'static Artifacts {
    static ARTIFACTS: OnceLock<Artifacts> = OnceLock::new();
    ARTIFACTS.get_or_init(|| {
        // <target>/<profile>/deps/<test binary>
        let exe = std::env::current_exe().expect("current exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary lives in <target>/<profile>/deps");
        let target = profile_dir.parent().expect("target dir").to_path_buf();
        let profile = profile_dir
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or("debug")
            .to_owned();
        let mut cmd = cargo();
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "host-cli",
            "-p",
            "fake",
            "-p",
            "local",
            "-p",
            "docker",
            "--target-dir",
        ])
        .arg(&target);
        if profile == "release" {
            cmd.arg("--release");
        }
        run_cargo(cmd, "build the host and its plugins");
        Artifacts {
            host: profile_dir.join(format!("host{}", std::env::consts::EXE_SUFFIX)),
            fake: profile_dir.join(dylib_name("fake")),
            local: profile_dir.join(dylib_name("local")),
            docker: profile_dir.join(dylib_name("docker")),
            target,
            profile,
        }
    })
}

fn run_cargo(mut cmd: Command, what: &str) {
    // Captured, so that nested test runs do not mix their summaries into ours.
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap_or_else(|e| panic!("cannot run cargo to {what}: {e}"));
    assert!(
        out.status.success(),
        "cargo failed to {what}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Builds the fixture crate `tests/fixtures/<name>` (once per test process) into
/// `<target>/fixtures` and returns its library. The fixtures are a workspace of their own,
/// outside the main one, so that no build of the main workspace puts them beside `host`.
pub fn fixture(name: &str) -> PathBuf {
    static BUILT: OnceLock<Mutex<Vec<String>>> = OnceLock::new();
    let a = artifacts();
    let dir = a.target.join("fixtures");
    let lib = dir.join(&a.profile).join(dylib_name(name));
    let built = BUILT.get_or_init(|| Mutex::new(Vec::new()));
    let mut built = built.lock().unwrap_or_else(|e| e.into_inner());
    if !built.iter().any(|b| b == name) {
        let mut cmd = cargo();
        cmd.args(["build", "--quiet", "--manifest-path"])
            .arg(workspace().join("tests/fixtures/Cargo.toml"))
            .args(["-p", name, "--target-dir"])
            .arg(&dir);
        if a.profile == "release" {
            cmd.arg("--release");
        }
        run_cargo(cmd, &format!("build fixture {name}"));
        built.push(name.to_owned());
    }
    lib
}

/// A temporary plugin directory holding copies of the given files under the given names.
pub fn plugin_dir(files: &[(&str, &Path)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for (name, src) in files {
        std::fs::copy(src, dir.path().join(name))
            .unwrap_or_else(|e| panic!("copy {} to {name}: {e}", src.display()));
    }
    dir
}

/// The host binary with `--plugin-dir dir`, and an environment free of backend config and
/// plugin paths inherited from whoever runs the tests.
pub fn host(dir: &Path) -> Command {
    let mut cmd = Command::new(&artifacts().host);
    for (k, _) in std::env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        if k.starts_with("BACKEND_") || k.starts_with("HOST_") || k == "RUST_LOG" {
            cmd.env_remove(k);
        }
    }
    cmd.arg("--plugin-dir").arg(dir);
    cmd.stdin(Stdio::null());
    cmd
}

/// Output decoded for assertions.
pub struct Ran {
    /// The exit code (`None`: killed by a signal).
    pub code: Option<i32>,
    /// Standard output, lossily decoded.
    pub stdout: String,
    /// Standard error, lossily decoded.
    pub stderr: String,
    /// Standard output, raw.
    pub raw_stdout: Vec<u8>,
}

impl From<Output> for Ran {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            raw_stdout: o.stdout,
        }
    }
}

/// Runs `cmd` to completion.
pub fn run(mut cmd: Command) -> Ran {
    cmd.output().expect("run host").into()
}

/// A temporary script file with `content`.
pub fn script(content: &str) -> tempfile::NamedTempFile {
    use std::io::Write as _;
    let mut f = tempfile::NamedTempFile::new().expect("temp file");
    f.write_all(content.as_bytes()).expect("write script");
    f
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let entry = entry.expect("dir entry");
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        if entry.file_name() == "target" {
            continue;
        }
        if src.is_dir() {
            copy_dir(&src, &dst);
        } else {
            let content = std::fs::read(&src).expect("read source file");
            // Unchanged files keep their mtime, so cargo rebuilds only what changed.
            if std::fs::read(&dst).ok().as_deref() != Some(content.as_slice()) {
                std::fs::write(&dst, content).expect("write copy");
            }
        }
    }
}

/// Replaces `from` with `to` in the file at `path`; panics when `from` is absent, so a
/// fixture cannot silently stop testing what it claims to.
pub fn edit_file(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        text.contains(from),
        "{} does not contain {from:?}",
        path.display()
    );
    let new = text.replace(from, to);
    if new != text {
        std::fs::write(path, new).expect("write edited file");
    }
}

/// Where a variant's crates live, for its edit function.
pub struct Variant {
    /// The workspace root (its `Cargo.toml` is a copy of ours).
    pub root: PathBuf,
    /// The copy of plugin-api.
    pub api: PathBuf,
    /// The copy of the fake plugin.
    pub plugin: PathBuf,
}

/// Builds a variant of the fake plugin against an edited copy of plugin-api, outside the
/// workspace: a workspace in `<target>/fixtures/variants/<name>` with the copies in
/// `api-<name>/` and `<name>/` (paths of their own, so that cargo, which names path crates
/// by their path inside the workspace, never mixes their artifacts up with ours in the
/// shared `<target>/fixtures`), edited by `edit`, built as library `<name>`.
pub fn variant_plugin(name: &str, edit: impl FnOnce(&Variant)) -> PathBuf {
    static LOCK: Mutex<()> = Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let a = artifacts();
    let root = a.target.join("fixtures").join("variants").join(name);
    let v = Variant {
        api: root.join(format!("api-{name}")),
        plugin: root.join(name),
        root: root.clone(),
    };
    let ws = workspace();
    copy_dir(&ws.join("plugin-api"), &v.api);
    copy_dir(&ws.join("plugins/fake"), &v.plugin);
    let manifest = std::fs::read_to_string(ws.join("Cargo.toml")).expect("workspace manifest");
    let manifest: String = manifest
        .lines()
        .filter(|l| !l.starts_with("default-members"))
        .map(|l| {
            if l.starts_with("members") {
                format!("members = [\"api-{name}\", \"{name}\"]")
            } else {
                l.replace("path = \"plugin-api\"", &format!("path = \"api-{name}\""))
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    write_if_changed(&root.join("Cargo.toml"), &manifest);
    if let Ok(lock) = std::fs::read_to_string(ws.join("Cargo.lock")) {
        write_if_changed(&root.join("Cargo.lock"), &lock);
    }
    let plugin_manifest = v.plugin.join("Cargo.toml");
    let text = std::fs::read_to_string(&plugin_manifest).expect("fake manifest");
    write_if_changed(
        &plugin_manifest,
        &text.replace("name = \"fake\"", &format!("name = \"{name}\"")),
    );
    edit(&v);
    let mut cmd = cargo();
    cmd.current_dir(&root)
        .args(["build", "--quiet", "-p", name, "--target-dir"])
        .arg(a.target.join("fixtures"));
    if a.profile == "release" {
        cmd.arg("--release");
    }
    run_cargo(cmd, &format!("build variant plugin {name}"));
    a.target
        .join("fixtures")
        .join(&a.profile)
        .join(dylib_name(name))
}

fn write_if_changed(path: &Path, content: &str) {
    if std::fs::read_to_string(path).ok().as_deref() != Some(content) {
        std::fs::write(path, content).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    }
}

/// Compiles C `source` into a shared library `<target>/fixtures/c/<name>.so` with `cc`.
pub fn c_library(name: &str, source: &str) -> PathBuf {
    let dir = artifacts().target.join("fixtures").join("c");
    std::fs::create_dir_all(&dir).expect("fixture dir");
    let src = dir.join(format!("{name}.c"));
    let out = dir.join(format!("{name}.so"));
    std::fs::write(&src, source).expect("write C source");
    let status = Command::new("cc")
        .args(["-shared", "-fPIC", "-o"])
        .arg(&out)
        .arg(&src)
        .status()
        .expect("the tests need a C compiler (cc) to build a non-plugin shared library");
    assert!(status.success(), "cc failed on {}", src.display());
    out
}

/// A spawned child that is killed if the test ends (or panics) without waiting for it, so
/// a failing test leaves no process behind.
pub struct Guard(pub std::process::Child);

impl Guard {
    /// Waits for the child to exit.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.0.wait().expect("wait for child")
    }

    /// Waits for the child to exit, and reads what it wrote to its piped stderr.
    pub fn wait_with_stderr(&mut self) -> (std::process::ExitStatus, String) {
        let mut stderr = String::new();
        if let Some(mut e) = self.0.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut stderr);
        }
        (self.wait(), stderr)
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The code blocks of a markdown file: (info string, body), in order.
pub fn code_blocks(markdown: &str) -> Vec<(String, String)> {
    let mut blocks = Vec::new();
    let mut current: Option<(String, String)> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start().strip_prefix("```")) {
            (None, Some(info)) => current = Some((info.trim().to_owned(), String::new())),
            (Some(_), Some(_)) => blocks.extend(current.take()),
            (Some((_, body)), None) => {
                body.push_str(line);
                body.push('\n');
            }
            (None, None) => {}
        }
    }
    blocks
}

/// Copies `dir` to `to`, leaving out `target/`.
pub fn copy_tree(dir: &Path, to: &Path) {
    copy_dir(dir, to)
}

/// SHA-256 of a file, with the system's `sha256sum`.
pub fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Runs cargo with `args` in `dir`, panicking with its stderr on failure.
pub fn cargo_in(dir: &Path, args: &[&str]) {
    let mut cmd = cargo();
    cmd.current_dir(dir).args(args);
    run_cargo(
        cmd,
        &format!("cargo {} in {}", args.join(" "), dir.display()),
    );
}

/// The Docker Engine API endpoint for the docker backend's tests: `DOCKER_HOST` when set,
/// else podman's API service, started (and installed, if need be) by
/// `tests/engine/podman.sh`. Panics when no engine can be had: a test that needs an engine
/// never passes without one.
pub fn engine() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        if let Ok(url) = std::env::var("DOCKER_HOST") {
            if !url.is_empty() {
                return url;
            }
        }
        let state = artifacts().target.join("engine");
        let out = Command::new("bash")
            .arg(workspace().join("tests/engine/podman.sh"))
            .arg(&state)
            .output()
            .expect("run tests/engine/podman.sh");
        assert!(
            out.status.success(),
            "no container engine for the docker tests (set DOCKER_HOST, or let tests/engine/podman.sh start podman):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    })
}

/// A GET/POST/DELETE on the engine's API over its unix socket, with curl: (status, body).
pub fn engine_api(method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let url = engine();
    let socket = url
        .strip_prefix("unix://")
        .expect("the tests talk to a unix socket engine");
    let mut cmd = Command::new("curl");
    cmd.args([
        "-s",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "--unix-socket",
        socket,
        "-X",
        method,
    ]);
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "-d", b]);
    }
    cmd.arg(format!("http://engine/v1.41{path}"));
    let out = cmd
        .output()
        .expect("curl (the docker tests use it to inspect the engine)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

/// Sends `signal` (as kill(1) takes it, e.g. `-TERM`) to process `pid`.
pub fn signal(signal: &str, pid: u32) {
    let status = Command::new("kill")
        .arg(signal)
        .arg(pid.to_string())
        .status()
        .expect("kill(1)");
    assert!(status.success(), "kill {signal} {pid} failed");
}

/// The JSON document in the file at `path`.
pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}: {text}", path.display()))
}

/// Spawns `cmd` with its stdout piped and waits for its first line of output (a job that
/// has started), which is returned with the guarded child.
pub fn spawn_until_first_line(mut cmd: Command) -> (Guard, String) {
    use std::io::BufRead as _;
    cmd.stdout(Stdio::piped());
    let mut child = Guard(cmd.spawn().expect("spawn"));
    let mut line = String::new();
    let stdout = child.0.stdout.take().expect("piped stdout");
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read the first line");
    (child, line)
}

/// The broker for the worker's AMQP tests: `AMQP_URL` when set, else the local RabbitMQ,
/// else one that `tests/engine/rabbitmq.sh` installs and starts. Panics when none can be had:
/// a test that needs a broker never passes without one.
pub fn amqp_url() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    URL.get_or_init(|| {
        let state = artifacts().target.join("rabbitmq");
        let out = Command::new("bash")
            .arg(workspace().join("tests/engine/rabbitmq.sh"))
            .arg(&state)
            .output()
            .expect("run tests/engine/rabbitmq.sh");
        assert!(
            out.status.success(),
            "no RabbitMQ broker for the AMQP tests (set AMQP_URL, or let tests/engine/rabbitmq.sh start one):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    })
}

/// The RabbitMQ node with a TLS listener that `tests/engine/rabbitmq-tls.sh` starts (a
/// private node, `hosttls@localhost`), with the certificates it made at its start (see the
/// script for each). A test binary that starts it stops it when it exits.
#[derive(Debug)]
pub struct TlsBroker {
    /// The TLS listener's port (plain AMQP is on [`TlsBroker::PLAIN_PORT`]).
    pub port: u16,
    /// The directory of the certificates and keys.
    pub certs: PathBuf,
}

impl TlsBroker {
    /// The node's name, for `rabbitmqctl -n`.
    pub const NODE: &'static str = "hosttls@localhost";
    /// The node's plain AMQP port.
    pub const PLAIN_PORT: u16 = 25680;

    /// `amqps://guest:guest@localhost:PORT/`: the name the server certificate holds.
    pub fn url(&self) -> String {
        format!("amqps://guest:guest@localhost:{}/", self.port)
    }

    /// A file of the certificates directory (`ca.pem`, `client.key`...).
    pub fn cert(&self, name: &str) -> PathBuf {
        self.certs.join(name)
    }

    /// `rabbitmqctl` on this node; panics when it fails.
    pub fn rabbitmqctl(&self, args: &[&str]) -> Output {
        let out = Command::new("rabbitmqctl")
            .args(["-n", Self::NODE])
            .args(args)
            .output()
            .expect("rabbitmqctl");
        assert!(
            out.status.success(),
            "rabbitmqctl -n {} {args:?}: {}",
            Self::NODE,
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// The TLS broker ([`TlsBroker`]), started on first use. Panics when it cannot be had (it
/// needs Debian's rabbitmq-server, installed when missing as root, and openssl).
pub fn tls_broker() -> &'static TlsBroker {
    static BROKER: OnceLock<TlsBroker> = OnceLock::new();
    BROKER.get_or_init(|| {
        let state = artifacts().target.join("rabbitmq-tls");
        let was_up = std::net::TcpStream::connect(("127.0.0.1", 25681)).is_ok();
        let out = Command::new("bash")
            .arg(workspace().join("tests/engine/rabbitmq-tls.sh"))
            .arg(&state)
            .output()
            .expect("run tests/engine/rabbitmq-tls.sh");
        assert!(
            out.status.success(),
            "no RabbitMQ node with TLS for the TLS tests (tests/engine/rabbitmq-tls.sh):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("the TLS port the script printed");
        if !was_up {
            extern "C" fn stop() {
                let state = artifacts().target.join("rabbitmq-tls");
                let _ = Command::new("bash")
                    .arg(workspace().join("tests/engine/rabbitmq-tls.sh"))
                    .arg(&state)
                    .arg("stop")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status();
            }
            // SAFETY: `stop` is a plain function that runs once, at exit.
            unsafe { libc::atexit(stop) };
        }
        TlsBroker {
            port,
            certs: state.join("certs"),
        }
    })
}

/// `rabbitmqctl` aimed at the tests' broker: the private node `tests/engine/rabbitmq.sh`
/// starts (port 25677) when the machine has none, else the machine's own. A broker behind an
/// `AMQP_URL` elsewhere cannot be reached this way; the tests that need it say so.
pub fn rabbitmqctl(args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("rabbitmqctl");
    if amqp_url().contains(":25677/") {
        cmd.args(["-n", "hosttests@localhost"]);
    }
    let out = cmd
        .args(args)
        .output()
        .expect("rabbitmqctl (a test that restarts or cuts the broker needs its own tool)");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}
