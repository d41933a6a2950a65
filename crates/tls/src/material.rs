//! A TLS directory loaded and checked, and the rustls / tonic configurations made from it.

use crate::{provider, Role, TlsError, CA_FILE, CERT_FILE, KEY_FILE, ROLE_URI_PREFIX};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::server::WebPkiClientVerifier;
use rustls::{CertificateError, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use x509_parser::extensions::GeneralName;

/// Deadline of a TLS handshake made by a client.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

const LAYOUT_HINT: &str = "A TLS directory holds ca.crt, tls.crt and tls.key (PEM), as a kubernetes.io/tls Secret does; make one with `ringfs certs issue --ca CA_DIR --role ROLE --name NAME --out DIR`";

/// The three files of a TLS directory, parsed and checked against each other.
pub struct TlsMaterial {
    pub dir: PathBuf,
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    roots: Vec<CertificateDer<'static>>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    /// The role in this party's own certificate (None: a certificate not made for ringfs).
    pub role: Option<Role>,
    /// When this party's certificate expires.
    pub not_after: SystemTime,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("dir", &self.dir)
            .field("role", &self.role)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn file_err(path: &Path, problem: impl Into<String>, fix: impl Into<String>) -> TlsError {
    TlsError::File {
        path: path.to_path_buf(),
        problem: problem.into(),
        fix: fix.into(),
    }
}

/// The certificates of a PEM text, in order.
fn certs_of(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("is not valid PEM ({e})"))?;
    if certs.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".into());
    }
    for c in &certs {
        x509_parser::parse_x509_certificate(c)
            .map_err(|e| format!("holds a certificate that cannot be parsed ({e})"))?;
    }
    Ok(certs)
}

/// The first certificate of a PEM text.
pub fn parse_cert_pem(pem: &[u8]) -> Result<CertificateDer<'static>, String> {
    let mut certs = certs_of(pem)?;
    Ok(certs.swap_remove(0))
}

/// The DER SubjectPublicKeyInfo of a certificate.
pub(crate) fn spki_of(der: &[u8]) -> Result<Vec<u8>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("certificate cannot be parsed: {e}"))?;
    Ok(cert.public_key().raw.to_vec())
}

/// The ringfs role a certificate carries in its URI SANs. Callers trust it only after the
/// certificate was verified against the cluster CA. With several role URIs (a CA should
/// never issue that) the least privileged one counts.
pub fn role_of_der(der: &[u8]) -> Option<Role> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => u.strip_prefix(ROLE_URI_PREFIX),
            _ => None,
        })
        .filter_map(|r| Role::parse(r).ok())
        .min()
}

/// The role of the verified client certificate a request came with (None: no TLS, or a
/// certificate without a ringfs role).
pub fn peer_role<T>(req: &tonic::Request<T>) -> Option<Role> {
    let certs = req.peer_certs()?;
    role_of_der(certs.first()?)
}

/// The same, from the extensions of an HTTP request (for tower layers in front of the
/// gRPC services).
pub fn peer_role_ext(ext: &tonic::codegen::http::Extensions) -> Option<Role> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let certs = ext.get::<TlsConnectInfo<TcpConnectInfo>>()?.peer_certs()?;
    role_of_der(certs.first()?)
}

/// Whether a request arrived over TLS at all.
pub fn is_tls_ext(ext: &tonic::codegen::http::Extensions) -> bool {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    ext.get::<TlsConnectInfo<TcpConnectInfo>>().is_some()
}

fn not_after_of(der: &[u8]) -> Option<SystemTime> {
    validity_of(der).map(|(_, until)| until)
}

/// A certificate's validity period (not before, not after).
pub fn validity_of(der: &[u8]) -> Option<(SystemTime, SystemTime)> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let at = |secs: i64| Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?));
    Some((
        at(cert.validity().not_before.timestamp())?,
        at(cert.validity().not_after.timestamp())?,
    ))
}

/// Whether the certificate in `cert_pem` should be issued anew: less than a third of its
/// lifetime left at `now`, or unreadable. Renewing at two thirds leaves time for the new
/// one to reach every party (Secret propagation, reload period) before the old expires.
pub fn needs_renewal(cert_pem: &str, now: SystemTime) -> bool {
    let Ok(der) = parse_cert_pem(cert_pem.as_bytes()) else {
        return true;
    };
    let Some((from, until)) = validity_of(&der) else {
        return true;
    };
    let Ok(lifetime) = until.duration_since(from) else {
        return true;
    };
    match until.duration_since(now) {
        Ok(left) => left < lifetime / 3,
        Err(_) => true,
    }
}

