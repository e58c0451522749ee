//! The renewal decision, free of IO: given what is stored and what is wanted, what to store
//! and what the webhook's `caBundle` must trust. Running it again changes nothing.

use std::time::Duration;

use time::OffsetDateTime;

use crate::{Authority, Pem, Result, inspect::inspect};

/// What the serving certificate must be.
#[derive(Clone, Debug)]
pub struct Wanted {
    /// DNS names and IP addresses (as text) the certificate must carry.
    pub names: Vec<String>,
    pub validity: Duration,
    /// Renew when less than this is left (of the serving certificate or the CA).
    pub renew_before: Duration,
}

/// What is stored: the CA and the serving certificate, either possibly missing.
#[derive(Clone, Debug, Default)]
pub struct Stored {
    pub ca: Option<Pem>,
    pub serving: Option<Pem>,
    /// CA certificates still trusted while a new CA takes over.
    pub previous_cas: Vec<String>,
}

/// Why the stored certificates were (or were not) replaced.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    UpToDate,
    CreatedCa,
    RenewedCa,
    IssuedServing(&'static str),
}

/// The result of [`ensure`].
#[derive(Clone, Debug)]
pub struct Ensured {
    pub stored: Stored,
    pub actions: Vec<Action>,
    /// PEM certificates the webhook configuration must trust: the current CA, plus a
    /// previous one while it has not expired, so rotation never fails an admission.
    pub ca_bundle: String,
}

impl Ensured {
    pub fn changed(&self) -> bool {
        self.actions != [Action::UpToDate]
    }
}

/// Decides and, where needed, issues.
pub fn ensure(stored: Stored, wanted: &Wanted, now: OffsetDateTime) -> Result<Ensured> {
    let mut actions = Vec::new();
    let mut previous_cas: Vec<String> = stored
        .previous_cas
        .into_iter()
        .filter(|pem| inspect(pem).is_ok_and(|info| info.not_after > now))
        .collect();
    let replaced_ca = stored.ca.as_ref().map(|ca| ca.cert.clone());
    let usable_ca = stored
        .ca
        .filter(|ca| fresh(&ca.cert, now, wanted.renew_before))
        .and_then(|ca| Authority::from_pem(&ca).ok());
    let (ca, ca_is_new) = match usable_ca {
        Some(ca) => (ca, false),
        None => {
            // A name of its own per CA, so that a certificate's issuer tells which CA made it.
            let name = format!("multicluster-webhook-ca-{}", now.unix_timestamp());
            let ca = Authority::generate(&name, wanted.validity.saturating_mul(4))?;
            actions.push(if replaced_ca.is_none() {
                Action::CreatedCa
            } else {
                Action::RenewedCa
            });
            (ca, true)
        }
    };
    let serving = match stored.serving {
        Some(serving) if !ca_is_new => match serving_problem(&serving, &ca, wanted, now) {
            None => serving,
            Some(why) => {
                actions.push(Action::IssuedServing(why));
                issue(&ca, wanted)?
            }
        },
        _ => {
            actions.push(Action::IssuedServing("no serving certificate for this CA"));
            issue(&ca, wanted)?
        }
    };
    if actions.is_empty() {
        actions.push(Action::UpToDate);
    }
    if ca_is_new
        && let Some(old) =
            replaced_ca.filter(|pem| inspect(pem).is_ok_and(|info| info.not_after > now))
    {
        // Keep trusting the CA being replaced until it expires: the webhook may still serve
        // a certificate it issued until its Secret volume is updated.
        previous_cas.push(old);
    }
    let ca_pem = ca.pem();
    previous_cas.retain(|pem| pem.trim() != ca_pem.cert.trim());
    let ca_bundle = std::iter::once(ca_pem.cert.trim())
        .chain(previous_cas.iter().map(|p| p.trim()))
        .collect::<Vec<_>>()
        .join("\n")
        + "\n";
    Ok(Ensured {
        stored: Stored {
            ca: Some(ca_pem),
            serving: Some(serving),
            previous_cas,
        },
        actions,
        ca_bundle,
    })
}

fn issue(ca: &Authority, wanted: &Wanted) -> Result<Pem> {
    let names: Vec<&str> = wanted.names.iter().map(String::as_str).collect();
    let common_name = names.first().copied().unwrap_or("webhook");
    ca.issue_serving(common_name, &names, wanted.validity)
}

fn fresh(cert_pem: &str, now: OffsetDateTime, renew_before: Duration) -> bool {
    inspect(cert_pem)
        .is_ok_and(|info| info.not_after - renew_before > now && info.not_before <= now)
}

