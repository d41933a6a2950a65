//! Issuing certificates: a self-signed cluster CA and the certificates it signs.
//!
//! Keys are ECDSA P-256 (fast to make and to verify, accepted by every TLS stack).
//! Certificates start five minutes in the past so that small clock differences between
//! machines do not make a freshly issued certificate "not yet valid".

use crate::{Role, TlsError, CA_FILE, CA_KEY_FILE, CERT_FILE, KEY_FILE};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Default lifetime of a cluster CA: 10 years.
pub const DEFAULT_CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Default lifetime of a node, client or admin certificate: 1 year.
pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(365 * 24 * 3600);
/// How far before "now" a new certificate becomes valid (clock skew between machines).
pub const BACKDATE: Duration = Duration::from_secs(300);

/// What to put into a node, client or admin certificate.
#[derive(Debug, Clone)]
pub struct IssueOptions {
    pub role: Role,
    /// The subject's common name (e.g. `node-1`, `csi`, `alice`).
    pub name: String,
    /// DNS names the holder is reached by (servers only need them; nodes are servers).
    pub dns: Vec<String>,
    /// IP addresses the holder is reached by.
    pub ips: Vec<IpAddr>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl IssueOptions {
    /// Valid from now (less [`BACKDATE`]) for [`DEFAULT_LEAF_VALIDITY`].
    pub fn new(role: Role, name: impl Into<String>) -> Self {
        let now = SystemTime::now();
        IssueOptions {
            role,
            name: name.into(),
            dns: Vec::new(),
            ips: Vec::new(),
            not_before: now - BACKDATE,
            not_after: now + DEFAULT_LEAF_VALIDITY,
        }
    }

    pub fn dns(mut self, names: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.dns.extend(names.into_iter().map(Into::into));
        self
    }

    pub fn ips(mut self, ips: impl IntoIterator<Item = IpAddr>) -> Self {
        self.ips.extend(ips);
        self
    }

    /// Valid from now (less [`BACKDATE`]) for `validity`.
    pub fn validity(mut self, validity: Duration) -> Self {
        let now = SystemTime::now();
        self.not_before = now - BACKDATE;
        self.not_after = now + validity;
        self
    }
}

/// A certificate with its key, and the CA certificate that signed it: the three files
/// of a TLS directory.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
}

impl IssuedCert {
    /// Writes `ca.crt`, `tls.crt` and `tls.key` (mode 0600) into `dir`, creating it.
    /// Refuses to replace existing files unless `force`, so running the same command twice
    /// never silently swaps a working identity for a new one.
    pub fn write_dir(&self, dir: &Path, force: bool) -> Result<(), TlsError> {
        write_files(
            dir,
            &[
                (CA_FILE, &self.ca_pem, false),
                (CERT_FILE, &self.cert_pem, false),
                (KEY_FILE, &self.key_pem, true),
            ],
            force,
        )
    }
}

/// A cluster CA able to sign certificates.
pub struct CertAuthority {
    cert_pem: String,
    key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for CertAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertAuthority").finish_non_exhaustive()
    }
}