fn client_verifier(
    roots: &[CertificateDer<'static>],
) -> Result<Arc<dyn ClientCertVerifier>, String> {
    let mut store = RootCertStore::empty();
    for c in roots {
        store
            .add(c.clone())
            .map_err(|e| format!("is not a usable CA certificate ({e})"))?;
    }
    WebPkiClientVerifier::builder_with_provider(Arc::new(store), provider())
        .build()
        .map_err(|e| format!("cannot be used to verify peers ({e})"))
}

/// The client side of mutual TLS from PEM text (e.g. a Kubernetes Secret's `ca.crt`,
/// `tls.crt` and `tls.key`): verify nodes against `ca_pem`, present `cert_pem`.
pub fn client_tls_from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> ClientTlsConfig {
    ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .identity(Identity::from_pem(cert_pem, key_pem))
        .timeout(HANDSHAKE_TIMEOUT)
}

impl TlsMaterial {
    /// Reads and checks `dir`: each file present and valid PEM, the key belonging to the
    /// certificate, the certificate signed by the CA and currently valid.
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        if !dir.is_dir() {
            return Err(file_err(
                dir,
                "is not a directory",
                format!("Pass a directory that exists. {LAYOUT_HINT}"),
            ));
        }
        let read = |name: &str| -> Result<(PathBuf, Vec<u8>), TlsError> {
            let path = dir.join(name);
            match std::fs::read(&path) {
                Ok(b) => Ok((path, b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(file_err(&path, "is missing", LAYOUT_HINT))
                }
                Err(e) => Err(file_err(
                    &path,
                    format!("cannot be read ({e})"),
                    LAYOUT_HINT,
                )),
            }
        };
        let (ca_path, ca_pem) = read(CA_FILE)?;
        let (cert_path, cert_pem) = read(CERT_FILE)?;
        let (key_path, key_pem) = read(KEY_FILE)?;

        let roots = certs_of(&ca_pem).map_err(|p| {
            file_err(
                &ca_path,
                p,
                "ca.crt must hold the cluster CA certificate in PEM",
            )
        })?;
        let chain = certs_of(&cert_pem).map_err(|p| {
            file_err(
                &cert_path,
                p,
                "tls.crt must hold this party's certificate in PEM",
            )
        })?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| {
            file_err(
                &key_path,
                format!("holds no usable PEM private key ({e})"),
                "tls.key must hold the private key of tls.crt (-----BEGIN PRIVATE KEY-----)",
            )
        })?;
        let p = provider();
        match rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &p) {
            Ok(_) => {}
            Err(rustls::Error::InconsistentKeys(_)) => {
                return Err(file_err(
                    &key_path,
                    "does not belong to the certificate in tls.crt",
                    "Keep tls.crt and tls.key from the same `ringfs certs issue` run",
                ))
            }
            Err(e) => {
                return Err(file_err(
                    &key_path,
                    format!("is not a usable private key ({e})"),
                    "Issue a new key and certificate with `ringfs certs issue`",
                ))
            }
        }
        let verifier = client_verifier(&roots)
            .map_err(|p| file_err(&ca_path, p, "ca.crt must hold the cluster CA certificate"))?;
        if let Err(e) = verifier.verify_client_cert(&chain[0], &chain[1..], UnixTime::now()) {
            let fix = "Issue a new certificate with `ringfs certs issue --ca CA_DIR ... --force`";
            let problem = match e {
                rustls::Error::InvalidCertificate(
                    CertificateError::UnknownIssuer | CertificateError::BadSignature,
                ) => "was not issued by the CA in ca.crt".to_string(),
                rustls::Error::InvalidCertificate(
                    CertificateError::Expired | CertificateError::ExpiredContext { .. },
                ) => "has expired".to_string(),
                rustls::Error::InvalidCertificate(
                    CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
                ) => "is not valid yet (check the clocks)".to_string(),
                other => format!("is not acceptable to the CA in ca.crt ({other})"),
            };
            return Err(file_err(&cert_path, problem, fix));
        }
        let text = |b: Vec<u8>, path: &Path| {
            String::from_utf8(b).map_err(|_| file_err(path, "is not text", LAYOUT_HINT))
        };
        Ok(TlsMaterial {
            dir: dir.to_path_buf(),
            role: role_of_der(&chain[0]),
            not_after: not_after_of(&chain[0]).unwrap_or(UNIX_EPOCH),
            ca_pem: text(ca_pem, &ca_path)?,
            cert_pem: text(cert_pem, &cert_path)?,
            key_pem: text(key_pem, &key_path)?,
            roots,
            chain,
            key,
        })
    }

    /// The server side of mutual TLS: present this certificate, and require every peer to
    /// present one signed by the CA.
    pub fn server_config(&self) -> Result<Arc<ServerConfig>, TlsError> {
        let verifier = client_verifier(&self.roots)
            .map_err(|p| file_err(&self.dir.join(CA_FILE), p, "Replace ca.crt"))?;
        let mut cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Invalid(format!("TLS versions: {e}")))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| {
                file_err(
                    &self.dir.join(CERT_FILE),
                    format!("cannot be served ({e})"),
                    "Issue a new certificate with `ringfs certs issue`",
                )
            })?;
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }

    /// The client side: verify the node against the CA (and its name against the address
    /// dialled), and present this certificate.
    pub fn client_tls(&self) -> ClientTlsConfig {
        client_tls_from_pem(&self.ca_pem, &self.cert_pem, &self.key_pem)
    }

    /// The bytes of the three files, to notice when any of them changes.
    pub fn contents(dir: &Path) -> Option<Vec<u8>> {
        let mut all = Vec::new();
        for name in [CA_FILE, CERT_FILE, KEY_FILE] {
            all.extend(std::fs::read(dir.join(name)).ok()?);
            all.push(0);
        }
        Some(all)
    }

    /// Copies the identity in `from` into `to` (created, mode 0700) when the two differ
    /// and `from` loads cleanly; returns whether it copied. Each file is replaced by a
    /// rename, so a reader sees whole files; one that reads between two renames sees a
    /// certificate and key that do not match, fails to load, and tries again later.
    /// Used by the CSI node plugin to keep the identity of the mounts it starts in a
    /// directory that outlives its pod.
    pub fn mirror_dir(from: &Path, to: &Path) -> Result<bool, TlsError> {
        if Self::contents(from).is_some() && Self::contents(from) == Self::contents(to) {
            return Ok(false);
        }
        let material = Self::load(from)?;
        std::fs::create_dir_all(to).map_err(|e| TlsError::io(to, e))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(to, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| TlsError::io(to, e))?;
        }
        for (name, text) in [
            (KEY_FILE, &material.key_pem),
            (CERT_FILE, &material.cert_pem),
            (CA_FILE, &material.ca_pem),
        ] {
            let tmp = to.join(format!(".{name}.tmp"));
            {
                use std::io::Write;
                use std::os::unix::fs::OpenOptionsExt;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .mode(0o600)
                    .open(&tmp)
                    .map_err(|e| TlsError::io(&tmp, e))?;
                f.write_all(text.as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(|e| TlsError::io(&tmp, e))?;
            }
            std::fs::rename(&tmp, to.join(name)).map_err(|e| TlsError::io(to.join(name), e))?;
        }
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::issue::{CertAuthority, IssueOptions, DEFAULT_CA_VALIDITY};

    fn party(dir: &Path, ca: &CertAuthority, role: Role) {
        ca.issue(&IssueOptions::new(role, "p").ips(["127.0.0.1".parse().unwrap()]))
            .unwrap()
            .write_dir(dir, true)
            .unwrap();
    }

    #[test]
    fn mirror_copies_only_valid_changed_identities() {
        let tmp = tempfile::tempdir().unwrap();
        let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
        let ca = CertAuthority::generate("m", DEFAULT_CA_VALIDITY).unwrap();
        party(&src, &ca, Role::Client);
        assert!(TlsMaterial::mirror_dir(&src, &dst).unwrap());
        assert_eq!(TlsMaterial::contents(&src), TlsMaterial::contents(&dst));
        TlsMaterial::load(&dst).unwrap();
        assert!(!TlsMaterial::mirror_dir(&src, &dst).unwrap(), "unchanged");
        // Renewed: copied again.
        party(&src, &ca, Role::Client);
        assert!(TlsMaterial::mirror_dir(&src, &dst).unwrap());
        assert_eq!(TlsMaterial::contents(&src), TlsMaterial::contents(&dst));
        // A broken source never replaces a working copy.
        let before = TlsMaterial::contents(&dst);
        std::fs::write(src.join(KEY_FILE), "garbage").unwrap();
        assert!(TlsMaterial::mirror_dir(&src, &dst).is_err());
        assert_eq!(TlsMaterial::contents(&dst), before);
    }

    fn err_of(dir: &Path) -> String {
        TlsMaterial::load(dir).unwrap_err().to_string()
    }

    #[test]
    fn a_good_directory_loads_and_builds_configs() {
        let d = tempfile::tempdir().unwrap();
        let ca = CertAuthority::generate("t", DEFAULT_CA_VALIDITY).unwrap();
        party(d.path(), &ca, Role::Node);
        let m = TlsMaterial::load(d.path()).unwrap();
        assert_eq!(m.role, Some(Role::Node));
        assert!(m.not_after > SystemTime::now() + Duration::from_secs(300 * 24 * 3600));
        m.server_config().unwrap();
        let _ = m.client_tls();
    }

    #[test]
    fn a_missing_file_is_named() {
        let d = tempfile::tempdir().unwrap();
        let ca = CertAuthority::generate("t", DEFAULT_CA_VALIDITY).unwrap();
        party(d.path(), &ca, Role::Client);
        std::fs::remove_file(d.path().join(KEY_FILE)).unwrap();
        let e = err_of(d.path());
        assert!(e.contains("tls.key: is missing"), "{e}");
        assert!(e.contains("ringfs certs issue"), "{e}");
        let e = err_of(&d.path().join("nope"));
        assert!(e.contains("is not a directory"), "{e}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let ca = CertAuthority::generate("t", DEFAULT_CA_VALIDITY).unwrap();
        party(a.path(), &ca, Role::Client);
        party(b.path(), &ca, Role::Client);
        std::fs::copy(b.path().join(KEY_FILE), a.path().join(KEY_FILE)).unwrap();
        let e = err_of(a.path());
        assert!(
            e.contains("tls.key: does not belong to the certificate"),
            "{e}"
        );
    }

    #[test]
    fn wrong_pem_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let ca = CertAuthority::generate("t", DEFAULT_CA_VALIDITY).unwrap();
        party(d.path(), &ca, Role::Client);
        // A key where the certificate belongs.
        std::fs::copy(d.path().join(KEY_FILE), d.path().join(CERT_FILE)).unwrap();
        let e = err_of(d.path());
        assert!(e.contains("tls.crt: holds no PEM certificate"), "{e}");
        party(d.path(), &ca, Role::Client);
        std::fs::write(d.path().join(CA_FILE), "not pem at all").unwrap();
        let e = err_of(d.path());
        assert!(e.contains("ca.crt: holds no PEM certificate"), "{e}");
        party(d.path(), &ca, Role::Client);
        std::fs::write(d.path().join(KEY_FILE), ca.cert_pem()).unwrap();
        let e = err_of(d.path());
        assert!(
            e.contains("tls.key: holds no usable PEM private key"),
            "{e}"
        );
    }

    #[test]
    fn a_certificate_of_another_ca_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let ca = CertAuthority::generate("t", DEFAULT_CA_VALIDITY).unwrap();
        let other = CertAuthority::generate("o", DEFAULT_CA_VALIDITY).unwrap();
        party(d.path(), &other, Role::Client);
        std::fs::write(d.path().join(CA_FILE), ca.cert_pem()).unwrap();
        let e = err_of(d.path());
        assert!(e.contains("was not issued by the CA in ca.crt"), "{e}");
    }

    #[test]
    fn an_expired_certificate_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let ca = CertAuthority::generate("t", DEFAULT_CA_VALIDITY).unwrap();
        let mut o = IssueOptions::new(Role::Client, "old");
        o.not_before = SystemTime::now() - Duration::from_secs(7200);
        o.not_after = SystemTime::now() - Duration::from_secs(3600);
        ca.issue(&o).unwrap().write_dir(d.path(), false).unwrap();
        let e = err_of(d.path());
        assert!(e.contains("tls.crt: has expired"), "{e}");
    }

    #[test]
    fn renewal_is_due_in_the_last_third_of_the_lifetime() {
        let ca = CertAuthority::generate("t", DEFAULT_CA_VALIDITY).unwrap();
        let c = ca
            .issue(&IssueOptions::new(Role::Node, "n").validity(Duration::from_secs(90 * 86_400)))
            .unwrap();
        let now = SystemTime::now();
        assert!(!needs_renewal(&c.cert_pem, now));
        assert!(!needs_renewal(
            &c.cert_pem,
            now + Duration::from_secs(59 * 86_400)
        ));
        assert!(needs_renewal(
            &c.cert_pem,
            now + Duration::from_secs(61 * 86_400)
        ));
        assert!(needs_renewal(
            &c.cert_pem,
            now + Duration::from_secs(100 * 86_400)
        ));
        assert!(needs_renewal("not a certificate", now));
    }

    #[test]
    fn a_certificate_without_a_role_has_none() {
        let c = rcgen::generate_simple_self_signed(vec!["x".to_string()]).unwrap();
        assert_eq!(role_of_der(c.cert.der()), None);
        assert_eq!(role_of_der(b"garbage"), None);
    }
}
