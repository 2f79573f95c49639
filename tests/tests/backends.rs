//! `host list-backends` and the registry, driven through the built binary and libraries.

use blackbox::{artifacts, fixture, host, plugin_dir, run};

#[test]
fn list_backends_shows_fake_with_its_config_keys() {
    let dir = plugin_dir(&[("libfake.so", &artifacts().fake)]);
    let mut cmd = host(dir.path());
    cmd.arg("list-backends");
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("fake"), "{}", out.stdout);
    assert!(out.stdout.contains("Fake"), "{}", out.stdout);
    for key in [
        "LOG_OUTPUT",
        "RUN_SLEEP",
        "ERROR",
        "STARTUP_DURATION",
        "EXIT_CODE",
        "LOG_BYTES",
        "START_ERROR",
    ] {
        assert!(
            out.stdout.contains(key),
            "{key} missing from:\n{}",
            out.stdout
        );
    }
    assert!(out.stdout.contains("faked log output to write"));
    assert!(out.stdout.contains("BACKEND_FAKE_<KEY>"), "{}", out.stdout);
}

#[test]
fn list_backends_json_parses_and_describes_each_key() {
    let dir = plugin_dir(&[("libfake.so", &artifacts().fake)]);
    let mut cmd = host(dir.path());
    cmd.args(["list-backends", "--json"]);
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).expect("valid JSON");
    let backends = v["backends"].as_array().expect("backends array");
    assert_eq!(backends.len(), 1);
    let fake = &backends[0];
    assert_eq!(fake["alias"], "fake");
    assert_eq!(fake["name"], "Fake");
    assert_eq!(fake["plugin_api_version"], plugin_api::PLUGIN_API_VERSION);
    let keys = fake["config_keys"].as_array().expect("keys");
    let error = keys
        .iter()
        .find(|k| k["key"] == "ERROR")
        .expect("ERROR key");
    assert_eq!(error["env"], "BACKEND_FAKE_ERROR");
    assert_eq!(
        error["help"],
        "error out all jobs (useful for testing requeue storms)"
    );
    assert_eq!(v["rejected"].as_array().map(Vec::len), Some(0));
}

#[test]
fn a_garbage_library_is_reported_by_name_and_fake_still_loads() {
    let dir = plugin_dir(&[("libfake.so", &artifacts().fake)]);
    std::fs::write(
        dir.path().join("garbage.so"),
        b"\x7fELF this is not a library",
    )
    .unwrap();
    std::fs::write(dir.path().join("empty.so"), b"").unwrap();
    std::fs::write(
        dir.path().join("README.txt"),
        b"not a library name: ignored",
    )
    .unwrap();
    let mut cmd = host(dir.path());
    cmd.args(["list-backends", "--json"]);
    let out = run(cmd);
    assert_eq!(
        out.code,
        Some(3),
        "some files rejected: exit 3\n{}",
        out.stderr
    );
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["backends"][0]["alias"], "fake");
    let rejected = v["rejected"].as_array().unwrap();
    let paths: Vec<&str> = rejected
        .iter()
        .map(|r| r["path"].as_str().unwrap())
        .collect();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    assert!(
        paths[0].ends_with("empty.so") && paths[1].ends_with("garbage.so"),
        "{paths:?}"
    );
    for r in rejected {
        let reason = r["reason"].as_str().unwrap();
        assert!(
            reason.starts_with("not a loadable shared library"),
            "{reason}"
        );
        assert!(!reason.contains('\n'));
    }

    // The table says the same for people.
    let mut cmd = host(dir.path());
    cmd.arg("list-backends");
    let out = run(cmd);
    assert_eq!(out.code, Some(3));
    assert!(
        out.stdout.contains("Rejected plugin files:"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("garbage.so: not a loadable shared library"),
        "{}",
        out.stdout
    );
}

