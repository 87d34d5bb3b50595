//! Mutual TLS for comet deployments: a private CA per deployment, one certificate per role.
//!
//! `comet keys` ([`generate_keys`]) makes a deployment CA and, for each role (`p0`, `p1`,
//! `dealer`, `client`), a certificate whose only subject name is the DNS name `<role>.comet`
//! ([`role_dns_name`]), usable for both TLS client and server authentication. A peer is
//! accepted only if its certificate chains to the deployment CA **and** names the role that
//! the other side expects; anything else fails the handshake with [`NetError::Tls`] on both
//! sides. Only TLS 1.3 with the `ring` provider is offered.
//!
//! Files in a certificates directory:
//!
//! | file | content | who needs it |
//! |---|---|---|
//! | `ca.pem` | deployment CA certificate | every role |
//! | `ca.key` | CA private key | nobody at run time (keep offline; signs new roles) |
//! | `<role>.pem` | the role's certificate | that role |
//! | `<role>.key` | the role's private key (PKCS#8) | that role only |

use crate::NetError;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, DistinguishedName, RootCertStore,
    ServerConfig, SignatureScheme,
};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The roles `comet keys` makes certificates for when none are named.
pub const DEFAULT_ROLES: [&str; 4] = ["p0", "p1", "dealer", "client"];

/// How long generated certificates stay valid (about five years).
pub const CERT_VALIDITY_DAYS: i64 = 5 * 365;

/// DNS suffix of every role name in a certificate (`p0` → `p0.comet`).
pub const ROLE_DNS_SUFFIX: &str = "comet";

/// The subject DNS name a role's certificate carries, e.g. `p0.comet`.
pub fn role_dns_name(role: &str) -> String {
    format!("{role}.{ROLE_DNS_SUFFIX}")
}

/// Checks that a role name is a usable DNS label: 1–63 characters of `a-z`, `0-9`, `-`,
/// not starting or ending with `-`.
pub fn validate_role(role: &str) -> Result<(), NetError> {
    let ok = !role.is_empty()
        && role.len() <= 63
        && role
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !role.starts_with('-')
        && !role.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(NetError::Tls(format!(
            "invalid role name '{role}': use 1-63 characters of a-z, 0-9 and '-' (e.g. p0, p1, dealer, client)"
        )))
    }
}

/// PEM text of one role's certificate and private key.
#[derive(Clone)]
pub struct RoleKeys {
    /// Role name (`p0`, ...).
    pub role: String,
    /// The role's certificate, signed by the deployment CA.
    pub cert_pem: String,
    /// The role's PKCS#8 private key.
    pub key_pem: String,
}

impl fmt::Debug for RoleKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RoleKeys")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// A freshly generated deployment: CA and role key material, in memory.
#[derive(Clone)]
pub struct Deployment {
    /// The CA certificate every role trusts.
    pub ca_cert_pem: String,
    /// The CA private key (only needed to sign more roles).
    pub ca_key_pem: String,
    /// One entry per role.
    pub roles: Vec<RoleKeys>,
}

impl fmt::Debug for Deployment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let roles: Vec<&str> = self.roles.iter().map(|r| r.role.as_str()).collect();
        f.debug_struct("Deployment")
            .field("roles", &roles)
            .finish_non_exhaustive()
    }
}

fn rcgen_err(what: &str) -> impl FnOnce(rcgen::Error) -> NetError + '_ {
    move |e| NetError::Tls(format!("could not generate {what}: {e}"))
}

impl Deployment {
    /// Generates a new CA (ECDSA P-256) and one certificate per role, signed by it.
    pub fn generate(roles: &[&str]) -> Result<Self, NetError> {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        if roles.is_empty() {
            return Err(NetError::Tls(
                "no roles to generate certificates for".into(),
            ));
        }
        for (i, role) in roles.iter().enumerate() {
            validate_role(role)?;
            if roles[..i].contains(role) {
                return Err(NetError::Tls(format!("role '{role}' listed twice")));
            }
        }
        // Valid from an hour ago (clock skew between machines) for CERT_VALIDITY_DAYS.
        let now = time::OffsetDateTime::now_utc();
        let not_before = now - time::Duration::hours(1);
        let not_after = now + time::Duration::days(CERT_VALIDITY_DAYS);
        let ca_key = KeyPair::generate().map_err(rcgen_err("the CA key"))?;
        let mut ca_params =
            CertificateParams::new(Vec::<String>::new()).map_err(rcgen_err("the CA"))?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "comet deployment CA");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        (ca_params.not_before, ca_params.not_after) = (not_before, not_after);
        let ca_cert = ca_params
            .self_signed(&ca_key)
            .map_err(rcgen_err("the CA certificate"))?;
        let ca_key_pem = ca_key.serialize_pem();
        let issuer = Issuer::new(ca_params, ca_key);

