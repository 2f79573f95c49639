//! The docker backend against a real engine (podman's Docker-API service, or DOCKER_HOST):
//! exit codes, byte-exact logs, image selection, limits, nothing left behind, the reaper.

use std::io::{BufRead as _, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use blackbox::{artifacts, engine, engine_api, host, plugin_dir, run, script, Guard, Ran};

fn plugins() -> tempfile::TempDir {
    plugin_dir(&[("libdocker.so", &artifacts().docker)])
}

/// `host run -b docker` with the engine's endpoint, a short stop grace (the test image's
/// init takes its time over SIGTERM), and `extra` args before the script.
fn docker_cmd(dir: &std::path::Path, extra: &[&str], script: &std::path::Path) -> Command {
    let mut cmd = host(dir);
    cmd.args(["run", "-b", "docker", "-c"])
        .arg(format!("ENDPOINT={}", engine()))
        .args(["-c", "STOP_GRACE=1s"])
        .args(extra)
        .arg(script);
    cmd
}

fn run_docker(extra: &[&str], body: &str) -> Ran {
    let dir = plugins();
    let s = script(body);
    run(docker_cmd(dir.path(), extra, s.path()))
}

/// Names of the engine's containers that carry `instance` in their name.
fn containers_named(part: &str) -> Vec<String> {
    let (code, body) = engine_api("GET", "/containers/json?all=true", None);
    assert_eq!(code, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    list.as_array()
        .unwrap()
        .iter()
        .flat_map(|c| c["Names"].as_array().cloned().unwrap_or_default())
        .filter_map(|n| n.as_str().map(|s| s.trim_start_matches('/').to_owned()))
        .filter(|n| n.contains(part))
        .collect()
}

fn instance_of(stderr: &str) -> String {
    stderr
        .split("instance ")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .unwrap_or_else(|| panic!("no instance line in:\n{stderr}"))
        .to_owned()
}

#[test]
fn exit_codes_and_both_streams_come_through() {
    for code in [0, 1, 7] {
        let out = run_docker(&[], &format!("echo out; echo err >&2; exit {code}"));
        assert_eq!(out.code, Some(code), "{}", out.stderr);
        assert_eq!(out.stdout, "out\nerr\n");
        let name = instance_of(&out.stderr);
        assert!(
            containers_named(&name).is_empty(),
            "container {name} left behind"
        );
    }
}

#[test]
fn fifty_megabytes_of_output_arrive_byte_exact() {
    let line = "0123456789abcdefghijklmnopqrstuvwxyz";
    let out = run_docker(&[], &format!("yes {line} | head -c 50000000"));
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.raw_stdout.len(), 50_000_000);
    let expected: Vec<u8> = format!("{line}\n")
        .into_bytes()
        .into_iter()
        .cycle()
        .take(50_000_000)
        .collect();
    assert!(
        out.raw_stdout == expected,
        "the log differs from what the script wrote"
    );
}

#[test]
fn the_image_is_chosen_by_language_or_by_image() {
    for (args, want) in [
        (vec!["--language", "go"], "travis:go"),
        (vec!["--language", "ruby"], "ruby:latest"),
        (vec!["--language", "rust"], "travis:default"),
        (
            vec!["--language", "go", "-c", "IMAGE=ruby:latest"],
            "ruby:latest",
        ),
        // The job's own image name (a payload's image_name) comes before any selector;
        // the operator's IMAGE before it.
        (
            vec!["--language", "ruby", "--image", "travis:go"],
            "travis:go",
        ),
        (
            vec!["--image", "travis:go", "-c", "IMAGE=ruby:latest"],
            "ruby:latest",
        ),
        (
            vec![
                "--language",
                "ruby",
                "--image",
                "travis:go",
                "-c",
                "IMAGE_SELECTOR_TYPE=env",
            ],
            "travis:go",
        ),
        // The original's env selector: the most specific IMAGE_* key, a value naming
        // another key followed once, "default" when none fits.
        (
            vec![
                "--language",
                "go",
                "--dist",
                "jammy",
                "-c",
                "IMAGE_SELECTOR_TYPE=env",
            ]
            .into_iter()
            .chain([
                "-c",
                "IMAGE_DIST_JAMMY_GO=ruby:latest",
                "-c",
                "IMAGE_GO=travis:go",
            ])
            .collect(),
            "ruby:latest",
        ),
        (
            vec![
                "--language",
                "go",
                "--dist",
                "focal",
                "-c",
                "IMAGE_SELECTOR_TYPE=env",
            ]
            .into_iter()
            .chain([
                "-c",
                "IMAGE_DIST_JAMMY_GO=ruby:latest",
                "-c",
                "IMAGE_GO=travis:go",
            ])
            .collect(),
            "travis:go",
        ),
        (
            vec!["--language", "rust", "-c", "IMAGE_SELECTOR_TYPE=env"]
                .into_iter()
                .chain(["-c", "IMAGE_RUST=gophers", "-c", "IMAGE_GOPHERS=travis:go"])
                .collect(),
            "travis:go",
        ),
        (
            vec!["--language", "c", "-c", "IMAGE_SELECTOR_TYPE=env"]
                .into_iter()
                .chain([
                    "-c",
                    "IMAGE_DEFAULT=travis:default",
                    "-c",
                    "IMAGE_GO=travis:go",
                ])
                .collect(),
            "travis:default",
        ),
    ] {
        let out = run_docker(&args, "cat /etc/image-name");
        assert_eq!(out.code, Some(0), "{args:?}: {}", out.stderr);
        assert_eq!(out.stdout.trim(), want, "{args:?}");
    }
    let out = run_docker(&["-c", "IMAGE=nope:1"], "true");
    assert_eq!(out.code, Some(75), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("no image found on the engine: tried nope:1"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("travis:default"),
        "the error lists what the engine has"
    );
}

#[test]
fn limits_from_the_config_are_applied_to_the_container() {
    let dir = plugins();
    let registry = host::Registry::load(&host::plugins::loader::plugin_dirs(&[dir
        .path()
        .to_path_buf()]));
    let config = plugin_api::ProviderConfig::from_map([
        ("ENDPOINT", engine()),
        ("MEMORY", "99MB"),
        ("STOP_GRACE", "1s"),
        ("CONTAINER_LABELS", "team:ci"),
    ]);
    let provider = registry
        .new_backend_provider("docker", &config)
        .expect("provider");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let instance = provider.start(&Default::default()).await.expect("start");
        let (code, body) = engine_api("GET", &format!("/containers/{}/json", instance.id()), None);
        assert_eq!(code, 200, "{body}");
        let info: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(info["HostConfig"]["Memory"], 99 * 1024 * 1024);
        assert_eq!(info["Config"]["Labels"]["team"], "ci");
        assert_eq!(info["Config"]["Labels"]["dev.ci-host.backend"], "docker");
        instance.upload_script(b"true".to_vec()).await.unwrap();
        let err = instance.upload_script(b"true".to_vec()).await.unwrap_err();
        assert_eq!(err.backend_kind(), Some(plugin_api::ErrorKind::STALE_VM));
        instance.stop().await.expect("stop");
        instance.stop().await.expect("stop twice");
        assert!(containers_named(instance.id()).is_empty());
    });
}