/// Why a stored serving certificate cannot stay, if it cannot.
fn serving_problem(
    serving: &Pem,
    ca: &Authority,
    wanted: &Wanted,
    now: OffsetDateTime,
) -> Option<&'static str> {
    let Ok(info) = inspect(&serving.cert) else {
        return Some("the stored certificate is unreadable");
    };
    let Ok(ca_info) = inspect(&ca.pem().cert) else {
        return Some("the CA is unreadable");
    };
    if info.issuer != ca_info.subject {
        return Some("the stored certificate was not issued by the CA");
    }
    if !fresh(&serving.cert, now, wanted.renew_before) {
        return Some("the stored certificate expires soon");
    }
    let has = |name: &String| match name.parse::<std::net::IpAddr>() {
        Ok(ip) => info.ip_addresses.contains(&ip),
        Err(_) => info.dns_names.contains(name),
    };
    if !wanted.names.iter().all(has) {
        return Some("the stored certificate lacks a wanted name");
    }
    if rcgen::KeyPair::from_pem(&serving.key).is_err() {
        return Some("the stored key is unreadable");
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    fn wanted(names: &[&str]) -> Wanted {
        Wanted {
            names: names.iter().map(|n| n.to_string()).collect(),
            validity: 90 * DAY,
            renew_before: 30 * DAY,
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    #[test]
    fn creates_then_changes_nothing_when_run_again() {
        let first = ensure(
            Stored::default(),
            &wanted(&["webhook.ns.svc", "127.0.0.1"]),
            now(),
        )
        .unwrap();
        assert_eq!(first.actions[0], Action::CreatedCa);
        let again = ensure(
            first.stored.clone(),
            &wanted(&["webhook.ns.svc", "127.0.0.1"]),
            now(),
        )
        .unwrap();
        assert_eq!(again.actions, [Action::UpToDate]);
        assert!(!again.changed());
        assert_eq!(
            again.stored.serving.unwrap().cert,
            first.stored.serving.unwrap().cert
        );
        assert_eq!(again.ca_bundle, first.ca_bundle);
    }

    #[test]
    fn renews_the_serving_certificate_before_it_expires_keeping_the_ca() {
        let first = ensure(Stored::default(), &wanted(&["a.svc"]), now()).unwrap();
        let later = now() + 70 * DAY;
        let renewed = ensure(first.stored.clone(), &wanted(&["a.svc"]), later).unwrap();
        assert_eq!(
            renewed.actions,
            [Action::IssuedServing("the stored certificate expires soon")]
        );
        assert_eq!(
            renewed.stored.ca.unwrap().cert,
            first.stored.ca.unwrap().cert,
            "same CA: caBundle unchanged"
        );
        assert_eq!(renewed.ca_bundle, first.ca_bundle);
    }

    #[test]
    fn new_names_get_a_new_certificate() {
        let first = ensure(Stored::default(), &wanted(&["a.svc"]), now()).unwrap();
        let more = ensure(first.stored, &wanted(&["a.svc", "b.svc"]), now()).unwrap();
        assert_eq!(
            more.actions,
            [Action::IssuedServing(
                "the stored certificate lacks a wanted name"
            )]
        );
        let info = inspect(&more.stored.serving.unwrap().cert).unwrap();
        assert_eq!(info.dns_names, ["a.svc", "b.svc"]);
    }

    #[test]
    fn an_expiring_ca_is_replaced_and_the_old_one_stays_trusted() {
        let first = ensure(Stored::default(), &wanted(&["a.svc"]), now()).unwrap();
        let old_ca = first.stored.ca.clone().unwrap().cert;
        let later = now() + 340 * DAY; // the CA lives 360 days: within renew_before
        let renewed = ensure(first.stored, &wanted(&["a.svc"]), later).unwrap();
        assert_eq!(renewed.actions[0], Action::RenewedCa);
        assert_ne!(renewed.stored.ca.as_ref().unwrap().cert, old_ca);
        assert!(
            renewed.ca_bundle.contains(old_ca.trim()),
            "the old CA is trusted until it expires"
        );
        assert_eq!(renewed.stored.previous_cas, std::slice::from_ref(&old_ca));
        let after_expiry = ensure(
            renewed.stored.clone(),
            &wanted(&["a.svc"]),
            now() + 400 * DAY,
        )
        .unwrap();
        assert!(
            !after_expiry.ca_bundle.contains(old_ca.trim()),
            "an expired CA is dropped"
        );
        let info = inspect(&renewed.stored.serving.unwrap().cert).unwrap();
        assert_eq!(
            info.issuer,
            inspect(&renewed.stored.ca.unwrap().cert).unwrap().subject
        );
    }
}
