//! TLS for the MQTT client (`mqtts://`, the `tls` feature): rustls on the ring provider,
//! trusting webpki-roots' Mozilla roots plus an optional CA file (a home broker's own CA).
//! The handshake is completed in [`connect`], so an untrusted certificate is the connect's
//! [`Error::Mqtt`], which the sink reports as its `last_error`.

use std::io::ErrorKind;
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use crate::error::{Error, Result};

/// A TLS connection over the broker's socket (its timeouts are the socket's).
pub(crate) type TlsStream = StreamOwned<ClientConnection, TcpStream>;

/// The client settings of every connection of one sink: the trusted roots, read once.
///
/// # Errors
/// The CA file cannot be read or holds no usable certificate.
pub(crate) fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = ca_file {
        let bad = |reason: String| Error::Mqtt {
            op: "read the MQTT CA file",
            reason: format!("{}: {reason}", path.display()),
        };
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| bad(e.to_string()))?
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| bad(e.to_string()))?;
        let (added, _unusable) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err(bad("no PEM certificate in it".into()));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Mqtt {
            op: "set up TLS",
            reason: e.to_string(),
        })?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The name the broker's certificate must carry: the URL's host (a DNS name or an IP
/// address) from `host:port` or `[v6]:port`.
fn server_name(addr: &str) -> Result<ServerName<'static>> {
    let host = addr.rsplit_once(':').map_or(addr, |(h, _)| h);
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(host.to_owned()).map_err(|e| Error::Mqtt {
        op: "start TLS",
        reason: format!("{host} is no server name: {e}"),
    })
}

/// TLS over `tcp` (connected, with its timeouts set) to the broker at `addr`, handshake
/// done.
///
/// # Errors
/// The broker's certificate is not trusted or not for this host, or the handshake fails
/// or times out.
pub(crate) fn connect(config: &Arc<ClientConfig>, addr: &str, tcp: TcpStream) -> Result<TlsStream> {
    let conn =
        ClientConnection::new(Arc::clone(config), server_name(addr)?).map_err(|e| Error::Mqtt {
            op: "start TLS",
            reason: e.to_string(),
        })?;
    let mut tls = StreamOwned::new(conn, tcp);
    while tls.conn.is_handshaking() {
        if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
            let reason = match e.kind() {
                ErrorKind::WouldBlock | ErrorKind::TimedOut => "no answer in time".to_owned(),
                ErrorKind::UnexpectedEof => "the broker closed the connection".to_owned(),
                // rustls' own error: e.g. "invalid peer certificate: UnknownIssuer".
                _ => e.to_string(),
            };
            return Err(Error::Mqtt {
                op: "complete the TLS handshake with the broker",
                reason,
            });
        }
    }
    Ok(tls)
}

/// Says goodbye at the TLS layer (best effort: the socket closes on drop anyway).
pub(crate) fn close(tls: &mut TlsStream) {
    tls.conn.send_close_notify();
    let _ = tls.conn.complete_io(&mut tls.sock); // best effort on the way out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_the_host() -> Result<()> {
        assert_eq!(
            server_name("broker.lan:8883")?,
            ServerName::try_from("broker.lan")
                .map_err(|e| Error::Mqtt {
                    op: "test",
                    reason: e.to_string()
                })?
                .to_owned()
        );
        assert!(matches!(
            server_name("127.0.0.1:8883")?,
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("[::1]:8883")?,
            ServerName::IpAddress(_)
        ));
        Ok(())
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() -> Result<()> {
        let dir = tempfile::tempdir().map_err(|source| Error::Io {
            op: "tempdir",
            source,
        })?;
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "not a certificate\n").map_err(|source| Error::Io {
            op: "write",
            source,
        })?;
        let e = client_config(Some(&path)).err().map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|e| e.contains("no PEM certificate")),
            "{e:?}"
        );
        let missing = client_config(Some(&dir.path().join("none.pem"))).err();
        assert!(missing.is_some());
        assert!(client_config(None).is_ok());
        Ok(())
    }
}
