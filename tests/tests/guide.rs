//! Third parties ship backends without recompiling the host: the guide's code is a crate
//! that builds and runs, the template builds on its own outside the workspace, and a
//! plugin built against plugin-api 1.0 or 1.1 still loads and runs in this 1.2 host.

use std::path::Path;

use blackbox::{
    artifacts, cargo_in, code_blocks, copy_tree, dylib_name, edit_file, host, plugin_dir, run,
    script, sha256, variant_plugin, workspace,
};

/// The guide's blocks assembled into a crate at `dir` (and section 10's sandbox backend
/// into `dir/sandbox`), plugin-api pointed at ours.
fn assemble_guide(dir: &Path) -> usize {
    let guide = std::fs::read_to_string(workspace().join("docs/writing-a-backend.md")).unwrap();
    let api = workspace().join("plugin-api");
    let mut lib = String::new();
    let mut compiled = 0;
    for (info, body) in code_blocks(&guide) {
        let mut words = info.split_whitespace();
        let lang = words.next().unwrap_or("");
        let file = words.find_map(|w| w.strip_prefix("file="));
        match (lang, file) {
            ("rust", None) => lib.push_str(&body),
            ("rust" | "toml", Some(file)) => {
                let path = dir.join(file);
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                let body = body.replace(
                    "path = \"../plugin-api\"",
                    &format!("path = {:?}", api.display().to_string()),
                );
                std::fs::write(path, body).unwrap();
            }
            ("sh", None) => continue, // commands for the reader; the test does their work
            (other, _) => panic!("the guide has a code block the test does not compile: {other:?}"),
        }
        compiled += 1;
    }
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/lib.rs"), lib).unwrap();
    // Not members of any enclosing workspace; pinned to our dependency versions.
    for krate in [dir.to_owned(), dir.join("sandbox")] {
        let manifest = krate.join("Cargo.toml");
        let text = std::fs::read_to_string(&manifest).unwrap();
        std::fs::write(&manifest, format!("{text}\n[workspace]\n")).unwrap();
        std::fs::copy(workspace().join("Cargo.lock"), krate.join("Cargo.lock")).unwrap();
    }
    compiled
}

#[test]
fn the_guide_is_a_backend_that_builds_passes_its_tests_and_runs() {
    let dir = artifacts().target.join("fixtures/guide-echo");
    let compiled = assemble_guide(&dir);
    assert!(compiled >= 6, "the guide's code blocks: {compiled}");
    let target = artifacts().target.join("fixtures");
    let target = target.to_str().unwrap();
    cargo_in(&dir, &["test", "--quiet", "--target-dir", target]);
    cargo_in(&dir, &["build", "--quiet", "--target-dir", target]);
    let lib = artifacts()
        .target
        .join("fixtures")
        .join(&artifacts().profile)
        .join(dylib_name("echo_backend"));

    let plugins = plugin_dir(&[("libecho_backend.so", &lib)]);
    let s = script("one\ntwo\n");
    let mut cmd = host(plugins.path());
    cmd.args([
        "-v",
        "run",
        "-b",
        "echo",
        "-c",
        "PREFIX=| ",
        "-c",
        "EXIT_CODE=3",
    ])
    .arg(s.path());
    let out = run(cmd);
    assert_eq!(out.code, Some(3), "{}", out.stderr);
    assert_eq!(out.stdout, "| one\n| two\n");
    assert!(
        out.stderr.contains("starting an echo instance"),
        "plugin logs reach the host:\n{}",
        out.stderr
    );

    let mut cmd = host(plugins.path());
    cmd.args(["run", "-b", "echo", "-c", "DELAY=soon"])
        .arg(s.path());
    let out = run(cmd);
    assert_eq!(out.code, Some(78));
    assert!(out.stderr.contains("DELAY"), "{}", out.stderr);
}

