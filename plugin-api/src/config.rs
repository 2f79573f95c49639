//! [`ProviderConfig`]: the string-to-string configuration a backend is created from.
//!
//! Mirrors the original worker's `config.ProviderConfig`: keys are upper-case, `each` visits
//! them in sorted order, and a config can be read from the environment, where the variable
//! `BACKEND_<ALIAS>_<KEY>` sets `<KEY>` and its value is URL-query-unescaped (`+` is a space,
//! `%2F` is `/`; a value that does not unescape cleanly is kept as written).

use std::collections::BTreeMap;
use std::fmt;

/// The prefix of environment variables that configure backends.
pub const ENV_PREFIX: &str = "BACKEND_";

/// Parts of a key that mark its value as secret: [`ProviderConfig`]'s `Display` masks them.
pub const SECRET_KEY_MARKERS: &[&str] = &["PASSWORD", "TOKEN", "SECRET", "KEY", "ACCOUNT_JSON"];

/// A backend's configuration: upper-case keys to string values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProviderConfig {
    map: BTreeMap<String, String>,
}

impl ProviderConfig {
    /// An empty config.
    pub fn new() -> Self {
        Self::default()
    }

    /// A config holding the given pairs; keys are upper-cased.
    pub fn from_map<K, V, I>(pairs: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: Into<String>,
    {
        let mut cfg = Self::new();
        for (k, v) in pairs {
            cfg.set(k.as_ref(), v);
        }
        cfg
    }

    /// The config of backend `alias` from this process's environment (`BACKEND_<ALIAS>_<KEY>`).
    pub fn from_env(alias: &str) -> Self {
        Self::from_env_vars(
            alias,
            std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?))),
        )
    }

    /// The config of backend `alias` from the given variables, as [`ProviderConfig::from_env`]
    /// reads them. An alias's `-` becomes `_` in the prefix, since shells cannot name such
    /// variables.
    pub fn from_env_vars<I, K, V>(alias: &str, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let prefix = env_prefix(alias);
        let mut cfg = Self::new();
        for (name, value) in vars {
            if let Some(key) = name.as_ref().strip_prefix(&prefix) {
                if key.is_empty() {
                    continue;
                }
                let value = value.as_ref();
                let value = query_unescape(value).unwrap_or_else(|| value.to_owned());
                cfg.set(key, value);
            }
        }
        cfg
    }

    /// The value of `key`, or `""` when it is not set (as the original's `Get`).
    pub fn get(&self, key: &str) -> &str {
        self.lookup(key).unwrap_or("")
    }

    /// The value of `key` if it is set (even when set to `""`).
    pub fn lookup(&self, key: &str) -> Option<&str> {
        match self.map.get(key) {
            Some(v) => Some(v.as_str()),
            None if key.bytes().any(|b| b.is_ascii_lowercase()) => {
                self.map.get(&key.to_ascii_uppercase()).map(String::as_str)
            }
            None => None,
        }
    }

    /// Sets `key` (upper-cased) to `value`.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        self.map.insert(key.to_ascii_uppercase(), value.into());
    }

    /// Removes `key`.
    pub fn unset(&mut self, key: &str) {
        self.map.remove(&key.to_ascii_uppercase());
    }

    /// Whether `key` is present, even with an empty value.
    pub fn is_set(&self, key: &str) -> bool {
        self.lookup(key).is_some()
    }

    /// Visits every key and value in sorted key order.
    pub fn each(&self, mut f: impl FnMut(&str, &str)) {
        for (k, v) in &self.map {
            f(k, v);
        }
    }

    /// Iterates over keys and values in sorted key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// The number of keys.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key is set.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// Copies every key of `other` into `self`, replacing values `self` already has.
    pub fn merge_from(&mut self, other: &ProviderConfig) {
        for (k, v) in &other.map {
            self.map.insert(k.clone(), v.clone());
        }
    }

    /// Whether `key` holds a secret and must be masked when shown.
    pub fn is_secret_key(key: &str) -> bool {
        let upper = key.to_ascii_uppercase();
        SECRET_KEY_MARKERS.iter().any(|m| upper.contains(m))
    }

    /// The value of `key` as it may be shown to a person: secrets become `***`. Values that
    /// hold pairs are masked pair by pair by [`masked_value`], which `Display` uses.
    pub fn display_value<'a>(key: &str, value: &'a str) -> &'a str {
        if Self::is_secret_key(key) && !value.is_empty() {
            "***"
        } else {
            value
        }
    }
}