/// Starts a long job and waits for its worker-info line; returns the child and the instance.
fn long_job(
    dir: &std::path::Path,
    extra: &[&str],
) -> (Guard, String, std::thread::JoinHandle<String>) {
    let s = dir.join("long.sh");
    std::fs::write(&s, "echo up; sleep 600").unwrap();
    let mut cmd = docker_cmd(dir, extra, &s);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = Guard(cmd.spawn().unwrap());
    let mut reader = BufReader::new(child.0.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("worker info") {
        line.clear();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "host ended before starting"
        );
    }
    let instance = instance_of(&line);
    let rest = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut s);
        s
    });
    (child, instance, rest)
}

#[test]
fn a_hard_timeout_and_sigterm_leave_no_container_behind() {
    let dir = plugins();
    let started = Instant::now();
    let (mut child, instance, _) = long_job(dir.path(), &["--hard-timeout", "2s"]);
    assert_eq!(child.wait().code(), Some(124));
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(
        containers_named(&instance).is_empty(),
        "{instance} left behind after a timeout"
    );

    let (mut child, instance, _) = long_job(dir.path(), &[]);
    assert_eq!(
        containers_named(&instance).len(),
        1,
        "the job's container runs"
    );
    Command::new("kill")
        .arg("-TERM")
        .arg(child.0.id().to_string())
        .status()
        .unwrap();
    assert_eq!(child.wait().code(), Some(143));
    assert!(
        containers_named(&instance).is_empty(),
        "{instance} left behind after SIGTERM"
    );
}