#[test]
fn the_guides_sandbox_backend_is_at_most_80_lines_passes_the_kit_and_runs_in_namespaces() {
    let dir = artifacts().target.join("fixtures/guide-sandbox");
    assemble_guide(&dir);
    let crate_dir = dir.join("sandbox");
    let source = std::fs::read_to_string(crate_dir.join("src/lib.rs")).unwrap();
    let lines = source.lines().count();
    assert!(lines <= 80, "the sandbox backend takes {lines} lines");

    let target = artifacts().target.join("fixtures");
    let target = target.to_str().unwrap();
    // Its tests are the conformance kit: processes, zombies and files left fail it.
    cargo_in(&crate_dir, &["test", "--quiet", "--target-dir", target]);
    cargo_in(&crate_dir, &["build", "--quiet", "--target-dir", target]);
    let lib = artifacts()
        .target
        .join("fixtures")
        .join(&artifacts().profile)
        .join(dylib_name("sandbox_backend"));
    let plugins = plugin_dir(&[("libsandbox_backend.so", &lib)]);

    // PID 1 of its own namespace, seeing no process of ours; the exit code arrives.
    let s = script("echo pid $$; ps -e --no-headers | wc -l; exit 7\n");
    let mut cmd = host(plugins.path());
    cmd.args(["run", "-b", "sandbox"]).arg(s.path());
    let out = run(cmd);
    assert_eq!(out.code, Some(7), "{}", out.stderr);
    let mut words = out.stdout.split_whitespace();
    assert_eq!(words.next(), Some("pid"));
    assert_eq!(words.next(), Some("1"), "{}", out.stdout);
    let seen: u32 = words.next().and_then(|w| w.parse().ok()).unwrap_or(99);
    assert!(
        seen <= 4,
        "the script sees only its own processes:\n{}",
        out.stdout
    );
}

/// plugin-api as `cargo package` makes it, unpacked into a directory of its own.
fn packaged_plugin_api() -> std::path::PathBuf {
    let target = artifacts().target.join("package-target");
    let target_arg = target.to_str().unwrap();
    cargo_in(
        &workspace(),
        &[
            "package",
            "--quiet",
            "-p",
            "plugin-api",
            "--allow-dirty",
            "--no-verify",
            "--target-dir",
            target_arg,
        ],
    );
    let name = format!("plugin-api-{}", plugin_api::PLUGIN_API_VERSION);
    let unpacked = artifacts().target.join("package-unpacked");
    let _ = std::fs::remove_dir_all(&unpacked);
    std::fs::create_dir_all(&unpacked).unwrap();
    let status = std::process::Command::new("tar")
        .arg("xzf")
        .arg(target.join("package").join(format!("{name}.crate")))
        .arg("-C")
        .arg(&unpacked)
        .status()
        .unwrap();
    assert!(status.success(), "tar xzf of the packaged plugin-api");
    let dir = unpacked.join(name);
    let manifest = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    assert!(
        !manifest.contains("workspace = true"),
        "the packaged manifest inherits nothing:\n{manifest}"
    );
    dir
}

#[test]
fn the_template_builds_outside_the_workspace_and_an_unchanged_host_runs_it() {
    let host_bin = &artifacts().host;
    let before = sha256(host_bin);

    let outside = tempfile::tempdir().unwrap();
    let crate_dir = outside.path().join("my-backend");
    copy_tree(&workspace().join("examples/backend-template"), &crate_dir);
    // plugin-api as a third party gets it: the crate `cargo package` makes, unpacked (no
    // workspace to inherit from).
    let api = packaged_plugin_api().display().to_string();
    edit_file(
        &crate_dir.join("Cargo.toml"),
        "path = \"../../plugin-api\" }",
        &format!("path = {api:?} }}"),
    );
    edit_file(
        &crate_dir.join("Cargo.toml"),
        "path = \"../../plugin-api\", features",
        &format!("path = {api:?}, features"),
    );
    std::fs::copy(workspace().join("Cargo.lock"), crate_dir.join("Cargo.lock")).unwrap();
    // Its own target directory: built exactly as a third party would build it.
    let own_target = artifacts().target.join("template-target");
    let own = own_target.to_str().unwrap();
    cargo_in(&crate_dir, &["test", "--quiet", "--target-dir", own]);
    cargo_in(&crate_dir, &["build", "--quiet", "--target-dir", own]);
    let lib = own_target
        .join(&artifacts().profile)
        .join(dylib_name("backend_template"));

    let plugins = plugin_dir(&[("libbackend_template.so", &lib)]);
    let mut cmd = host(plugins.path());
    cmd.args(["list-backends", "--json"]);
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(v["backends"][0]["alias"], "template");

    let s = script("echo hi\n");
    let mut cmd = host(plugins.path());
    cmd.args(["run", "-b", "template"]).arg(s.path());
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert_eq!(out.stdout, "template backend\nwould run a 8-byte script\n");

    assert_eq!(sha256(host_bin), before, "the host binary was not rebuilt");
}