/// The environment prefix of backend `alias`: `BACKEND_<ALIAS>_`.
pub fn env_prefix(alias: &str) -> String {
    format!(
        "{ENV_PREFIX}{}_",
        alias.to_ascii_uppercase().replace('-', "_")
    )
}

/// The value of `key` as it may be shown to a person: the whole value masked when the key
/// looks secret, and inside a list of pairs (`ENV=GITHUB_TOKEN=abc,A=1`) each pair whose
/// name looks secret masked (`GITHUB_TOKEN=***,A=1`).
pub fn masked_value<'a>(key: &str, value: &'a str) -> std::borrow::Cow<'a, str> {
    use std::borrow::Cow;
    if ProviderConfig::is_secret_key(key) && !value.is_empty() {
        return Cow::Borrowed("***");
    }
    if !value.contains('=') {
        return Cow::Borrowed(value);
    }
    let mut changed = false;
    let pairs: Vec<String> = value
        .split(',')
        .map(|pair| match pair.split_once('=') {
            Some((name, v)) if ProviderConfig::is_secret_key(name.trim()) && !v.is_empty() => {
                changed = true;
                format!("{name}=***")
            }
            _ => pair.to_owned(),
        })
        .collect();
    if changed {
        Cow::Owned(pairs.join(","))
    } else {
        Cow::Borrowed(value)
    }
}

/// Shows `KEY=value` pairs in sorted order with secrets masked (see [`masked_value`]).
impl fmt::Display for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        for (k, v) in &self.map {
            if !first {
                f.write_str(" ")?;
            }
            first = false;
            write!(f, "{k}={:?}", masked_value(k, v))?;
        }
        Ok(())
    }
}

impl fmt::Debug for ProviderConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ProviderConfig {{ {self} }}")
    }
}

