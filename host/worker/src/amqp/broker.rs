//! How a worker reaches its broker: the URL read as amqp091-go and pika read it, TLS for
//! `amqps://` with the original worker's settings, client certificates and SASL EXTERNAL,
//! the heartbeat, and failures that say what failed.
//!
//! Trust, as the original (travis-ci/worker `cli.go` with amqp091-go): a CA certificate given
//! as PEM text or a file *replaces* the system's roots; without one, the system's roots are
//! used; "insecure" (no verification at all) applies only when no CA is given. The server's
//! name is checked against the host of the URL.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use lapin::uri::{AMQPScheme, AMQPUri, SASLMechanism};
use lapin::{Connection, ConnectionProperties};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// How long a connection may take, from the TCP connect to the end of the AMQP handshake.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// The heartbeat the worker asks for unless the URL says (the original's default).
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);

/// TLS settings for an `amqps://` broker.
#[derive(Clone, Debug, Default)]
pub struct TlsSettings {
    /// CA certificates as PEM text (the original's `AMQP_TLS_CERT`).
    pub ca_pem: Option<String>,
    /// A file of CA certificates in PEM (the original's `AMQP_TLS_CERT_PATH`).
    pub ca_path: Option<PathBuf>,
    /// Skip verifying the broker's certificate (only when no CA is given).
    pub insecure: bool,
    /// The worker's own certificate chain (PEM), for brokers that ask for one.
    pub client_cert: Option<PathBuf>,
    /// The private key of `client_cert` (PEM: PKCS#8, PKCS#1 or SEC1).
    pub client_key: Option<PathBuf>,
    /// These settings are the logs broker's (`--logs-amqp-uri`): messages name its CA
    /// flags, `--logs-amqp-tls-cert` and `--logs-amqp-tls-cert-path`.
    pub for_logs: bool,
}

impl TlsSettings {
    /// The flag of the CA as PEM text, or with `path` of the CA file, for messages.
    fn ca_flag(&self, path: bool) -> &'static str {
        match (self.for_logs, path) {
            (false, false) => "--amqp-tls-cert",
            (false, true) => "--amqp-tls-cert-path",
            (true, false) => "--logs-amqp-tls-cert",
            (true, true) => "--logs-amqp-tls-cert-path",
        }
    }

    fn any(&self) -> bool {
        self.ca_pem.is_some()
            || self.ca_path.is_some()
            || self.insecure
            || self.client_cert.is_some()
            || self.client_key.is_some()
    }
}

/// What is wrong with a broker's settings.
#[derive(Debug)]
pub enum BrokerError {
    /// The URL.
    Url(String),
    /// The TLS settings (a file that cannot be read, a PEM without a certificate...).
    Tls(String),
}

impl std::fmt::Display for BrokerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Url(m) | Self::Tls(m) => f.write_str(m),
        }
    }
}

