//! Loading never crashes the host: a damaged copy of a real plugin, or a plugin that dies
//! while it is opened, is rejected by a probe in a child process, with what happened, and
//! every command goes on with the other files.

use std::path::Path;

use blackbox::{artifacts, fixture, host, plugin_dir, run, script};

/// The (offset, size) of ELF64 section `name` in `bytes`.
fn section(bytes: &[u8], name: &str) -> (usize, usize) {
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().unwrap()) as usize;
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().unwrap()) as usize;
    let (shoff, shentsize, shnum, shstrndx) =
        (u64_at(0x28), u16_at(0x3A), u16_at(0x3C), u16_at(0x3E));
    let header = |i: usize| shoff + i * shentsize;
    let names = u64_at(header(shstrndx) + 0x18);
    (0..shnum)
        .find(|&i| {
            let start = names + u32_at(header(i));
            let end = start + bytes[start..].iter().position(|b| *b == 0).unwrap();
            &bytes[start..end] == name.as_bytes()
        })
        .map(|i| (u64_at(header(i) + 0x18), u64_at(header(i) + 0x20)))
        .unwrap_or_else(|| panic!("no section {name}"))
}

/// The fake backend's library, damaged as `how` says.
fn damaged_fake(how: &str) -> Vec<u8> {
    let mut b = std::fs::read(&artifacts().fake).unwrap();
    match how {
        // Relocation entries with garbage types: ld.so asserts and exits 127.
        "flipped .rela.dyn" => {
            let (off, size) = section(&b, ".rela.dyn");
            b[off..off + size.min(4096)]
                .iter_mut()
                .for_each(|x| *x ^= 0xA5);
        }
        // The root module's statics (abi_stable's header, its layouts) made garbage.
        "flipped .data.rel.ro" => {
            let (off, size) = section(&b, ".data.rel.ro");
            b[off..off + size.min(4096)]
                .iter_mut()
                .for_each(|x| *x ^= 0xA5);
        }
        "zeroed .data.rel.ro" => {
            let (off, size) = section(&b, ".data.rel.ro");
            b[off..off + size].iter_mut().for_each(|x| *x = 0);
        }
        // The dynamic section claims more relocations than the table holds: ld.so reads
        // on past the table's end into whatever follows.
        "truncated relocations" => {
            let (off, size) = section(&b, ".dynamic");
            for entry in (off..off + size).step_by(16) {
                let tag = u64::from_le_bytes(b[entry..entry + 8].try_into().unwrap());
                let val = u64::from_le_bytes(b[entry + 8..entry + 16].try_into().unwrap());
                // DT_RELASZ grows by 4096 entries; DT_RELACOUNT (relative ones) too.
                let more = match tag {
                    8 => 4096 * 24,
                    0x6fff_fff9 => 4096,
                    _ => continue,
                };
                b[entry + 8..entry + 16].copy_from_slice(&(val + more).to_le_bytes());
            }
        }
        other => panic!("unknown damage {other}"),
    }
    b
}

/// A plugin directory with the local backend and `bad` as `libbad.so`.
fn dir_with_bad(bad: &[u8]) -> tempfile::TempDir {
    let dir = plugin_dir(&[("liblocal.so", &artifacts().local)]);
    std::fs::write(dir.path().join("libbad.so"), bad).unwrap();
    dir
}

fn private_cache() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

#[test]
fn a_damaged_copy_of_a_real_plugin_is_rejected_while_the_local_backend_runs() {
    let cache = private_cache();
    for how in [
        "flipped .rela.dyn",
        "flipped .data.rel.ro",
        "zeroed .data.rel.ro",
        "truncated relocations",
    ] {
        let dir = dir_with_bad(&damaged_fake(how));

        let mut cmd = host(dir.path());
        cmd.env("HOST_PROBE_CACHE", cache.path())
            .arg("list-backends");
        let out = run(cmd);
        assert_eq!(out.code, Some(3), "{how}: some rejected:\n{}", out.stderr);
        assert!(out.stdout.contains("local"), "{how}:\n{}", out.stdout);
        let rejected = out
            .stdout
            .lines()
            .chain(out.stderr.lines())
            .find(|l| l.contains("libbad.so:"))
            .unwrap_or_else(|| {
                panic!(
                    "{how}: no line for libbad.so:\n{}{}",
                    out.stdout, out.stderr
                )
            })
            .to_owned();
        // Without the probe each of these ends the host itself (exit 127, 1, SIGABRT).
        assert!(
            rejected.contains("crashed while loading"),
            "{how}: {rejected}"
        );

        let s = script("echo ran on local\n");
        let mut cmd = host(dir.path());
        cmd.env("HOST_PROBE_CACHE", cache.path())
            .args(["run", "-b", "local"])
            .arg(s.path());
        let out = run(cmd);
        assert_eq!(out.code, Some(0), "{how}: {}", out.stderr);
        assert_eq!(out.stdout, "ran on local\n", "{how}");

        let mut cmd = host(dir.path());
        cmd.env("HOST_PROBE_CACHE", cache.path())
            .arg("inspect")
            .arg(dir.path().join("libbad.so"));
        let out = run(cmd);
        assert_eq!(out.code, Some(4), "{how}: not loadable:\n{}", out.stdout);
    }
}