/// Go's `url.QueryUnescape`: `+` is a space, `%XX` a byte. `None` on a malformed escape or a
/// result that is not UTF-8.
pub fn query_unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hi = hex(*bytes.get(i + 1)?)?;
                let lo = hex(*bytes.get(i + 2)?)?;
                out.push(hi << 4 | lo);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn get_set_unset_is_set_follow_the_original() {
        let mut cfg = ProviderConfig::new();
        assert_eq!(cfg.get("FOO"), "");
        assert!(!cfg.is_set("FOO"));
        cfg.set("foo", "");
        assert!(cfg.is_set("FOO"), "an empty value is still set");
        cfg.set("FOO", "bar");
        assert_eq!(cfg.get("foo"), "bar");
        cfg.unset("Foo");
        assert!(!cfg.is_set("FOO"));
    }

    #[test]
    fn each_visits_keys_in_sorted_order() {
        let cfg = ProviderConfig::from_map([("b", "2"), ("c", "3"), ("a", "1")]);
        let mut seen = Vec::new();
        cfg.each(|k, v| seen.push(format!("{k}={v}")));
        assert_eq!(seen, ["A=1", "B=2", "C=3"]);
    }

    #[test]
    fn environment_variables_with_the_prefix_are_read_and_unescaped() {
        let vars = [
            ("BACKEND_FAKE_LOG_OUTPUT", "hello+world%21"),
            ("BACKEND_FAKE_BAD", "100%"),
            ("BACKEND_FAKEX_OTHER", "no"),
            ("BACKEND_LOCAL_SHELL", "zsh"),
            ("BACKEND_FAKE_", "ignored"),
            ("PATH", "/bin"),
        ];
        let cfg = ProviderConfig::from_env_vars("fake", vars);
        assert_eq!(cfg.get("LOG_OUTPUT"), "hello world!");
        assert_eq!(
            cfg.get("BAD"),
            "100%",
            "a malformed escape keeps the raw value"
        );
        assert_eq!(cfg.len(), 2, "{cfg:?}");
        let cfg = ProviderConfig::from_env_vars("my-cloud", [("BACKEND_MY_CLOUD_ZONE", "a")]);
        assert_eq!(cfg.get("ZONE"), "a");
    }

    #[test]
    fn secrets_inside_lists_of_pairs_are_masked_too() {
        let cfg = ProviderConfig::from_map([("ENV", "GITHUB_TOKEN=abc,A=1,DB_PASSWORD=p w")]);
        assert_eq!(
            cfg.to_string(),
            r#"ENV="GITHUB_TOKEN=***,A=1,DB_PASSWORD=***""#
        );
        assert_eq!(masked_value("ENV", "A=1,B=2"), "A=1,B=2");
    }

    #[test]
    fn secrets_are_masked_when_shown() {
        let cfg = ProviderConfig::from_map([
            ("API_TOKEN", "t0ps3cret"),
            ("PASSWORD", "hunter2"),
            ("ENDPOINT", "unix:///x"),
            ("ACCOUNT_JSON", "{}"),
        ]);
        let shown = cfg.to_string();
        assert!(
            !shown.contains("t0ps3cret") && !shown.contains("hunter2"),
            "{shown}"
        );
        assert!(shown.contains("ENDPOINT=\"unix:///x\""), "{shown}");
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn lists_paths_programs_and_choices_name_the_key_and_value_at_fault() {
        let dir = std::env::temp_dir();
        let file = dir.join(format!("plugin-api-config-test-{}", std::process::id()));
        std::fs::write(&file, "x").unwrap();
        let cfg = ProviderConfig::from_map([
            ("HOSTS", " a, b ,,c "),
            ("DIR", dir.to_str().unwrap()),
            ("FILE", file.to_str().unwrap()),
            ("MISSING", "/no/such/thing"),
            ("SHELL", "sh"),
            ("NOT_A_PROGRAM", file.to_str().unwrap()),
            ("MODE", "tag"),
            ("BAD_MODE", "api"),
        ]);
        assert_eq!(cfg.list("HOSTS"), ["a", "b", "c"]);
        assert!(cfg.list("UNSET").is_empty());
        assert_eq!(cfg.existing_dir("DIR").unwrap(), Some(dir.clone()));
        assert_eq!(cfg.existing_file("FILE").unwrap(), Some(file.clone()));
        assert_eq!(cfg.existing_file("UNSET").unwrap(), None);
        let e = cfg.existing_dir("FILE").unwrap_err();
        assert!(
            e.message().contains("FILE") && e.message().contains("not a directory"),
            "{e}"
        );
        let e = cfg.existing_file("MISSING").unwrap_err();
        assert!(e.message().contains("/no/such/thing"), "{e}");
        assert!(cfg
            .program("SHELL")
            .unwrap()
            .is_some_and(|p| p.ends_with("sh")));
        let e = cfg.program("NOT_A_PROGRAM").unwrap_err();
        assert!(e.message().contains("not an executable file"), "{e}");
        assert_eq!(cfg.one_of("MODE", &["tag", "env"]).unwrap(), Some("tag"));
        let e = cfg.one_of("BAD_MODE", &["tag", "env"]).unwrap_err();
        assert!(e.message().contains("expected one of tag, env"), "{e}");
        let _ = std::fs::remove_file(&file);
    }

    #[test]
    fn query_unescape_matches_go() {
        assert_eq!(query_unescape("a%20b+c").as_deref(), Some("a b c"));
        assert_eq!(query_unescape("%zz"), None);
        assert_eq!(query_unescape("%4"), None);
        assert_eq!(query_unescape("%C3%A9").as_deref(), Some("é"));
        assert_eq!(query_unescape("%FF"), None);
    }
}