/// A broker as the worker reaches it: checked once, at start, then connected to as often as
/// needed.
#[derive(Clone)]
pub struct Broker {
    uri: AMQPUri,
    masked: String,
    tls: Option<tcp_stream::RustlsConnector>,
    /// A client certificate is given.
    client_cert: bool,
    /// The flag of the CA file, for messages.
    ca_path_flag: &'static str,
    warnings: Vec<String>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("url", &self.masked)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Reads `url` (`amqp://` or `amqps://`) and, for `amqps://`, builds the TLS client from
    /// `tls`. `heartbeat` is asked for unless the URL has `?heartbeat=`; 0 leaves it to the
    /// broker.
    pub fn new(url: &str, tls: &TlsSettings, heartbeat: Duration) -> Result<Self, BrokerError> {
        let masked = masked_url(url);
        let tls_settings_client_cert = tls.client_cert.is_some();
        let ca_path_flag = tls.ca_flag(true);
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("amqp" | "amqps")) {
            return Err(BrokerError::Url(format!(
                "{masked} is not an amqp:// or amqps:// URL"
            )));
        }
        let mut uri: AMQPUri = url.parse().map_err(|e| {
            let hint = if userinfo(url).is_some_and(|u| u.contains(['/', '?', '#'])) {
                " (percent-encode / ? # @ in a user or password: %2F %3F %23 %40)"
            } else {
                ""
            };
            BrokerError::Url(format!("{masked}: {e}{hint}"))
        })?;
        // The parser reads no host from an IPv6 literal and says `localhost`: the address is
        // taken from the URL itself.
        if let Some(v6) = ipv6_host(url) {
            uri.authority.host = v6;
        }
        // `amqp://h/` (a bare slash) is the default vhost, as amqp091-go and pika read it
        // (the parser reads an empty vhost, which no broker has).
        if uri.vhost.is_empty() {
            uri.vhost = "/".into();
        }
        let mut warnings = Vec::new();
        for key in query_keys(url) {
            if !KNOWN_QUERY_KEYS.contains(&key.as_str()) {
                warnings.push(format!(
                    "{masked}: the URL parameter {key:?} is not one this worker knows ({}); it is not used",
                    KNOWN_QUERY_KEYS.join(", ")
                ));
            }
        }
        if uri.query.connection_timeout == Some(0) {
            return Err(BrokerError::Url(format!(
                "{masked}: connection_timeout=0 would fail every connection (it is in milliseconds)"
            )));
        }
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(u16::try_from(heartbeat.as_secs()).unwrap_or(u16::MAX));
        }
        let external = uri.query.auth_mechanism == Some(SASLMechanism::External);
        let tls = match uri.scheme {
            AMQPScheme::AMQP => {
                if external {
                    return Err(BrokerError::Url(format!(
                        "{masked}: auth_mechanism=external takes the user from a TLS client certificate; use amqps://"
                    )));
                }
                if tls.any() {
                    warnings.push(format!(
                        "TLS settings are given but {masked} is plain amqp://: they are not used (use amqps:// for TLS)"
                    ));
                }
                None
            }
            AMQPScheme::AMQPS => {
                if external && tls.client_cert.is_none() {
                    return Err(BrokerError::Tls(format!(
                        "{masked}: auth_mechanism=external needs a client certificate (--amqp-tls-client-cert and --amqp-tls-client-key)"
                    )));
                }
                let (config, warning) = client_config(tls)?;
                warnings.extend(warning);
                Some(tcp_stream::RustlsConnector::from(Arc::new(config)))
            }
        };
        Ok(Self {
            uri,
            masked,
            client_cert: tls_settings_client_cert,
            ca_path_flag,
            tls,
            warnings,
        })
    }

    /// The vhost, decoded (`/` by default).
    pub fn vhost(&self) -> &str {
        &self.uri.vhost
    }

    /// The URL with its password masked, for printing.
    pub fn masked(&self) -> &str {
        &self.masked
    }

    /// Whether the link is TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// What the operator must hear at every start (verification turned off, settings that
    /// are not used).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// Opens a connection: TCP, TLS for `amqps://`, the AMQP handshake, within
    /// `CONNECT_TIMEOUT` (30 s). The error says what failed, in words.
    pub async fn connect(&self) -> std::io::Result<Connection> {
        let runtime = lapin::runtime::default_runtime()
            .map_err(|e| std::io::Error::other(format!("no async runtime: {e}")))?;
        let tls = self.tls.clone();
        let props = ConnectionProperties::default().with_connection_name("host-worker".into());
        let attempt = Connection::connector(
            self.uri.clone(),
            runtime,
            async move |uri: AMQPUri, runtime| {
                let host = uri.authority.host.clone();
                let addrs = runtime.to_socket_addrs((host.clone(), uri.authority.port));
                let stream = lapin::tcp::AsyncTcpStream::connect(&runtime, addrs).await?;
                Ok(match &tls {
                    Some(connector) => stream.into_rustls(connector, &host).await?,
                    None => stream,
                })
            },
            props,
        );
        let limit = self
            .uri
            .query
            .connection_timeout
            .map_or(CONNECT_TIMEOUT, Duration::from_millis);
        match tokio::time::timeout(limit, attempt).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(std::io::Error::other(format!(
                "cannot connect to {}: {}",
                self.masked,
                self.explain(&e)
            ))),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "cannot connect to {}: no answer within {}{}",
                    self.masked,
                    host::text::fmt_duration(limit),
                    if self.tls.is_some() {
                        ""
                    } else {
                        " (if the port is a TLS one, use amqps://)"
                    }
                ),
            )),
        }
    }

    /// Words for a failed connection: the TLS finding when there is one, else lapin's.
    fn explain(&self, e: &lapin::Error) -> String {
        let host = &self.uri.authority.host;
        if let Some(tls) = rustls_error(e) {
            return explain_tls(
                tls,
                host,
                self.uri.authority.port,
                self.client_cert,
                self.ca_path_flag,
            );
        }
        let text = e.to_string();
        // Refusals the broker states in AMQP: the login, the vhost.
        if text.contains("ACCESS_REFUSED") {
            return format!(
                "the broker refused the login (check the user and password in the URL, or the auth_mechanism): {text}"
            );
        }
        if text.contains("NOT_ALLOWED") {
            return format!(
                "the broker refused the vhost {:?} (it does not exist, or the user may not use it): {text}",
                self.uri.vhost
            );
        }
        if self.tls.is_some() {
            // TLS 1.3 ends the handshake before the broker has checked a client
            // certificate: its refusal may arrive as a reset instead of an alert.
            if self.client_cert {
                if let lapin::ErrorKind::IOError(io) = e.kind() {
                    use std::io::ErrorKind as K;
                    if matches!(io.kind(), K::ConnectionReset | K::UnexpectedEof) {
                        return format!(
                            "TLS: the broker hung up right after the handshake: it most likely refused this worker's client certificate; check --amqp-tls-client-cert and that the broker trusts its CA ({text})"
                        );
                    }
                }
            }
            return text;
        }
        // Plain AMQP spoken to a TLS port: the broker's TLS side reads our protocol header
        // as a broken handshake and hangs up, before any AMQP frame comes back.
        if let lapin::ErrorKind::IOError(io) = e.kind() {
            use std::io::ErrorKind as K;
            if matches!(
                io.kind(),
                K::UnexpectedEof | K::ConnectionReset | K::ConnectionAborted | K::BrokenPipe
            ) {
                return format!(
                    "the broker hung up before the AMQP handshake: if port {} is a TLS port, use amqps:// ({text})",
                    self.uri.authority.port
                );
            }
        }
        if text.contains("parse") || text.contains("frame") {
            return format!(
                "the broker's answer is not AMQP: if port {} is a TLS port, use amqps:// ({text})",
                self.uri.authority.port
            );
        }
        text
    }
}