impl CertAuthority {
    /// A new self-signed CA named `ringfs CA <name>`.
    pub fn generate(name: &str, validity: Duration) -> Result<Self, TlsError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("ringfs CA {name}"));
        params
            .distinguished_name
            .push(DnType::OrganizationName, "ringfs");
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - BACKDATE).into();
        params.not_after = (now + validity).into();
        let cert = params.self_signed(&key)?;
        let key_pem = key.serialize_pem();
        Ok(CertAuthority {
            cert_pem: cert.pem(),
            key_pem,
            issuer: Issuer::new(params, key),
        })
    }

    /// A CA from its certificate and private key (PEM).
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        let key = KeyPair::from_pem(key_pem).map_err(|e| {
            TlsError::Invalid(format!("the CA key is not a usable private key: {e}"))
        })?;
        let issuer = Issuer::from_ca_cert_pem(cert_pem, key)
            .map_err(|e| TlsError::Invalid(format!("the CA certificate cannot be read: {e}")))?;
        let spki = rcgen::PublicKeyData::subject_public_key_info(issuer.key());
        let cert =
            crate::material::parse_cert_pem(cert_pem.as_bytes()).map_err(TlsError::Invalid)?;
        if crate::material::spki_of(&cert).map_err(TlsError::Invalid)? != spki {
            return Err(TlsError::Invalid(
                "the CA key does not belong to the CA certificate".into(),
            ));
        }
        Ok(CertAuthority {
            cert_pem: cert_pem.to_string(),
            key_pem: key_pem.to_string(),
            issuer,
        })
    }

    /// Loads a CA directory written by [`CertAuthority::write_dir`] (`ca.crt`, `ca.key`).
    pub fn load(dir: &Path) -> Result<Self, TlsError> {
        let read = |name: &str| {
            let path = dir.join(name);
            std::fs::read_to_string(&path).map_err(|e| TlsError::File {
                problem: format!("cannot be read ({e})"),
                fix: format!(
                    "Point --ca at a directory made by `ringfs certs ca --out DIR` (it holds {CA_FILE} and {CA_KEY_FILE})"
                ),
                path,
            })
        };
        let cert = read(CA_FILE)?;
        let key = read(CA_KEY_FILE)?;
        Self::from_pem(&cert, &key).map_err(|e| TlsError::File {
            path: dir.to_path_buf(),
            problem: e.to_string(),
            fix: "Re-create the CA with `ringfs certs ca --out DIR --force`".into(),
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    pub fn key_pem(&self) -> &str {
        &self.key_pem
    }

    /// Writes `ca.crt` and `ca.key` (mode 0600) into `dir`; refuses to replace existing
    /// files unless `force`.
    pub fn write_dir(&self, dir: &Path, force: bool) -> Result<(), TlsError> {
        write_files(
            dir,
            &[
                (CA_FILE, &self.cert_pem, false),
                (CA_KEY_FILE, &self.key_pem, true),
            ],
            force,
        )
    }

    /// A new key and a certificate for it, signed by this CA.
    pub fn issue(&self, opts: &IssueOptions) -> Result<IssuedCert, TlsError> {
        if opts.name.trim().is_empty() {
            return Err(TlsError::Invalid(
                "a certificate needs a name (--name), e.g. node-1 or alice".into(),
            ));
        }
        if opts.not_after <= opts.not_before {
            return Err(TlsError::Invalid(
                "the certificate would expire before it becomes valid".into(),
            ));
        }
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, opts.name.clone());
        params
            .distinguished_name
            .push(DnType::OrganizationName, "ringfs");
        params
            .distinguished_name
            .push(DnType::OrganizationalUnitName, opts.role.as_str());
        for d in &opts.dns {
            let name = d
                .clone()
                .try_into()
                .map_err(|e| TlsError::Invalid(format!("{d:?} is not a valid DNS name: {e}")))?;
            params.subject_alt_names.push(SanType::DnsName(name));
        }
        for ip in &opts.ips {
            params.subject_alt_names.push(SanType::IpAddress(*ip));
        }
        let uri = opts
            .role
            .uri()
            .try_into()
            .map_err(|e| TlsError::Generate(format!("role URI: {e}")))?;
        params.subject_alt_names.push(SanType::URI(uri));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = match opts.role {
            // Nodes serve and dial; clients and admins only dial.
            Role::Node => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
            Role::Client | Role::Admin => vec![ExtendedKeyUsagePurpose::ClientAuth],
        };
        params.use_authority_key_identifier_extension = true;
        params.not_before = opts.not_before.into();
        params.not_after = opts.not_after.into();
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCert {
            ca_pem: self.cert_pem.clone(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// Writes each `(name, contents, secret)` into `dir` atomically (temp file + rename);
/// secret files get mode 0600. Checks every target first, so either all files are
/// written or (without `force`) none is.
fn write_files(dir: &Path, files: &[(&str, &str, bool)], force: bool) -> Result<(), TlsError> {
    if !force {
        for (name, _, _) in files {
            let path = dir.join(name);
            if path.exists() {
                return Err(TlsError::Exists { path });
            }
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| TlsError::io(dir, e))?;
    for (name, contents, secret) in files {
        let path = dir.join(name);
        let tmp = dir.join(format!(".{name}.tmp"));
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        if *secret {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(|e| TlsError::io(&tmp, e))?;
        f.write_all(contents.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| TlsError::io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| TlsError::io(&path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::material::{parse_cert_pem, role_of_der};

    #[test]
    fn issued_certificates_carry_their_role_and_names() {
        let ca = CertAuthority::generate("test", DEFAULT_CA_VALIDITY).unwrap();
        for role in Role::ALL {
            let c = ca
                .issue(
                    &IssueOptions::new(role, "n1")
                        .dns(["n1.example"])
                        .ips(["127.0.0.1".parse().unwrap()]),
                )
                .unwrap();
            let der = parse_cert_pem(c.cert_pem.as_bytes()).unwrap();
            assert_eq!(role_of_der(&der), Some(role));
            assert_eq!(c.ca_pem, ca.cert_pem());
        }
    }

    #[test]
    fn a_ca_survives_a_round_trip_through_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::generate("rt", DEFAULT_CA_VALIDITY).unwrap();
        ca.write_dir(dir.path(), false).unwrap();
        let again = CertAuthority::load(dir.path()).unwrap();
        assert_eq!(again.cert_pem(), ca.cert_pem());
        // A certificate issued by the reloaded CA verifies against the original.
        let leaf = again.issue(&IssueOptions::new(Role::Client, "c")).unwrap();
        let out = dir.path().join("client");
        leaf.write_dir(&out, false).unwrap();
        crate::TlsMaterial::load(&out).unwrap();
    }

    #[test]
    fn writing_twice_is_refused_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertAuthority::generate("w", DEFAULT_CA_VALIDITY).unwrap();
        ca.write_dir(dir.path(), false).unwrap();
        let err = ca.write_dir(dir.path(), false).unwrap_err();
        assert!(matches!(err, TlsError::Exists { .. }), "{err}");
        assert!(err.to_string().contains("--force"), "{err}");
        ca.write_dir(dir.path(), true).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(CA_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_ca_key_that_is_not_the_certificates_is_refused() {
        let a = CertAuthority::generate("a", DEFAULT_CA_VALIDITY).unwrap();
        let b = CertAuthority::generate("b", DEFAULT_CA_VALIDITY).unwrap();
        let err = CertAuthority::from_pem(a.cert_pem(), b.key_pem()).unwrap_err();
        assert!(err.to_string().contains("does not belong"), "{err}");
    }

    #[test]
    fn bad_names_and_validity_are_refused() {
        let ca = CertAuthority::generate("v", DEFAULT_CA_VALIDITY).unwrap();
        assert!(ca.issue(&IssueOptions::new(Role::Node, " ")).is_err());
        let mut o = IssueOptions::new(Role::Node, "n");
        o.not_after = o.not_before;
        assert!(ca.issue(&o).is_err());
    }
}