#[test]
fn two_jobs_run_at_once() {
    let dir = plugins();
    let a = script("sleep 1; echo job a");
    let b = script("sleep 1; echo job b");
    let spawn = |s: &std::path::Path| {
        let mut cmd = docker_cmd(dir.path(), &[], s);
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.spawn().unwrap()
    };
    let started = Instant::now();
    let (ca, cb) = (spawn(a.path()), spawn(b.path()));
    let (oa, ob): (Ran, Ran) = (
        ca.wait_with_output().unwrap().into(),
        cb.wait_with_output().unwrap().into(),
    );
    assert_eq!(
        (oa.code, oa.stdout.as_str()),
        (Some(0), "job a\n"),
        "{}",
        oa.stderr
    );
    assert_eq!(
        (ob.code, ob.stdout.as_str()),
        (Some(0), "job b\n"),
        "{}",
        ob.stderr
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn the_reaper_removes_a_killed_hosts_container_and_leaves_others_alone() {
    let dir = plugins();
    let (mut child, instance, _) = long_job(dir.path(), &[]);
    child.0.kill().unwrap(); // SIGKILL: no cleanup
    child.wait();
    assert_eq!(
        containers_named(&instance).len(),
        1,
        "the killed host left its container"
    );

    // A container that is not ours (one an earlier, failed run left is replaced).
    engine_api(
        "DELETE",
        "/containers/not-ours-reaper-test?force=true",
        None,
    );
    let (code, body) = engine_api(
        "POST",
        "/containers/create?name=not-ours-reaper-test",
        Some(r#"{"Image":"travis:default","Cmd":["/sbin/init"]}"#),
    );
    assert!(code == 201 || code == 409, "{code} {body}");

    let reap = |extra: &[&str]| {
        let mut cmd = host(dir.path());
        cmd.args(["reap", "-b", "docker", "-c"])
            .arg(format!("ENDPOINT={}", engine()))
            .args(["--older-than", "0s"])
            .args(extra);
        run(cmd)
    };
    let dry = reap(&["--dry-run"]);
    assert_eq!(dry.code, Some(0), "{}", dry.stderr);
    assert!(dry.stdout.contains(&instance), "{}", dry.stdout);
    assert_eq!(
        containers_named(&instance).len(),
        1,
        "a dry run removes nothing"
    );
    let done = reap(&[]);
    assert_eq!(done.code, Some(0), "{}", done.stderr);
    assert!(
        done.stdout
            .contains(&format!("removed: container {instance}")),
        "{}",
        done.stdout
    );
    assert!(containers_named(&instance).is_empty());
    assert_eq!(
        containers_named("not-ours-reaper-test").len(),
        1,
        "unlabelled containers stay"
    );
    engine_api(
        "DELETE",
        "/containers/not-ours-reaper-test?force=true",
        None,
    );
}

#[test]
fn a_missing_endpoint_is_the_originals_config_error() {
    let dir = plugins();
    let s = script("true");
    let mut cmd = host(dir.path());
    cmd.args(["run", "-b", "docker"]).arg(s.path());
    let out = run(cmd);
    assert_eq!(out.code, Some(78));
    assert!(
        out.stderr.contains("expected config key endpoint"),
        "{}",
        out.stderr
    );
}

/// A second API service of the same engine (same storage) on a loopback TCP port, killed on
/// drop.
struct TcpService {
    child: Guard,
    url: String,
}

fn tcp_service() -> TcpService {
    let _ = engine(); // the engine's state dir and images exist
    let state = artifacts().target.join("engine");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port");
    let child = Command::new("podman")
        .env("CONTAINERS_CONF", state.join("containers.conf"))
        .env("CONTAINERS_STORAGE_CONF", state.join("storage.conf"))
        .args(["system", "service", "--time=120"])
        .arg(format!("tcp://127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("podman system service on tcp");
    let url = format!("tcp://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the TCP API service did not come up"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    TcpService {
        child: Guard(child),
        url,
    }
}

#[test]
fn a_tcp_endpoint_works_and_a_lost_connection_is_not_completed() {
    let dir = plugins();
    let mut service = tcp_service();
    let endpoint = format!("ENDPOINT={}", service.url);
    let s = script("echo over tcp");
    let mut cmd = host(dir.path());
    cmd.args([
        "run",
        "-b",
        "docker",
        "-c",
        &endpoint,
        "-c",
        "STOP_GRACE=1s",
    ])
    .arg(s.path());
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "over tcp\n");

    // The engine goes away mid-run: infrastructure failure (requeue), not a failed build.
    let long = dir.path().join("long.sh");
    std::fs::write(&long, "echo up; sleep 600").unwrap();
    let mut cmd = host(dir.path());
    cmd.args([
        "run",
        "-b",
        "docker",
        "-c",
        &endpoint,
        "-c",
        "STOP_GRACE=1s",
        "--stop-timeout",
        "5s",
    ])
    .arg(&long)
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut job = Guard(cmd.spawn().unwrap());
    let mut line = String::new();
    BufReader::new(job.0.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line, "up\n");
    service.child.0.kill().unwrap();
    service.child.wait();
    let status = job.wait();
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut job.0.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(75), "{stderr}");
    // Stopping could not reach the engine either: the container is the reaper's to remove.
    let instance = instance_of(&stderr);
    for name in containers_named(&instance) {
        engine_api("DELETE", &format!("/containers/{name}?force=true"), None);
    }
}

/// Quotes `s` for sh.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[test]
fn on_a_terminal_a_docker_start_shows_its_steps() {
    let dir = plugins();
    let s = script("echo on a pty\n");
    let cmd = docker_cmd(dir.path(), &[], s.path());
    // The command line as sh sees it, run by script(1) on a pseudo-terminal: stderr is a
    // terminal, so the spinner and the steps show.
    let mut line = vec![sh_quote(&cmd.get_program().to_string_lossy())];
    line.extend(cmd.get_args().map(|a| sh_quote(&a.to_string_lossy())));
    let mut pty = Command::new("script");
    pty.args(["-q", "-e", "-c", &line.join(" "), "/dev/null"]);
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => pty.env(k, v),
            None => pty.env_remove(k),
        };
    }
    let out = run(pty);
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    let screen = out.stdout.replace('\r', "\n");
    for step in ["✓ image ", "✓ container host-", "✓ container running"] {
        assert!(
            screen.contains(step),
            "{step:?} not on the terminal:\n{screen}"
        );
    }
    assert!(screen.contains("on a pty"), "{screen}");
    assert!(
        screen.contains(", image "),
        "the worker-info line names the image: {screen}"
    );
}