/// The rustls error somewhere in `e`'s sources, if any.
fn rustls_error(e: &lapin::Error) -> Option<&rustls::Error> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if let Some(t) = s.downcast_ref::<rustls::Error>() {
            return Some(t);
        }
        let inner = s
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>());
        if inner.is_some() {
            return inner;
        }
        source = s.source();
    }
    None
}

/// What a TLS failure means for the operator.
fn explain_tls(
    e: &rustls::Error,
    host: &str,
    port: u16,
    client_cert: bool,
    ca_path_flag: &str,
) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer => format!(
                "TLS: the broker's certificate is signed by a CA this worker does not trust (unknown issuer); give the broker's CA with {ca_path_flag} ({e})"
            ),
            C::NotValidForName | C::NotValidForNameContext { .. } => format!(
                "TLS: the broker's certificate is not valid for the name {host:?} in the URL; connect by a name the certificate holds ({e})"
            ),
            C::Expired | C::ExpiredContext { .. } => {
                format!("TLS: the broker's certificate has expired ({e})")
            }
            C::NotValidYet | C::NotValidYetContext { .. } => format!(
                "TLS: the broker's certificate is not valid yet (is this machine's clock right?) ({e})"
            ),
            C::Revoked => format!("TLS: the broker's certificate is revoked ({e})"),
            _ => format!("TLS: the broker's certificate is refused: {e}"),
        },
        E::AlertReceived(A::CertificateRequired) if !client_cert => "TLS: the broker requires a client certificate: give one with --amqp-tls-client-cert and --amqp-tls-client-key".to_owned(),
        E::AlertReceived(A::HandshakeFailure) => format!(
            "TLS: the broker refused the handshake ({e}): its TLS versions or ciphers, or {}",
            if client_cert { "this worker's client certificate (is it made for client authentication?)" } else { "a client certificate it requires (--amqp-tls-client-cert)" }
        ),
        E::AlertReceived(
            alert @ (A::BadCertificate
            | A::CertificateRequired
            | A::UnknownCA
            | A::CertificateUnknown
            | A::CertificateExpired
            | A::CertificateRevoked
            | A::UnsupportedCertificate
            | A::AccessDenied),
        ) => format!(
            "TLS: the broker refused this worker's client certificate (alert {alert:?}); check --amqp-tls-client-cert and that the broker trusts its CA"
        ),
        E::InvalidMessage(_) => format!(
            "TLS: the broker's answer is not TLS: port {port} looks like a plain AMQP port (use amqp://, or the broker's TLS port) ({e})"
        ),
        _ => format!("TLS: {e}"),
    }
}