        let mut out = Vec::with_capacity(roles.len());
        for role in roles {
            let key = KeyPair::generate().map_err(rcgen_err("a role key"))?;
            let mut params = CertificateParams::new(vec![role_dns_name(role)])
                .map_err(rcgen_err("a role certificate"))?;
            params
                .distinguished_name
                .push(DnType::CommonName, format!("comet {role}"));
            params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            params.use_authority_key_identifier_extension = true;
            (params.not_before, params.not_after) = (not_before, not_after);
            let cert = params
                .signed_by(&key, &issuer)
                .map_err(rcgen_err("a role certificate"))?;
            out.push(RoleKeys {
                role: role.to_string(),
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
            });
        }
        Ok(Self {
            ca_cert_pem: ca_cert.pem(),
            ca_key_pem,
            roles: out,
        })
    }

    /// The TLS identity of `role` in this deployment.
    pub fn identity(&self, role: &str) -> Result<TlsIdentity, NetError> {
        let keys = self
            .roles
            .iter()
            .find(|r| r.role == role)
            .ok_or_else(|| NetError::Tls(format!("deployment has no role '{role}'")))?;
        TlsIdentity::from_pem(role, &self.ca_cert_pem, &keys.cert_pem, &keys.key_pem)
    }

    /// Writes `ca.pem`, `ca.key`, `<role>.pem` and `<role>.key` into `dir` (created if
    /// missing). Refuses to replace an existing file unless `overwrite`. Key files are made
    /// readable by the owner only. Returns the paths written.
    pub fn write(&self, dir: &Path, overwrite: bool) -> Result<Vec<PathBuf>, NetError> {
        let io_err = |path: &Path, e: std::io::Error| {
            NetError::Tls(format!("cannot write {}: {e}", path.display()))
        };
        std::fs::create_dir_all(dir).map_err(|e| io_err(dir, e))?;
        let mut files: Vec<(PathBuf, &str, bool)> = vec![
            (dir.join("ca.pem"), &self.ca_cert_pem, false),
            (dir.join("ca.key"), &self.ca_key_pem, true),
        ];
        for r in &self.roles {
            files.push((dir.join(format!("{}.pem", r.role)), &r.cert_pem, false));
            files.push((dir.join(format!("{}.key", r.role)), &r.key_pem, true));
        }
        if !overwrite {
            if let Some((path, _, _)) = files.iter().find(|(p, _, _)| p.exists()) {
                return Err(NetError::Tls(format!(
                    "{} already exists; refusing to replace the keys of an existing deployment (`comet keys --force` replaces them)",
                    path.display()
                )));
            }
        }
        for (path, text, secret) in &files {
            write_file(path, text.as_bytes(), *secret).map_err(|e| io_err(path, e))?;
        }
        Ok(files.into_iter().map(|(p, _, _)| p).collect())
    }
}

