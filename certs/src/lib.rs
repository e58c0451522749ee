//! A small certificate authority built on rcgen: create a CA, issue serving and client
//! certificates from it, and write PEM files atomically. No shelling out to openssl.

use std::{fs, io, path::Path, time::Duration};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;

/// Errors of certificate creation and storage.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot generate or sign a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: io::Error,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A certificate with its private key, both PEM encoded (the key as PKCS#8).
#[derive(Clone, Debug)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

impl Pem {
    /// Writes `<stem>.crt` and `<stem>.key` in `dir`, each through a temporary file and a rename
    /// so that a reader never sees half a file.
    pub fn write(&self, dir: &Path, stem: &str) -> Result<()> {
        write_atomically(&dir.join(format!("{stem}.crt")), self.cert.as_bytes())?;
        write_atomically(&dir.join(format!("{stem}.key")), self.key.as_bytes())
    }
}

pub mod bootstrap;
pub mod inspect;
pub mod renew;

/// A certificate authority that can issue certificates.
pub struct Authority {
    issuer: Issuer<'static, KeyPair>,
    cert_pem: String,
    key_pem: String,
}

impl Authority {
    /// A new self-signed CA with the given common name, valid for `validity`.
    pub fn generate(common_name: &str, validity: Duration) -> Result<Self> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name, &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, validity);
        let key = KeyPair::generate()?;
        let key_pem = key.serialize_pem();
        let cert_pem = params.self_signed(&key)?.pem();
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem,
            key_pem,
        })
    }

    /// An existing CA, from its PEM certificate and PKCS#8 key.
    pub fn from_pem(pem: &Pem) -> Result<Self> {
        let key = KeyPair::from_pem(&pem.key)?;
        Ok(Self {
            issuer: Issuer::from_ca_cert_pem(&pem.cert, key)?,
            cert_pem: pem.cert.clone(),
            key_pem: pem.key.clone(),
        })
    }

    /// The CA certificate and key.
    pub fn pem(&self) -> Pem {
        Pem {
            cert: self.cert_pem.clone(),
            key: self.key_pem.clone(),
        }
    }

    /// A serving certificate for `names`: DNS names, or IP addresses written as such.
    pub fn issue_serving(
        &self,
        common_name: &str,
        names: &[&str],
        validity: Duration,
    ) -> Result<Pem> {
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = name(common_name, &[]);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(params, validity)
    }

    /// A client certificate: Kubernetes reads the user from the common name and the groups
    /// from the organizations.
    pub fn issue_client(&self, user: &str, groups: &[&str], validity: Duration) -> Result<Pem> {
        let mut params = CertificateParams::default();
        params.distinguished_name = name(user, groups);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, validity)
    }

    /// A certificate good for both ends of a connection (etcd peers and clients).
    pub fn issue_peer(&self, common_name: &str, names: &[&str], validity: Duration) -> Result<Pem> {
        let sans: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(sans)?;
        params.distinguished_name = name(common_name, &[]);
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        self.issue(params, validity)
    }

    fn issue(&self, mut params: CertificateParams, validity: Duration) -> Result<Pem> {
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.use_authority_key_identifier_extension = true;
        set_validity(&mut params, validity);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// A new key pair (ECDSA P-256) as PEM: the private key (PKCS#8) and the public key (SPKI),
/// e.g. for signing and verifying service-account tokens.
pub fn generate_key_pair_pem() -> Result<Pem> {
    let key = KeyPair::generate()?;
    Ok(Pem {
        cert: key.public_key_pem(),
        key: key.serialize_pem(),
    })
}

/// Writes `contents` to `path` through a temporary file in the same directory and a rename.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let error = |source| Error::Write {
        path: path.display().to_string(),
        source,
    };
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    fs::write(&tmp, contents).map_err(error)?;
    fs::rename(&tmp, path).map_err(error)
}

fn name(common_name: &str, organizations: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    for org in organizations {
        dn.push(DnType::OrganizationName, *org);
    }
    dn
}

fn set_validity(params: &mut CertificateParams, validity: Duration) {
    // Backdate a little so that clocks a few minutes apart still accept a fresh certificate.
    let now = OffsetDateTime::now_utc();
    params.not_before = now - Duration::from_secs(300);
    params.not_after = now + validity;
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn parse(pem: &str) -> Vec<u8> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).expect("valid PEM");
        pem.contents
    }

    #[test]
    fn serving_certificate_names_dns_and_ip_and_chains_to_ca() {
        let ca = Authority::generate("test-ca", DAY).unwrap();
        let leaf = ca
            .issue_serving("webhook", &["webhook.ns.svc", "127.0.0.1"], DAY)
            .unwrap();
        let der = parse(&leaf.cert);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let san = cert.subject_alternative_name().unwrap().unwrap();
        let names = &san.value.general_names;
        assert!(
            names.contains(&GeneralName::DNSName("webhook.ns.svc")),
            "{names:?}"
        );
        assert!(
            names.contains(&GeneralName::IPAddress(&[127, 0, 0, 1])),
            "{names:?}"
        );
        let ca_der = parse(&ca.pem().cert);
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        assert_eq!(cert.issuer(), ca_cert.subject());
        assert!(ca_cert.is_ca());
        assert!(!cert.is_ca());
    }

    #[test]
    fn client_certificate_carries_user_and_groups() {
        let ca = Authority::generate("test-ca", DAY).unwrap();
        let client = ca.issue_client("admin", &["system:masters"], DAY).unwrap();
        let der = parse(&client.cert);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let subject = cert.subject().to_string();
        assert!(subject.contains("CN=admin"), "{subject}");
        assert!(subject.contains("O=system:masters"), "{subject}");
        assert!(client.key.starts_with("-----BEGIN PRIVATE KEY-----"));
    }

    #[test]
    fn validity_is_backdated_and_bounded() {
        let ca = Authority::generate("test-ca", DAY).unwrap();
        let der = parse(&ca.pem().cert);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        assert!(cert.validity().not_before.timestamp() < now - 60);
        assert!(cert.validity().not_after.timestamp() <= now + 86_400 + 5);
    }

    #[test]
    fn write_replaces_files_atomically() {
        let dir = tempfile_dir();
        let ca = Authority::generate("test-ca", DAY).unwrap();
        ca.pem().write(&dir, "ca").unwrap();
        ca.pem().write(&dir, "ca").unwrap();
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names.len(), 2, "no temporary files left behind: {names:?}");
        fs::remove_dir_all(dir).unwrap();
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "certs-test-{}-{}",
            std::process::id(),
            OffsetDateTime::now_utc().unix_timestamp_nanos()
        ));
        fs::create_dir_all(&dir).unwrap();
        dir
    }
}
