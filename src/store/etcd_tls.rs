//! TLS and authentication to etcd: flanneld's `--etcd-cafile`, `--etcd-certfile` and `--etcd-keyfile`, `https://`
//! endpoints verified against the system's CAs when no CA file is given, and errors that say which part of the
//! security set-up etcd or we rejected. Nothing here ever falls back to plain text: TLS files with an `http://`
//! endpoint are an error, not a downgrade.

use std::path::{Path, PathBuf};

use etcd_client::{Certificate, Identity, TlsOptions};

/// The TLS files, as flanneld's flags name them. All optional: an `https://` endpoint without a CA file is
/// verified against the system's CAs, and a client certificate is only sent when both halves are given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EtcdTls {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

/// A TLS set-up that cannot work, found before anything is sent.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("{flag} {}: {source}", path.display())]
    Unreadable {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{flag} {}: no PEM {what} in it", path.display())]
    NotPem { flag: &'static str, path: PathBuf, what: &'static str },
    #[error("{given} is given without {missing}: a client certificate needs both")]
    HalfIdentity { given: &'static str, missing: &'static str },
    #[error(
        "etcd endpoint {0} is plain http, but TLS files are given: use https:// (weft never falls back to plain text)"
    )]
    PlainTextEndpoint(String),
    #[error("etcd endpoints mix http:// and https:// ({0}): use https:// for every endpoint")]
    MixedSchemes(String),
}

impl EtcdTls {
    pub fn is_configured(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// The TLS options for `endpoints`: None when every endpoint is `http://` and no TLS file is given.
    pub fn options(&self, endpoints: &[String]) -> Result<Option<TlsOptions>, TlsSetupError> {
        let secure = endpoints.iter().filter(|e| e.starts_with("https://")).count();
        if secure == 0 {
            return match endpoints.first() {
                Some(plain) if self.is_configured() => Err(TlsSetupError::PlainTextEndpoint(plain.clone())),
                _ => Ok(None),
            };
        }
        if secure != endpoints.len() {
            return Err(TlsSetupError::MixedSchemes(endpoints.join(",")));
        }
        // etcd speaks gRPC over HTTP/2 whether or not its TLS set-up advertises it through ALPN.
        let mut options = TlsOptions::new().assume_http2(true);
        options = match &self.ca_file {
            // A CA file replaces the system's CAs, as in flanneld: the cluster's private CA is the only trust.
            Some(path) => options.ca_certificate(Certificate::from_pem(read_pem(
                "--etcd-cafile",
                path,
                "CERTIFICATE",
                "certificate",
            )?)),
            None => options.with_native_roots(),
        };
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let cert = read_pem("--etcd-certfile", cert, "CERTIFICATE", "certificate")?;
                let key = read_pem("--etcd-keyfile", key, "PRIVATE KEY", "private key")?;
                options = options.identity(Identity::from_pem(cert, key));
            }
            (Some(_), None) => {
                return Err(TlsSetupError::HalfIdentity { given: "--etcd-certfile", missing: "--etcd-keyfile" })
            }
            (None, Some(_)) => {
                return Err(TlsSetupError::HalfIdentity { given: "--etcd-keyfile", missing: "--etcd-certfile" })
            }
            (None, None) => {}
        }
        Ok(Some(options))
    }
}

/// Reads a PEM file and checks it holds a block of the expected kind (`PRIVATE KEY` matches PKCS#8, RSA and EC
/// keys), so a swapped or empty file is named here rather than as a vague handshake failure.
fn read_pem(flag: &'static str, path: &Path, label: &str, what: &'static str) -> Result<Vec<u8>, TlsSetupError> {
    let pem = std::fs::read(path).map_err(|source| TlsSetupError::Unreadable { flag, path: path.into(), source })?;
    let text = String::from_utf8_lossy(&pem);
    let has_block =
        text.lines().any(|l| l.starts_with("-----BEGIN ") && l.trim_end().ends_with(&format!("{label}-----")));
    if !has_block {
        return Err(TlsSetupError::NotPem { flag, path: path.into(), what });
    }
    Ok(pem)
}

/// Why etcd and weft could not agree on a secure, authenticated connection. Each says what to check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// etcd's server certificate is not signed by a CA we trust.
    ServerCertificate,
    /// The server certificate does not name the host in the endpoint.
    ServerName,
    /// etcd wants a client certificate we did not send, or does not trust the one we sent.
    ClientCertificate,
    /// etcd refused the user name or password.
    Credentials,
    /// The endpoint does not speak TLS (an https:// URL for a plain-text etcd).
    NotTls,
    /// etcd closed the connection right after the TLS handshake while we sent no client certificate.
    ClosedAfterTls,
}