/// The rustls client for `tls`, and a warning when verification is off.
fn client_config(tls: &TlsSettings) -> Result<(rustls::ClientConfig, Option<String>), BrokerError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| BrokerError::Tls(format!("TLS: {e}")))?;
    let mut cas = Vec::new();
    if let Some(pem) = &tls.ca_pem {
        cas.extend(certificates(pem.as_bytes(), tls.ca_flag(false))?);
    }
    if let Some(path) = &tls.ca_path {
        let bytes = read(path, tls.ca_flag(true))?;
        cas.extend(certificates(
            &bytes,
            &format!("{} {}", tls.ca_flag(true), path.display()),
        )?);
    }
    let mut warning = None;
    let builder = if !cas.is_empty() {
        if tls.insecure {
            warning = Some(
                "--amqp-insecure is not used: a CA certificate is given, and the broker is verified against it"
                    .to_owned(),
            );
        }
        let mut roots = rustls::RootCertStore::empty();
        for (i, ca) in cas.into_iter().enumerate() {
            roots.add(ca).map_err(|e| {
                let e = e.to_string().replace("invalid peer certificate: ", "");
                BrokerError::Tls(format!(
                    "the CA certificate number {} of {} is not usable: {e}",
                    i + 1,
                    ca_sources(tls)
                ))
            })?;
        }
        builder.with_root_certificates(roots)
    } else if tls.insecure {
        warning = Some(
            format!("TLS verification of the broker is OFF (--amqp-insecure): anyone on the path to the broker can read and change jobs, logs and the broker's password; give the broker's CA with {} instead", tls.ca_flag(true)),
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
        // rustls-native-certs reads SSL_CERT_FILE when set: checked first, as the files
        // above (a FIFO there would block the start for ever).
        if let Some(file) = std::env::var_os("SSL_CERT_FILE").filter(|f| !f.is_empty()) {
            let path = PathBuf::from(file);
            let meta = std::fs::metadata(&path)
                .map_err(|e| BrokerError::Tls(format!("SSL_CERT_FILE {}: {e}", path.display())))?;
            if !meta.is_file() || meta.len() > 64 * MAX_PEM_BYTES {
                return Err(BrokerError::Tls(format!(
                    "SSL_CERT_FILE {}: not a regular file of CA certificates",
                    path.display()
                )));
            }
        }
        let found = rustls_native_certs::load_native_certs();
        let mut roots = rustls::RootCertStore::empty();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let why = found
                .errors
                .first()
                .map(|e| format!(": {e}"))
                .unwrap_or_default();
            return Err(BrokerError::Tls(format!(
                "this machine has no CA certificates to verify the broker with{why} (install ca-certificates, or give the broker's CA with {})",
                tls.ca_flag(true)
            )));
        }
        builder.with_root_certificates(roots)
    };
    let config = match (&tls.client_cert, &tls.client_key) {
        (None, None) => builder.with_no_client_auth(),
        (Some(cert), Some(key)) => {
            let chain = certificates(
                &read(cert, "--amqp-tls-client-cert")?,
                &format!("--amqp-tls-client-cert {}", cert.display()),
            )?;
            let key_bytes = read(key, "--amqp-tls-client-key")?;
            let key_der = PrivateKeyDer::from_pem_slice(&key_bytes).map_err(|e| {
                let why = if key_bytes
                    .windows(b"ENCRYPTED PRIVATE KEY".len())
                    .any(|w| w == b"ENCRYPTED PRIVATE KEY")
                    || key_bytes.windows(b"Proc-Type: 4,ENCRYPTED".len()).any(|w| w == b"Proc-Type: 4,ENCRYPTED")
                {
                    "the key is encrypted, which is not supported: give it decrypted (openssl pkey -in KEY -out PLAIN.key), readable by the worker's user only".to_owned()
                } else if !key_bytes.starts_with(b"-----") && !key_bytes.windows(5).any(|w| w == b"-----") {
                    "not PEM (a DER key? openssl pkey -inform DER -in KEY -out KEY.pem)".to_owned()
                } else {
                    format!("no private key in PEM there ({})", pem_error(&e))
                };
                BrokerError::Tls(format!("--amqp-tls-client-key {}: {why}", key.display()))
            })?;
            builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                BrokerError::Tls(format!(
                    "--amqp-tls-client-cert {} with --amqp-tls-client-key {}: {e}",
                    cert.display(),
                    key.display()
                ))
            })?
        }
        (Some(_), None) => {
            return Err(BrokerError::Tls(
                "--amqp-tls-client-cert needs --amqp-tls-client-key (the certificate's private key)"
                    .into(),
            ));
        }
        (None, Some(_)) => {
            return Err(BrokerError::Tls(
                "--amqp-tls-client-key needs --amqp-tls-client-cert (the certificate it belongs to)"
                    .into(),
            ));
        }
    };
    Ok((config, warning))
}