/// Typed getters: each names the key and the value at fault when the value does not parse.
impl ProviderConfig {
    /// `key` as a duration in Go's notation (`300ms`, `1.5h`, `2m30s`), if set and non-empty.
    pub fn duration(&self, key: &str) -> Result<Option<std::time::Duration>, crate::BackendError> {
        self.parsed(key, parse_duration)
    }

    /// `key` as a boolean (`1 t T TRUE true True`, `0 f F FALSE false False`), if set.
    pub fn bool(&self, key: &str) -> Result<Option<bool>, crate::BackendError> {
        self.parsed(key, parse_bool)
    }

    /// `key` as a byte count (`1048576`, `64KiB`, `4G`: units are powers of 1024), if set.
    pub fn byte_size(&self, key: &str) -> Result<Option<u64>, crate::BackendError> {
        self.parsed(key, parse_byte_size)
    }

    /// `key` as a list: the items between commas, trimmed, empty ones left out (an unset or
    /// empty key is an empty list).
    pub fn list(&self, key: &str) -> Vec<String> {
        self.lookup(key)
            .unwrap_or_default()
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }

    /// `key` as a path to an existing regular file (symlinks followed), if set and
    /// non-empty.
    pub fn existing_file(
        &self,
        key: &str,
    ) -> Result<Option<std::path::PathBuf>, crate::BackendError> {
        self.parsed(key, |s| existing(s, true))
    }

    /// `key` as a path to an existing directory (symlinks followed), if set and non-empty.
    pub fn existing_dir(
        &self,
        key: &str,
    ) -> Result<Option<std::path::PathBuf>, crate::BackendError> {
        self.parsed(key, |s| existing(s, false))
    }

    /// `key` as a program to run: a path (with a `/`) to an executable file, or a name found
    /// on `PATH`; the path it was found at. If set and non-empty.
    pub fn program(&self, key: &str) -> Result<Option<std::path::PathBuf>, crate::BackendError> {
        self.parsed(key, find_program)
    }

    /// `key` as one of `choices` (compared as written), if set and non-empty.
    pub fn one_of<'c>(
        &self,
        key: &str,
        choices: &[&'c str],
    ) -> Result<Option<&'c str>, crate::BackendError> {
        self.parsed(key, |s| {
            choices
                .iter()
                .find(|c| **c == s)
                .copied()
                .ok_or_else(|| format!("expected one of {}", choices.join(", ")))
        })
    }

    /// `key` parsed with `FromStr`, if set and non-empty.
    pub fn parse<T>(&self, key: &str) -> Result<Option<T>, crate::BackendError>
    where
        T: std::str::FromStr,
        T::Err: fmt::Display,
    {
        self.parsed(key, |s| s.parse::<T>().map_err(|e| e.to_string()))
    }

    fn parsed<T>(
        &self,
        key: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, crate::BackendError> {
        match self.lookup(key) {
            None | Some("") => Ok(None),
            Some(v) => parse(v.trim()).map(Some).map_err(|why| {
                crate::BackendError::invalid_config(&key.to_ascii_uppercase(), v, why)
            }),
        }
    }
}

/// `s` as an existing regular file (`file`) or directory.
fn existing(s: &str, file: bool) -> Result<std::path::PathBuf, String> {
    let path = std::path::PathBuf::from(s);
    match std::fs::metadata(&path) {
        Ok(m) if file && m.is_file() => Ok(path),
        Ok(m) if !file && m.is_dir() => Ok(path),
        Ok(_) if file => Err("not a regular file".into()),
        Ok(_) => Err("not a directory".into()),
        Err(e) => Err(format!("cannot use it: {e}")),
    }
}