fn write_file(path: &Path, bytes: &[u8], secret: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Generates a deployment CA and per-role keys and writes them into `out_dir` (see the module
/// docs for the file names). Refuses to replace existing files unless `overwrite`. Returns
/// the paths written.
pub fn generate_keys(
    out_dir: &Path,
    roles: &[&str],
    overwrite: bool,
) -> Result<Vec<PathBuf>, NetError> {
    Deployment::generate(roles)?.write(out_dir, overwrite)
}

/// What one party presents and trusts: its role, certificate chain and key, and the CA.
pub struct TlsIdentity {
    role: String,
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        Self {
            role: self.role.clone(),
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

impl fmt::Debug for TlsIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsIdentity")
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

fn read_pem_file(path: &Path) -> Result<Vec<u8>, NetError> {
    std::fs::read(path).map_err(|e| {
        NetError::Tls(format!(
            "cannot read {}: {e} (make the deployment's keys with `comet keys --out DIR`)",
            path.display()
        ))
    })
}

impl TlsIdentity {
    /// Loads `role`'s identity from a directory written by [`generate_keys`]: `ca.pem`,
    /// `<role>.pem` and `<role>.key`.
    pub fn load(dir: &Path, role: &str) -> Result<Self, NetError> {
        validate_role(role)?;
        let ca = read_pem_file(&dir.join("ca.pem"))?;
        let cert = read_pem_file(&dir.join(format!("{role}.pem")))?;
        let key = read_pem_file(&dir.join(format!("{role}.key")))?;
        Self::from_pem_bytes(role, &ca, &cert, &key).map_err(|e| match e {
            NetError::Tls(msg) => NetError::Tls(format!("{}: {msg}", dir.display())),
            other => other,
        })
    }

    /// Builds an identity from PEM text (CA certificate, role certificate chain, role key).
    pub fn from_pem(
        role: &str,
        ca_pem: &str,
        cert_pem: &str,
        key_pem: &str,
    ) -> Result<Self, NetError> {
        Self::from_pem_bytes(
            role,
            ca_pem.as_bytes(),
            cert_pem.as_bytes(),
            key_pem.as_bytes(),
        )
    }

    fn from_pem_bytes(
        role: &str,
        ca_pem: &[u8],
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> Result<Self, NetError> {
        validate_role(role)?;
        let ca = CertificateDer::from_pem_slice(ca_pem).map_err(|e| {
            NetError::Tls(format!(
                "CA certificate (ca.pem) is not a PEM certificate: {e}"
            ))
        })?;
        let chain = CertificateDer::pem_slice_iter(cert_pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| NetError::Tls(format!("certificate of '{role}' is not valid PEM: {e}")))?;
        if chain.is_empty() {
            return Err(NetError::Tls(format!(
                "certificate file of '{role}' holds no certificate"
            )));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| {
            NetError::Tls(format!(
                "private key of '{role}' is not a PEM private key: {e}"
            ))
        })?;
        let name = role_dns_name(role);
        if !cert_names(&chain[0], &name) {
            return Err(NetError::Tls(format!(
                "certificate given for role '{role}' does not name {name}"
            )));
        }
        let identity = Self {
            role: role.to_string(),
            ca,
            chain,
            key,
        };
        // Catch files from different `comet keys` runs here rather than at the peer.
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(identity.roots()?), provider())
                .build()
                .map_err(|e| NetError::Tls(format!("cannot build a certificate verifier: {e}")))?;
        if let Err(e) =
            verifier.verify_client_cert(&identity.chain[0], &identity.chain[1..], UnixTime::now())
        {
            return Err(NetError::Tls(format!(
                "certificate of '{role}' is not valid under the CA in ca.pem ({e}); are the files from different `comet keys` runs?"
            )));
        }
        // Building a config checks that the key matches the certificate.
        identity.client_config()?;
        Ok(identity)
    }

    /// The role this identity authenticates as.
    pub fn role(&self) -> &str {
        &self.role
    }

    fn roots(&self) -> Result<RootCertStore, NetError> {
        let mut roots = RootCertStore::empty();
        roots
            .add(self.ca.clone())
            .map_err(|e| NetError::Tls(format!("unusable CA certificate: {e}")))?;
        Ok(roots)
    }

    /// Client-side configuration that trusts only the deployment CA (the expected server role
    /// is checked through the server name given at connect time).
    pub(crate) fn client_config(&self) -> Result<Arc<ClientConfig>, NetError> {
        let config = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| NetError::Tls(e.to_string()))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| {
                NetError::Tls(format!(
                    "certificate and key of '{}' do not fit together: {e}",
                    self.role
                ))
            })?;
        Ok(Arc::new(config))
    }

    /// Server-side configuration that requires a client certificate from the deployment CA
    /// naming one of `expected_clients`.
    pub(crate) fn server_config(
        &self,
        expected_clients: &[&str],
    ) -> Result<Arc<ServerConfig>, NetError> {
        let inner =
            WebPkiClientVerifier::builder_with_provider(Arc::new(self.roots()?), provider())
                .build()
                .map_err(|e| NetError::Tls(format!("cannot build the client verifier: {e}")))?;
        let verifier = RoleClientVerifier {
            inner,
            allowed: expected_clients.iter().map(|r| role_dns_name(r)).collect(),
        };
        let config = ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| NetError::Tls(e.to_string()))?
            .with_client_cert_verifier(Arc::new(verifier))
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| {
                NetError::Tls(format!(
                    "certificate and key of '{}' do not fit together: {e}",
                    self.role
                ))
            })?;
        Ok(Arc::new(config))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The TLS server name under which a role's certificate is checked.
pub(crate) fn server_name(role: &str) -> Result<ServerName<'static>, NetError> {
    validate_role(role)?;
    ServerName::try_from(role_dns_name(role))
        .map_err(|e| NetError::Tls(format!("bad role name '{role}': {e}")))
}

/// Whether `cert` is valid for the DNS name `dns_name` (subject alternative names only).
fn cert_names(cert: &CertificateDer<'_>, dns_name: &str) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(name) = ServerName::try_from(dns_name.to_string()) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&name).is_ok()
}

/// Which of `roles` the end-entity certificate `cert` names, if any.
pub(crate) fn role_of(cert: &CertificateDer<'_>, roles: &[&str]) -> Option<String> {
    roles
        .iter()
        .find(|r| cert_names(cert, &role_dns_name(r)))
        .map(|r| r.to_string())
}

/// Client-certificate verifier: the deployment CA's WebPKI checks, then the role-name check.
#[derive(Debug)]
struct RoleClientVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    allowed: Vec<String>,
}