#[test]
fn two_plugins_with_one_alias_refuse_the_second_naming_both_files() {
    let fake = &artifacts().fake;
    let dir = plugin_dir(&[("a-fake.so", fake), ("b-fake.so", fake)]);
    let mut cmd = host(dir.path());
    cmd.args(["list-backends", "--json"]);
    let out = run(cmd);
    assert_eq!(out.code, Some(3));
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["backends"].as_array().unwrap().len(), 1);
    assert!(v["backends"][0]["path"]
        .as_str()
        .unwrap()
        .ends_with("a-fake.so"));
    let reason = v["rejected"][0]["reason"].as_str().unwrap();
    let path = v["rejected"][0]["path"].as_str().unwrap();
    assert!(path.ends_with("b-fake.so"), "{path}");
    assert!(
        reason.contains("\"fake\"") && reason.contains("a-fake.so"),
        "{reason}"
    );
}

#[test]
fn each_backend_visits_in_sorted_alias_order_whatever_the_file_order() {
    // File order: panicky first. Alias order: fake first.
    let dir = plugin_dir(&[
        ("a-panicky.so", &fixture("panicky")),
        ("z-fake.so", &artifacts().fake),
    ]);
    let registry = host::Registry::load(&host::plugins::loader::plugin_dirs(&[dir
        .path()
        .to_path_buf()]));
    let mut seen = Vec::new();
    registry.each_backend(|b| seen.push(b.alias.clone()));
    assert_eq!(seen, ["fake", "panicky"]);
    assert!(registry.rejected().is_empty(), "{:?}", registry.rejected());

    let mut cmd = host(dir.path());
    cmd.args(["list-backends", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&run(cmd).stdout).unwrap();
    let aliases: Vec<&str> = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["alias"].as_str().unwrap())
        .collect();
    assert_eq!(aliases, ["fake", "panicky"]);
}

#[test]
fn an_unknown_alias_is_the_originals_error() {
    let dir = plugin_dir(&[("libfake.so", &artifacts().fake)]);
    let registry = host::Registry::load(&host::plugins::loader::plugin_dirs(&[dir
        .path()
        .to_path_buf()]));
    let err = registry
        .new_backend_provider("nope", &plugin_api::ProviderConfig::new())
        .err()
        .expect("unknown alias fails");
    assert_eq!(err.to_string(), "unknown backend provider: nope");

    let script = blackbox::script("true");
    let mut cmd = host(dir.path());
    cmd.args(["run", "--backend", "nope"]).arg(script.path());
    let out = run(cmd);
    assert_eq!(out.code, Some(64));
    assert!(
        out.stderr.contains("unknown backend provider: nope"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("loaded backends: fake"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_missing_plugin_directory_named_by_the_user_is_an_error() {
    let mut cmd = host(std::path::Path::new("/nonexistent/plugins"));
    cmd.arg("list-backends");
    let out = run(cmd);
    assert_eq!(out.code, Some(3));
    assert!(
        out.stdout.contains("/nonexistent/plugins"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout.contains("cannot read plugin directory"),
        "{}",
        out.stdout
    );
}

#[test]
fn plugin_dirs_come_from_host_plugin_path_and_help_lists_backend_keys() {
    let dir = plugin_dir(&[("libfake.so", &artifacts().fake)]);
    let mut cmd = std::process::Command::new(&artifacts().host);
    cmd.env("HOST_PLUGIN_PATH", dir.path()).arg("--help");
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stdout.contains("fake (Fake) config keys"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("RUN_SLEEP"), "{}", out.stdout);
    assert!(
        out.stdout.contains("BACKEND_<ALIAS>_<KEY>"),
        "{}",
        out.stdout
    );
}

#[test]
fn the_default_search_finds_plugins_beside_the_executable() {
    // A copy of the host binary with the fake plugin in plugins/ beside it.
    let dir = tempfile::tempdir().unwrap();
    let exe = dir.path().join("host");
    std::fs::copy(&artifacts().host, &exe).unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    std::fs::copy(&artifacts().fake, dir.path().join("plugins/libfake.so")).unwrap();
    let mut cmd = std::process::Command::new(&exe);
    cmd.env_remove("HOST_PLUGIN_PATH")
        .args(["list-backends", "--json"]);
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["backends"][0]["alias"], "fake");
}