/// `s` as a program: a path with a `/` that is an executable file, or a name on `PATH`.
fn find_program(s: &str) -> Result<std::path::PathBuf, String> {
    let executable = |p: &std::path::Path| {
        std::fs::metadata(p).is_ok_and(|m| {
            #[cfg(unix)]
            let runs = {
                use std::os::unix::fs::PermissionsExt as _;
                m.permissions().mode() & 0o111 != 0
            };
            #[cfg(not(unix))]
            let runs = true;
            m.is_file() && runs
        })
    };
    if s.contains('/') {
        let p = std::path::PathBuf::from(s);
        return if executable(&p) {
            Ok(p)
        } else {
            Err("not an executable file".into())
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(s))
        .find(|p| executable(p))
        .ok_or_else(|| "not found on PATH".to_owned())
}

/// Parses a duration the way Go's `time.ParseDuration` does: a sequence of decimal numbers
/// with units `ns`, `us` (or `µs`), `ms`, `s`, `m`, `h`, e.g. `1h2m3.5s`. `0` needs no unit.
/// Negative durations are refused.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(std::time::Duration::ZERO);
    }
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if s.starts_with('-') {
        return Err("negative durations are not allowed".into());
    }
    let mut rest = s.strip_prefix('+').unwrap_or(s);
    let mut total_ns: f64 = 0.0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." {
            return Err(format!("expected a number in {s:?}"));
        }
        let value: f64 = num
            .parse()
            .map_err(|_| format!("bad number {num:?} in {s:?}"))?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            "" => {
                return Err(format!(
                    "missing unit in duration {s:?} (use ns, us, ms, s, m or h)"
                ))
            }
            other => {
                return Err(format!(
                    "unknown unit {other:?} in duration {s:?} (use ns, us, ms, s, m or h)"
                ))
            }
        };
        total_ns += value * scale;
        rest = tail;
    }
    if !total_ns.is_finite() || total_ns > u64::MAX as f64 {
        return Err(format!("duration {s:?} is too large"));
    }
    Ok(std::time::Duration::from_nanos(total_ns.round() as u64))
}

/// Parses a boolean as Go's `strconv.ParseBool`.
pub fn parse_bool(s: &str) -> Result<bool, String> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

/// Parses a byte count: a whole number with an optional unit `B`, `K`/`KB`/`KiB`, `M`/`MB`/
/// `MiB`, `G`/`GB`/`GiB`, `T`/`TB`/`TiB` (case-insensitive, all powers of 1024, as Docker's
/// memory sizes).
pub fn parse_byte_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("expected a whole number of bytes, e.g. 512, 64KiB, 4G; got {s:?}"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        other => {
            return Err(format!(
                "unknown size unit {other:?} (use B, KiB, MiB, GiB or TiB)"
            ))
        }
    };
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| format!("size {s:?} is too large"))
}

#[cfg(test)]
mod parse_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations_parse_like_go() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_duration("1.5h"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("2m30s"), Ok(Duration::from_secs(150)));
        assert_eq!(parse_duration("1us"), Ok(Duration::from_micros(1)));
        assert_eq!(parse_duration("3µs"), Ok(Duration::from_micros(3)));
        assert!(parse_duration("10").unwrap_err().contains("missing unit"));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes_and_bools_parse() {
        assert_eq!(parse_byte_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_byte_size("4G"), Ok(4 << 30));
        assert_eq!(parse_byte_size("99MB"), Ok(99 << 20));
        assert_eq!(parse_byte_size("123"), Ok(123));
        assert!(parse_byte_size("lots").is_err());
        assert!(parse_byte_size("1XB").is_err());
        assert_eq!(parse_bool("True"), Ok(true));
        assert!(parse_bool("yes").is_err());
    }

    #[test]
    fn typed_getters_name_the_key_and_value() {
        let cfg = ProviderConfig::from_map([("RUN_SLEEP", "soon"), ("EMPTY", "")]);
        let err = cfg.duration("run_sleep").unwrap_err();
        assert_eq!(err.kind(), crate::ErrorKind::INVALID_CONFIG);
        assert!(
            err.message().contains("RUN_SLEEP") && err.message().contains("\"soon\""),
            "{err}"
        );
        assert_eq!(cfg.duration("EMPTY"), Ok(None));
        assert_eq!(cfg.duration("MISSING"), Ok(None));
    }
}