/// The fake as built against plugin-api 1.`minor`: plugin-api and the fake with every block
/// a later minor appended taken out, under the alias `fake1<minor>`.
fn fake_built_against(minor: u32) -> std::path::PathBuf {
    old_variant(&format!("fake1{minor}"), minor, |_| {})
}

/// A variant workspace `name` of plugin-api 1.`minor` and the fake (alias `name`), with
/// `more` edits; returns the fake's library.
fn old_variant(
    name: &str,
    minor: u32,
    more: impl FnOnce(&blackbox::Variant),
) -> std::path::PathBuf {
    variant_plugin(name, |v| {
        let current = plugin_api::PLUGIN_API_VERSION;
        let old = format!("1.{minor}.0");
        edit_file(
            &v.api.join("Cargo.toml"),
            &format!("version = \"{current}\""),
            &format!("version = \"{old}\""),
        );
        edit_file(
            &v.root.join("Cargo.toml"),
            &format!("version = \"{current}\" }}"),
            &format!("version = \"{old}\" }}"),
        );
        let later: Vec<u32> = (minor + 1..=current_minor()).collect();
        for file in [
            v.api.join("src/ffi.rs"),
            v.api.join("src/sdk/mod.rs"),
            v.api.join("src/sdk/adapter.rs"),
            v.plugin.join("src/lib.rs"),
        ] {
            strip_appended(&file, &later);
        }
        edit_file(
            &v.plugin.join("src/lib.rs"),
            "const ALIAS: &'static str = \"fake\";",
            &format!("const ALIAS: &'static str = \"{name}\";"),
        );
        more(v);
    })
}

#[test]
fn a_plugin_built_against_plugin_api_1_2_runs_in_1_0_and_1_1_hosts() {
    for minor in [0, 1] {
        // A host as 1.`minor` made them (abi_stable's own checks on that version's types),
        // built in a workspace of that version.
        let name = format!("host1{minor}");
        old_variant(&name, minor, |v| {
            copy_tree(
                &workspace().join("tests/fixtures/minihost"),
                &v.root.join("minihost"),
            );
            edit_file(
                &v.root.join("Cargo.toml"),
                &format!("members = [\"api-{name}\", \"{name}\"]"),
                &format!("members = [\"api-{name}\", \"{name}\", \"minihost\"]"),
            );
        });
        let root = artifacts().target.join("fixtures/variants").join(&name);
        let target = artifacts().target.join("fixtures").join(&name);
        let target = target.to_str().unwrap();
        cargo_in(
            &root,
            &["build", "--quiet", "-p", "minihost", "--target-dir", target],
        );
        let minihost = Path::new(target)
            .join(&artifacts().profile)
            .join("minihost");
        let out = run({
            let mut cmd = std::process::Command::new(minihost);
            cmd.arg(&artifacts().fake).arg("ECHO_SCRIPT=true");
            cmd
        });
        assert_eq!(out.code, Some(0), "1.{minor}: {}", out.stderr);
        assert!(
            out.stderr.contains(&format!(
                "loaded fake (built against plugin-api {}) in a host of plugin-api 1.{minor}.0",
                plugin_api::PLUGIN_API_VERSION
            )),
            "{}",
            out.stderr
        );
        assert_eq!(out.stdout, "echo hi\n", "1.{minor}");
        assert!(out.stderr.contains("exit code 0"), "{}", out.stderr);
    }
}