/// The most a certificate or key file may hold.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// Reads a certificate or key file: a regular file (a FIFO would block the start for ever)
/// of at most [`MAX_PEM_BYTES`].
fn read(path: &std::path::Path, flag: &str) -> Result<Vec<u8>, BrokerError> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let fail = |why: String| BrokerError::Tls(format!("{flag} {}: {why}", path.display()));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| fail(format!("cannot read it: {e}")))?;
    let meta = file
        .metadata()
        .map_err(|e| fail(format!("cannot read it: {e}")))?;
    if !meta.is_file() {
        return Err(fail("not a regular file".into()));
    }
    let mut bytes = Vec::new();
    file.take(MAX_PEM_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read it: {e}")))?;
    if bytes.len() as u64 > MAX_PEM_BYTES {
        return Err(fail(format!(
            "larger than {} KiB: not a certificate or key file",
            MAX_PEM_BYTES / 1024
        )));
    }
    Ok(bytes)
}

/// Where the CA certificates came from, for a message.
fn ca_sources(tls: &TlsSettings) -> String {
    let mut from = Vec::new();
    if tls.ca_pem.is_some() {
        from.push(tls.ca_flag(false).to_owned());
    }
    if let Some(p) = &tls.ca_path {
        from.push(format!("{} {}", tls.ca_flag(true), p.display()));
    }
    from.join(" and ")
}

/// The certificates in PEM `bytes`; at least one.
fn certificates(bytes: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, BrokerError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            BrokerError::Tls(format!("{what}: not PEM certificates ({})", pem_error(&e)))
        })?;
    if certs.is_empty() {
        return Err(BrokerError::Tls(format!(
            "{what}: no certificate in it (expected -----BEGIN CERTIFICATE-----)"
        )));
    }
    Ok(certs)
}

