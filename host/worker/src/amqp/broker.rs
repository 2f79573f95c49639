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
}

impl TlsSettings {
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
        let scheme = url.split_once("://").map(|(s, _)| s.to_ascii_lowercase());
        if !matches!(scheme.as_deref(), Some("amqp" | "amqps")) {
            return Err(BrokerError::Url(format!(
                "{masked} is not an amqp:// or amqps:// URL"
            )));
        }
        let mut uri: AMQPUri = url
            .parse()
            .map_err(|e| BrokerError::Url(format!("{masked}: {e}")))?;
        // `amqp://h/` (a bare slash) is the default vhost, as amqp091-go and pika read it
        // (the parser reads an empty vhost, which no broker has).
        if uri.vhost.is_empty() {
            uri.vhost = "/".into();
        }
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(u16::try_from(heartbeat.as_secs()).unwrap_or(u16::MAX));
        }
        let external = uri.query.auth_mechanism == Some(SASLMechanism::External);
        let mut warnings = Vec::new();
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
        match tokio::time::timeout(CONNECT_TIMEOUT, attempt).await {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(std::io::Error::other(format!(
                "cannot connect to {}: {}",
                self.masked,
                self.explain(&e)
            ))),
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!(
                    "cannot connect to {}: no answer within {} s{}",
                    self.masked,
                    CONNECT_TIMEOUT.as_secs(),
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
            return explain_tls(tls, host, self.uri.authority.port);
        }
        let text = e.to_string();
        if self.tls.is_some() {
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
        if matches!(e.kind(), lapin::ErrorKind::ProtocolError(_))
            || text.contains("parse")
            || text.contains("frame")
        {
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
fn explain_tls(e: &rustls::Error, host: &str, port: u16) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer => format!(
                "TLS: the broker's certificate is signed by a CA this worker does not trust (unknown issuer); give the broker's CA with --amqp-tls-cert-path ({e})"
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
        cas.extend(certificates(pem.as_bytes(), "--amqp-tls-cert")?);
    }
    if let Some(path) = &tls.ca_path {
        let bytes = read(path, "--amqp-tls-cert-path")?;
        cas.extend(certificates(
            &bytes,
            &format!("--amqp-tls-cert-path {}", path.display()),
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
                BrokerError::Tls(format!(
                    "the CA certificate number {} given is not usable: {e}",
                    i + 1
                ))
            })?;
        }
        builder.with_root_certificates(roots)
    } else if tls.insecure {
        warning = Some(
            "TLS verification of the broker is OFF (--amqp-insecure): anyone on the path to the broker can read and change jobs, logs and the broker's password; give the broker's CA with --amqp-tls-cert-path instead"
                .to_owned(),
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
    } else {
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
                "this machine has no CA certificates to verify the broker with{why} (install ca-certificates, or give the broker's CA with --amqp-tls-cert-path)"
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
                BrokerError::Tls(format!(
                    "--amqp-tls-client-key {}: no private key in PEM there ({e})",
                    key.display()
                ))
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

fn read(path: &std::path::Path, flag: &str) -> Result<Vec<u8>, BrokerError> {
    std::fs::read(path)
        .map_err(|e| BrokerError::Tls(format!("{flag} {}: cannot read it: {e}", path.display())))
}

/// The certificates in PEM `bytes`; at least one.
fn certificates(bytes: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>, BrokerError> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| BrokerError::Tls(format!("{what}: not PEM certificates: {e}")))?;
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
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}{path}"),
            None => url.to_owned(),
        },
        None => url.to_owned(),
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