/// `list-backends` over fake and the panicky fixture, with `env` set.
fn list_with_crashing_fixture(env: &[(&str, &str)], cache: &Path) -> blackbox::Ran {
    let dir = plugin_dir(&[
        ("libfake.so", &artifacts().fake),
        ("libpanicky.so", &fixture("panicky")),
    ]);
    let mut cmd = host(dir.path());
    cmd.env("HOST_PROBE_CACHE", cache).arg("list-backends");
    cmd.envs(env.iter().copied());
    run(cmd)
}

#[test]
fn a_plugin_that_dies_while_it_is_opened_is_rejected_naming_how_and_the_host_lives() {
    let cache = private_cache();
    for (kind, said) in [
        ("segv", "crashed while loading: SIGSEGV"),
        ("abort", "crashed while loading: SIGABRT"),
        ("exit", "crashed while loading: exit status 3"),
        (
            "hang",
            "crashed while loading: no answer within 10s (killed)",
        ),
    ] {
        let out =
            list_with_crashing_fixture(&[("CRASH_IN", "load"), ("CRASH_KIND", kind)], cache.path());
        assert_eq!(out.code, Some(3), "{kind}:\n{}", out.stderr);
        assert!(out.stdout.contains("fake"), "{kind}:\n{}", out.stdout);
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(
            all.contains(&format!("libpanicky.so: {said}")),
            "{kind}: wanted {said:?} in:\n{all}"
        );
    }
    // A crash is not cached (it may depend on the environment, as here, or on chance): the
    // same file, in the same cache, loads once nothing makes it crash.
    let out = list_with_crashing_fixture(&[], cache.path());
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("panicky"));
}

#[test]
fn the_probe_cache_answers_the_next_start_and_a_changed_file_is_probed_again() {
    let cache = private_cache();
    let dir = plugin_dir(&[("libfake.so", &artifacts().fake)]);
    let list = || {
        let mut cmd = host(dir.path());
        cmd.env("HOST_PROBE_CACHE", cache.path())
            .args(["-vv", "list-backends"]);
        run(cmd)
    };
    let first = list();
    assert_eq!(first.code, Some(0), "{}", first.stderr);
    assert!(first.stderr.contains("probed: Loads"), "{}", first.stderr);
    let second = list();
    assert!(second.stderr.contains("cached: Loads"), "{}", second.stderr);
    assert!(!second.stderr.contains("probed:"), "{}", second.stderr);

    // A new file under the same name (a new inode, size and times): probed again.
    let path = dir.path().join("libfake.so");
    std::fs::remove_file(&path).unwrap();
    std::fs::copy(&artifacts().fake, &path).unwrap();
    let third = list();
    assert!(third.stderr.contains("probed: Loads"), "{}", third.stderr);

    // Entries are private to their owner.
    for entry in std::fs::read_dir(cache.path()).unwrap() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = entry.unwrap().metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "mode {mode:o}");
    }
}

#[test]
fn a_cache_directory_others_can_write_is_not_used_and_loading_still_works() {
    use std::os::unix::fs::PermissionsExt as _;
    let cache = private_cache();
    std::fs::set_permissions(cache.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    let dir = plugin_dir(&[("libfake.so", &artifacts().fake)]);
    let mut cmd = host(dir.path());
    cmd.env("HOST_PROBE_CACHE", cache.path())
        .arg("list-backends");
    let out = run(cmd);
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(
        out.stderr.contains("the probe cache is not used")
            && out.stderr.contains("writable by group or others"),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0);
}