/// `--amqp-insecure`: any certificate is taken, but the handshake's signatures are still
/// checked (the session is encrypted, to whoever answered).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `url` with its password, if any, replaced by `***`, for printing.
pub fn masked_url(url: &str) -> String {
    // A mistyped `amqps:/user:pass@h` is masked too: the scheme ends at the first `:`.
    let Some((scheme, rest)) = url
        .split_once("://")
        .map(|(s, r)| (format!("{s}://"), r))
        .or_else(|| url.split_once(':').map(|(s, r)| (format!("{s}:"), r)))
    else {
        return url.to_owned();
    };
    // The password ends at the last `@`: a password may hold a raw `/`, `?` or `#` (the
    // URL is then refused, and must not print it), and a path's `@` at worst masks more.
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}{user}:***@{host}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

/// The user and password part of `url`, if any (up to its last `@`).
fn userinfo(url: &str) -> Option<&str> {
    let rest = url.split_once("://")?.1;
    Some(rest.rsplit_once('@')?.0)
}

/// The host of `url` when it is an IPv6 literal (`[::1]`), without its brackets.
fn ipv6_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let rest = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    let inner = rest.strip_prefix('[')?;
    let (addr, _) = inner.split_once(']')?;
    addr.parse::<std::net::Ipv6Addr>().ok()?;
    Some(addr.to_owned())
}

/// The URL parameters amq-protocol reads (lowercase, as it reads them).
const KNOWN_QUERY_KEYS: [&str; 5] = [
    "heartbeat",
    "connection_timeout",
    "auth_mechanism",
    "frame_max",
    "channel_max",
];

/// The names of `url`'s query parameters.
fn query_keys(url: &str) -> Vec<String> {
    let Some((_, query)) = url.split_once('?') else {
        return Vec::new();
    };
    let query = query.split('#').next().unwrap_or("");
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split('=').next().unwrap_or("").to_owned())
        .collect()
}