impl ClientCertVerifier for RoleClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if self.allowed.iter().any(|name| cert_names(end_entity, name)) {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// Turns an I/O error that wraps a TLS failure into a [`NetError::Tls`] naming the cause;
/// `None` for plain I/O errors. `expected` lists the roles this side would accept.
pub(crate) fn describe_tls_io_error(err: &std::io::Error, expected: &[&str]) -> Option<NetError> {
    let tls = err.get_ref()?.downcast_ref::<rustls::Error>()?;
    Some(describe_tls_error(tls, expected))
}

/// A [`NetError::Tls`] naming the cause of a TLS failure; `expected` lists the roles this
/// side would accept.
pub(crate) fn describe_tls_error(tls: &rustls::Error, expected: &[&str]) -> NetError {
    let wanted = expected
        .iter()
        .map(|r| role_dns_name(r))
        .collect::<Vec<_>>()
        .join(" or ");
    let msg = match tls {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer)
        | rustls::Error::InvalidCertificate(CertificateError::BadSignature) => {
            "peer certificate is not signed by this deployment's CA (keys from another `comet keys` run?)".to_string()
        }
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!("peer certificate is from this deployment but does not name the expected role {wanted}"),
        rustls::Error::InvalidCertificate(other) => format!("peer certificate rejected: {other:?}"),
        rustls::Error::NoCertificatesPresented => "peer presented no certificate".to_string(),
        rustls::Error::AlertReceived(alert) => format!(
            "peer rejected the TLS handshake (alert {alert:?}): our certificate is not from its deployment CA, \
             or does not name the role it expects"
        ),
        other => format!("TLS failure: {other}"),
    };
    NetError::Tls(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_are_validated() {
        for ok in ["p0", "p1", "dealer", "client", "a-b9"] {
            validate_role(ok).unwrap();
        }
        for bad in [
            "",
            "P0",
            "p 0",
            "-p",
            "p-",
            "p0.comet",
            "ü",
            &"x".repeat(64),
        ] {
            assert!(matches!(validate_role(bad), Err(NetError::Tls(_))), "{bad}");
        }
    }

    #[test]
    fn generated_certificates_name_their_role_only() {
        let d = Deployment::generate(&["p0", "p1"]).unwrap();
        let id = d.identity("p0").unwrap();
        assert_eq!(id.role(), "p0");
        assert_eq!(role_of(&id.chain[0], &["p1", "p0"]).as_deref(), Some("p0"));
        assert_eq!(role_of(&id.chain[0], &["p1", "dealer"]), None);
        assert!(d.identity("dealer").is_err());
        // A role's certificate cannot be loaded as another role.
        let p1 = &d.roles[1];
        let e = TlsIdentity::from_pem("p0", &d.ca_cert_pem, &p1.cert_pem, &p1.key_pem).unwrap_err();
        assert!(e.to_string().contains("does not name p0.comet"), "{e}");
        // A certificate with someone else's key is rejected.
        let p0 = &d.roles[0];
        let e = TlsIdentity::from_pem("p0", &d.ca_cert_pem, &p0.cert_pem, &p1.key_pem).unwrap_err();
        assert!(e.to_string().contains("do not fit"), "{e}");
    }

    #[test]
    fn bad_generation_requests_fail_clearly() {
        assert!(Deployment::generate(&[]).is_err());
        let e = Deployment::generate(&["p0", "p0"]).unwrap_err();
        assert!(e.to_string().contains("twice"), "{e}");
        let e = Deployment::generate(&["P0"]).unwrap_err();
        assert!(e.to_string().contains("invalid role name"), "{e}");
    }

    #[test]
    fn keys_round_trip_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let written = generate_keys(dir.path(), &DEFAULT_ROLES, false).unwrap();
        assert_eq!(written.len(), 2 + 2 * DEFAULT_ROLES.len());
        for role in DEFAULT_ROLES {
            assert_eq!(TlsIdentity::load(dir.path(), role).unwrap().role(), role);
        }
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("p0.key"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(
                mode & 0o077,
                0,
                "private keys must not be group/world readable"
            );
        }
        // A second run refuses to clobber the deployment unless asked to.
        let e = generate_keys(dir.path(), &["p0"], false).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        generate_keys(dir.path(), &["p0"], true).unwrap();
        // p1's files are now from the previous run, ca.pem from the new one.
        let e = TlsIdentity::load(dir.path(), "p1").unwrap_err();
        assert!(e.to_string().contains("different `comet keys` runs"), "{e}");
        // Missing and corrupt files name the file.
        let e = TlsIdentity::load(dir.path(), "nobody").unwrap_err();
        assert!(e.to_string().contains("nobody.pem"), "{e}");
        std::fs::write(dir.path().join("p1.key"), "not a key").unwrap();
        let e = TlsIdentity::load(dir.path(), "p1").unwrap_err();
        assert!(e.to_string().contains("private key of 'p1'"), "{e}");
    }
}
