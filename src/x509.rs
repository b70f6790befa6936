//! The little audctl needs from X.509 certificates: when they expire. Parsed by x509-parser (the
//! rusticata crate) rather than by hand; used by the cluster.tls probe (PEM in Secrets) and by smoke
//! (DER from the TLS handshake).

use chrono::{DateTime, Utc};

/// `notAfter` of a DER certificate.
pub fn not_after_der(der: &[u8]) -> Result<DateTime<Utc>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| format!("malformed certificate: {e}"))?;
    let ts = cert.validity().not_after.timestamp();
    DateTime::from_timestamp(ts, 0).ok_or_else(|| format!("certificate expiry out of range ({ts})"))
}

/// `notAfter` of the first certificate of a PEM bundle (a Secret's tls.crt).
pub fn not_after_pem(pem: &[u8]) -> Result<DateTime<Utc>, String> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem).map_err(|e| format!("no PEM certificate: {e}"))?;
    if block.label != "CERTIFICATE" {
        return Err(format!("first PEM block is a {}, not a CERTIFICATE", block.label));
    }
    not_after_der(&block.contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_after_of_an_openssl_certificate() {
        // A certificate made by openssl, read by openssl as the reference.
        let dir = tempfile::tempdir().expect("tempdir");
        let out = std::process::Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-days",
                "30",
                "-subj",
                "/CN=t",
            ])
            .arg("-keyout")
            .arg(dir.path().join("k"))
            .arg("-out")
            .arg(dir.path().join("c"))
            .output()
            .expect("openssl");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let pem = std::fs::read(dir.path().join("c")).expect("cert");
        let ours = not_after_pem(&pem).expect("parse");
        // The reference: openssl's own reading of the same certificate.
        let enddate = std::process::Command::new("openssl")
            .args(["x509", "-noout", "-enddate", "-dateopt", "iso_8601", "-in"])
            .arg(dir.path().join("c"))
            .output()
            .expect("openssl x509");
        let text = String::from_utf8_lossy(&enddate.stdout);
        let iso = text.trim().trim_start_matches("notAfter=");
        let theirs =
            chrono::NaiveDateTime::parse_from_str(iso.trim_end_matches('Z'), "%Y-%m-%d %H:%M:%S").expect(iso).and_utc();
        assert_eq!(ours, theirs);
        assert!(not_after_der(&[0x30, 0x03, 0x02]).is_err());
        assert!(not_after_pem(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").is_err());
    }
}
