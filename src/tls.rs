//! Client TLS of the service verbs (smoke, load): the webpki roots plus the certificates of `--ca`,
//! always verified.
//!
//! A certificate given with `--ca` is a trust anchor, and it may also be the server's certificate
//! itself. `openssl req -x509`, the usual way to make a self-signed certificate, marks it
//! `basicConstraints CA:TRUE`; webpki refuses such a certificate as a server's even when it is
//! the anchor (`CaUsedAsEndEntity`), where curl `--cacert` and browsers accept it. For exactly
//! that case, and only when the server presents a certificate byte for byte identical to one in
//! `--ca`, the name and the validity period are checked here instead; the handshake signature is
//! still verified by rustls with that certificate's key.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// rustls client configuration trusting the webpki roots and the certificates of `ca_pem`.
pub fn client_config(ca_pem: Option<&[u8]>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let mut pinned = Vec::new();
    if let Some(pem) = ca_pem {
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("--ca: not a PEM certificate: {e}"))?;
            roots.add(cert.clone()).map_err(|e| format!("--ca: unusable certificate: {e}"))?;
            pinned.push(cert);
        }
        if pinned.is_empty() {
            return Err("--ca: the file holds no PEM certificate".into());
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .map_err(|e| format!("TLS configuration: {e}"))?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(Verifier { webpki, pinned }))
        .with_no_client_auth())
}

#[derive(Debug)]
struct Verifier {
    webpki: Arc<WebPkiServerVerifier>,
    /// The certificates of `--ca`, as given.
    pinned: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::Other(other)))
                if matches!(other.0.downcast_ref(), Some(webpki::Error::CaUsedAsEndEntity))
                    && self.pinned.iter().any(|p| p.as_ref() == end_entity.as_ref()) =>
            {
                verify_pinned(end_entity, server_name, now)
            }
            result => result,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// What webpki would have checked of a trusted end-entity certificate: its name and its period.
fn verify_pinned(
    cert: &CertificateDer<'_>,
    server_name: &ServerName<'_>,
    now: UnixTime,
) -> Result<ServerCertVerified, rustls::Error> {
    let bad = |e: CertificateError| rustls::Error::InvalidCertificate(e);
    let parsed = webpki::EndEntityCert::try_from(cert).map_err(|_| bad(CertificateError::BadEncoding))?;
    parsed.verify_is_valid_for_subject_name(server_name).map_err(|_| bad(CertificateError::NotValidForName))?;
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert.as_ref()).map_err(|_| bad(CertificateError::BadEncoding))?;
    let at = |t: i64| UnixTime::since_unix_epoch(std::time::Duration::from_secs(t.max(0).unsigned_abs()));
    let (not_before, not_after) = (x509.validity().not_before.timestamp(), x509.validity().not_after.timestamp());
    let time = now.as_secs();
    if time < not_before.max(0).unsigned_abs() {
        return Err(bad(CertificateError::NotValidYetContext { time: now, not_before: at(not_before) }));
    }
    if time > not_after.max(0).unsigned_abs() {
        return Err(bad(CertificateError::ExpiredContext { time: now, not_after: at(not_after) }));
    }
    Ok(ServerCertVerified::assertion())
}

/// A failed handshake with `host` in words, with what to do when the certificate was refused. The
/// rustls reason stays in the text (`UnknownIssuer`, `NotValidForName`, ...), for searching.
pub fn refusal(e: &std::io::Error, host: &str) -> String {
    let cert = e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()).and_then(|r| match r {
        rustls::Error::InvalidCertificate(c) => Some(c),
        _ => None,
    });
    let Some(cert) = cert else { return e.to_string() };
    match cert {
        CertificateError::UnknownIssuer => {
            format!("{e} (self-signed or a private CA: pass the certificate or its CA with --ca FILE to trust it)")
        }
        // Reached only when the certificate is not one of --ca's (those are accepted above).
        CertificateError::Other(other) if matches!(other.0.downcast_ref(), Some(webpki::Error::CaUsedAsEndEntity)) => {
            "invalid peer certificate: CaUsedAsEndEntity: the server presents a CA certificate (CA:TRUE), \
             not trusted here; if it is the server's own self-signed certificate, pass it with --ca FILE"
                .to_owned()
        }
        CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
            format!("{e} (its subjectAltName does not list {host}; the subject's common name alone is not used)")
        }
        _ => e.to_string(),
    }
}