#[test]
fn plugins_built_against_plugin_api_1_0_and_1_1_run_beside_a_1_2_one_in_this_host() {
    let old0 = fake_built_against(0);
    let old1 = fake_built_against(1);
    let plugins = plugin_dir(&[
        ("libfake10.so", &old0),
        ("libfake11.so", &old1),
        ("libfake.so", &artifacts().fake),
    ]);
    let mut cmd = host(plugins.path());
    cmd.args(["list-backends", "--json"]);
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stdout);
    let v: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    let versions: Vec<(String, String)> = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            (
                b["alias"].as_str().unwrap().to_owned(),
                b["plugin_api_version"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        [
            ("fake".to_owned(), plugin_api::PLUGIN_API_VERSION.to_owned()),
            ("fake10".to_owned(), "1.0.0".to_owned()),
            ("fake11".to_owned(), "1.1.0".to_owned()),
        ]
    );

    for alias in ["fake10", "fake11", "fake"] {
        let s = script("");
        let summary = plugins.path().join(format!("{alias}.json"));
        let trace = plugins.path().join(format!("{alias}.trace"));
        let mut cmd = host(plugins.path());
        cmd.args([
            "run",
            "-b",
            alias,
            "-c",
            "LOG_OUTPUT=old or new",
            "-c",
            "EXIT_CODE=300",
        ])
        .arg("--json-summary")
        .arg(&summary)
        .arg("--trace-file")
        .arg(&trace)
        .arg(s.path());
        let out = run(cmd);
        // 300 does not fit an exit status (errored: 255), but travels whole.
        assert_eq!(out.code, Some(255), "{alias}: {}", out.stderr);
        assert_eq!(out.stdout, "old or new", "{alias}");
        let summary = blackbox::read_json(&summary);
        assert_eq!(summary["script_exit_code"], 300, "{alias}: {summary}");
        let steps = summary["steps"].as_array().unwrap();
        if alias == "fake" {
            let messages: Vec<&str> = steps
                .iter()
                .map(|s| s["message"].as_str().unwrap())
                .collect();
            assert_eq!(
                messages,
                ["starting a fake instance", "fake instance started"],
                "{summary}"
            );
            assert_eq!(summary["image_name"], "fake");
            let trace = std::fs::read_to_string(&trace).unwrap();
            assert!(
                trace.starts_with("fake trace\nuploaded: true\n"),
                "{trace:?}"
            );
        } else {
            // What 1.2 appended is answered by the host for the older plugins.
            assert!(steps.is_empty(), "{alias}: {summary}");
            assert_eq!(summary["image_name"], "", "{alias}");
            assert_eq!(summary["warmed"], false, "{alias}");
            assert!(!trace.exists(), "{alias}");
            assert!(
                out.stderr.contains("no trace saved"),
                "{alias}: {}",
                out.stderr
            );
        }
    }

    // What 1.1 appended is answered by the host for the 1.0 plugin.
    let mut cmd = host(plugins.path());
    cmd.args(["reap", "-b", "fake10"]);
    let out = run(cmd);
    assert_eq!(out.code, Some(69), "{}", out.stderr);
    assert!(
        out.stderr
            .contains("built against plugin-api 1.0, which has no reap"),
        "{}",
        out.stderr
    );
    let mut cmd = host(plugins.path());
    cmd.args(["reap", "-b", "fake11"]);
    assert_eq!(run(cmd).code, Some(0));
}

/// Removes every block between `---- appended in plugin-api 1.M ----` and `---- end of 1.M
/// ----` (inclusive) for each M of `minors`; panics if the file has none of them.
fn strip_appended(path: &Path, minors: &[u32]) {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    let mut inside = false;
    let mut found = false;
    for line in text.lines() {
        let starts = minors
            .iter()
            .any(|m| line.contains(&format!("---- appended in plugin-api 1.{m} ----")));
        let ends = minors
            .iter()
            .any(|m| line.contains(&format!("---- end of 1.{m} ----")));
        if starts {
            inside = true;
            found = true;
        } else if ends {
            inside = false;
        } else if !inside {
            out.push(line);
        }
    }
    assert!(
        found,
        "{} has no block of 1.{minors:?} to strip",
        path.display()
    );
    std::fs::write(path, out.join("\n") + "\n").unwrap();
}

fn current_minor() -> u32 {
    plugin_api::PLUGIN_API_VERSION
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap()
}
