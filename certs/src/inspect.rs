//! What an existing certificate says: names, validity, issuer.

use std::net::IpAddr;

use time::OffsetDateTime;
use x509_parser::{
    extensions::GeneralName,
    pem::parse_x509_pem,
    prelude::{FromDer, X509Certificate},
};

/// The parts of a certificate that decide whether it must be renewed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertInfo {
    pub subject: String,
    pub issuer: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub is_ca: bool,
}

/// Why a PEM certificate cannot be read.
#[derive(Debug, thiserror::Error)]
#[error("not a readable PEM certificate: {0}")]
pub struct InspectError(String);

/// Reads the first certificate of a PEM text.
pub fn inspect(pem: &str) -> Result<CertInfo, InspectError> {
    let (_, pem) = parse_x509_pem(pem.as_bytes()).map_err(|e| InspectError(e.to_string()))?;
    let (_, cert) =
        X509Certificate::from_der(&pem.contents).map_err(|e| InspectError(e.to_string()))?;
    let mut dns_names = Vec::new();
    let mut ip_addresses = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(dns) => dns_names.push(dns.to_string()),
                GeneralName::IPAddress(bytes) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*bytes) {
                        ip_addresses.push(IpAddr::from(v4));
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*bytes) {
                        ip_addresses.push(IpAddr::from(v6));
                    }
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        not_before: cert.validity().not_before.to_datetime(),
        not_after: cert.validity().not_after.to_datetime(),
        dns_names,
        ip_addresses,
        is_ca: cert.is_ca(),
    })
}