impl Rejection {
    /// Recognises a rejection in the text of an error and its sources (the TLS stack's and etcd's messages).
    pub fn classify(error: &(dyn std::error::Error + 'static)) -> Option<Rejection> {
        let text = chain_text(error);
        let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
        if has(&["unknownissuer", "unknown issuer", "badsignature", "invalid peer certificate: expired"]) {
            Some(Rejection::ServerCertificate)
        } else if has(&["notvalidforname", "not valid for name"]) {
            Some(Rejection::ServerName)
        } else if has(&[
            "certificaterequired",
            "certificate required",
            "badcertificate",
            "bad certificate",
            "unknownca",
        ]) {
            Some(Rejection::ClientCertificate)
        } else if has(&["authentication failed", "invalid user id or password", "invalid auth token"]) {
            Some(Rejection::Credentials)
        } else if has(&["corrupt message", "invalidcontenttype", "invalid content type"]) {
            Some(Rejection::NotTls)
        } else {
            None
        }
    }

    /// Whether the connection was closed under us (rather than refused or timed out).
    pub fn closed_early(error: &(dyn std::error::Error + 'static)) -> bool {
        let text = chain_text(error);
        ["connection closed", "connection reset", "broken pipe"].iter().any(|n| text.contains(n))
    }

    pub fn advice(self) -> &'static str {
        match self {
            Rejection::ServerCertificate => {
                "etcd's server certificate is not signed by a trusted CA: check --etcd-cafile (without it, the \
                 system's CAs are used)"
            }
            Rejection::ServerName => "etcd's server certificate does not name the endpoint's host",
            Rejection::ClientCertificate => {
                "etcd requires a client certificate signed by a CA it trusts: check --etcd-certfile and \
                 --etcd-keyfile"
            }
            Rejection::Credentials => "etcd rejected the user name or password (--etcd-username, --etcd-password)",
            Rejection::NotTls => "the endpoint does not speak TLS: is it an https:// URL for a plain-text etcd?",
            Rejection::ClosedAfterTls => {
                "etcd closed the connection after the TLS handshake and no client certificate was sent: it \
                 probably requires a client certificate (--etcd-certfile, --etcd-keyfile)"
            }
        }
    }
}

/// An error and all its sources as one lower-case text, Debug forms included (they carry the TLS alert names).
fn chain_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = format!("{error:?}");
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(&format!(" | {e} {e:?}"));
        source = e.source();
    }
    text.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoints(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn plain_http_without_tls_files_needs_no_tls() {
        assert!(EtcdTls::default().options(&endpoints(&["http://198.18.0.1:2379"])).unwrap().is_none());
    }

    #[test]
    fn https_without_a_ca_file_uses_the_system_cas() {
        assert!(EtcdTls::default().options(&endpoints(&["https://198.18.0.1:2379"])).unwrap().is_some());
    }

    #[test]
    fn tls_files_never_fall_back_to_plain_text() {
        let tls = EtcdTls { ca_file: Some("/nonexistent/ca.pem".into()), ..Default::default() };
        let err = tls.options(&endpoints(&["http://198.18.0.1:2379"])).unwrap_err();
        assert!(matches!(err, TlsSetupError::PlainTextEndpoint(_)), "{err}");
        let err = EtcdTls::default().options(&endpoints(&["https://198.18.0.1:2379", "http://198.18.0.2:2379"]));
        assert!(matches!(err, Err(TlsSetupError::MixedSchemes(_))));
    }

    #[test]
    fn files_are_checked_and_named() {
        let dir = std::env::temp_dir().join(format!("weft-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("ca.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        let https = endpoints(&["https://198.18.0.1:2379"]);
        let tls = EtcdTls { ca_file: Some(not_pem.clone()), ..Default::default() };
        let err = tls.options(&https).unwrap_err().to_string();
        assert!(err.starts_with("--etcd-cafile") && err.contains("no PEM certificate"), "{err}");
        let missing =
            EtcdTls { cert_file: Some(dir.join("missing.pem")), key_file: Some(not_pem.clone()), ..Default::default() };
        let err = missing.options(&https).unwrap_err().to_string();
        assert!(err.starts_with("--etcd-certfile") && err.contains("missing.pem"), "{err}");
        let half = EtcdTls { cert_file: Some(not_pem), ..Default::default() };
        let err = half.options(&https).unwrap_err().to_string();
        assert!(err.contains("--etcd-certfile is given without --etcd-keyfile"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[derive(Debug)]
    struct Chain(&'static str, Option<Box<Chain>>);
    impl std::fmt::Display for Chain {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }
    impl std::error::Error for Chain {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|c| c as _)
        }
    }

    #[test]
    fn rejections_are_recognised_in_the_source_chain() {
        let nested = |inner: &'static str| Chain("transport error", Some(Box::new(Chain(inner, None))));
        let cases = [
            ("invalid peer certificate: UnknownIssuer", Some(Rejection::ServerCertificate)),
            ("received fatal alert: CertificateRequired", Some(Rejection::ClientCertificate)),
            ("etcdserver: authentication failed, invalid user ID or password", Some(Rejection::Credentials)),
            ("connection refused", None),
        ];
        for (inner, expected) in cases {
            assert_eq!(Rejection::classify(&nested(inner)), expected, "{inner}");
        }
        assert!(Rejection::closed_early(&nested("hyper::Error(Canceled, \"connection closed\")")));
        assert!(!Rejection::closed_early(&nested("connection refused")));
    }
}