/// A PEM parser's error in words (its own are byte lists).
fn pem_error(e: &rustls::pki_types::pem::Error) -> String {
    use rustls::pki_types::pem::Error as P;
    match e {
        P::MissingSectionEnd { .. } => "a section has no END line".into(),
        P::IllegalSectionStart { .. } => "a BEGIN line is malformed".into(),
        P::Base64Decode(_) => "the text between BEGIN and END is not base64".into(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn broker(url: &str) -> Broker {
        match Broker::new(url, &TlsSettings::default(), DEFAULT_HEARTBEAT) {
            Ok(b) => b,
            Err(e) => panic!("{url}: {e}"),
        }
    }

    #[test]
    fn the_vhost_is_read_as_amqp091_go_and_pika_read_it() {
        assert_eq!(broker("amqp://h").vhost(), "/");
        assert_eq!(broker("amqp://h/").vhost(), "/");
        assert_eq!(broker("amqp://h:5672/").vhost(), "/");
        assert_eq!(broker("amqp://h/%2f").vhost(), "/");
        assert_eq!(broker("amqp://h/%2F").vhost(), "/");
        assert_eq!(broker("amqp://h/ci").vhost(), "ci");
        assert_eq!(broker("amqp://h/a%2Fb?heartbeat=10").vhost(), "a/b");
    }

    #[test]
    fn the_heartbeat_is_asked_for_unless_the_url_says() {
        assert_eq!(broker("amqp://h/").uri.query.heartbeat, Some(10));
        assert_eq!(broker("amqp://h/?heartbeat=3").uri.query.heartbeat, Some(3));
    }

    #[test]
    fn passwords_are_masked_wherever_the_url_puts_them() {
        assert_eq!(
            masked_url("amqp://u:secret@h:5672/v"),
            "amqp://u:***@h:5672/v"
        );
        assert_eq!(masked_url("amqps://u:p@ss@h/"), "amqps://u:***@h/");
        assert_eq!(masked_url("amqp://h/v"), "amqp://h/v");
        assert_eq!(masked_url("amqp://h/a@b"), "amqp://h/a@b");
        assert_eq!(masked_url("amqps:/u:pw@h/"), "amqps:/u:***@h/");
        // A raw / ? # in a password makes the URL invalid; its error must not print it.
        for p in ["pa/ss", "pa?ss", "pa#ss"] {
            let url = format!("amqps://guest:{p}@localhost:5671/");
            assert_eq!(masked_url(&url), "amqps://guest:***@localhost:5671/");
            let e = Broker::new(&url, &TlsSettings::default(), DEFAULT_HEARTBEAT)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(!e.contains(p), "{e}");
        }
    }

    #[test]
    fn an_ipv6_literal_is_the_host_connected_to() {
        assert_eq!(broker("amqp://u:p@[::1]:5672/").uri.authority.host, "::1");
        assert_eq!(
            broker("amqps://[2001:db8::1]/v").uri.authority.host,
            "2001:db8::1"
        );
        assert_eq!(broker("amqp://h:5672/").uri.authority.host, "h");
    }

    #[test]
    fn url_parameters_it_does_not_know_are_said() {
        let b = broker("amqp://h/?Auth_Mechanism=external&heartbeat=5");
        assert_eq!(b.warnings().len(), 1, "{:?}", b.warnings());
        assert!(
            b.warnings()[0].contains("\"Auth_Mechanism\""),
            "{:?}",
            b.warnings()
        );
        assert!(broker("amqp://h/?connection_timeout=2000")
            .warnings()
            .is_empty());
    }

    #[test]
    fn certificate_files_must_be_small_regular_files() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes())
            .unwrap_or_else(|e| panic!("{e}"));
        // SAFETY: a valid C string.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let big = dir.path().join("big.pem");
        let f = std::fs::File::create(&big).unwrap_or_else(|e| panic!("{e}"));
        f.set_len(MAX_PEM_BYTES + 1)
            .unwrap_or_else(|e| panic!("{e}"));
        for (path, said) in [
            (&fifo, "not a regular file"),
            (&big, "larger than"),
            (&dir.path().to_path_buf(), "not a regular file"),
        ] {
            let tls = TlsSettings {
                ca_path: Some(path.clone()),
                ..Default::default()
            };
            let e = Broker::new("amqps://h/", &tls, DEFAULT_HEARTBEAT)
                .err()
                .map(|e| e.to_string())
                .unwrap_or_default();
            assert!(
                e.contains(said) && e.contains("--amqp-tls-cert-path"),
                "{e}"
            );
        }
    }

    #[test]
    fn bad_settings_name_what_is_wrong() {
        let err = |url: &str, tls: TlsSettings| match Broker::new(url, &tls, DEFAULT_HEARTBEAT) {
            Ok(_) => panic!("{url}: taken"),
            Err(e) => e.to_string(),
        };
        assert!(err("http://h/", TlsSettings::default()).contains("not an amqp://"));
        assert!(
            err("amqp://h/?auth_mechanism=external", TlsSettings::default())
                .contains("use amqps://")
        );
        assert!(
            err("amqps://h/?auth_mechanism=external", TlsSettings::default())
                .contains("needs a client certificate")
        );
        let missing = TlsSettings {
            ca_path: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let e = err("amqps://h/", missing);
        assert!(
            e.contains("/nonexistent/ca.pem") && e.contains("cannot read"),
            "{e}"
        );
        let not_pem = TlsSettings {
            ca_pem: Some("hello".into()),
            ..Default::default()
        };
        assert!(err("amqps://h/", not_pem).contains("no certificate"));
        let half = TlsSettings {
            client_cert: Some("/c.pem".into()),
            ..Default::default()
        };
        let e = err("amqps://h/", half);
        assert!(e.contains("needs --amqp-tls-client-key"), "{e}");
    }

    #[test]
    fn tls_settings_on_a_plain_url_and_insecure_beside_a_ca_are_said() {
        let tls = TlsSettings {
            insecure: true,
            ..Default::default()
        };
        let b = Broker::new("amqp://h/", &tls, DEFAULT_HEARTBEAT).unwrap_or_else(|e| panic!("{e}"));
        assert!(b.warnings()[0].contains("not used"), "{:?}", b.warnings());
        let b =
            Broker::new("amqps://h/", &tls, DEFAULT_HEARTBEAT).unwrap_or_else(|e| panic!("{e}"));
        assert!(b.warnings()[0].contains("OFF"), "{:?}", b.warnings());
        assert!(b.is_tls());
    }
}
