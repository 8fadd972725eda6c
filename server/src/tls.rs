//! TLS with rustls (ring provider). In development mode the first start makes a
//! local CA and a server certificate for localhost under the certs dir; the agent
//! and curl trust `ca.pem`. In production the operator puts `server.pem` (chain)
//! and `server-key.pem` there and turns generation off.

use std::{path::Path, sync::Arc};

use anyhow::Context as _;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use rustls::pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};
use time::{Duration, OffsetDateTime};

use crate::files::{write_private, write_public};

pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server-key.pem";

/// Makes the development CA and server certificate where they are missing.
/// An existing CA is reused, so that agents that trust it keep working when only
/// the server certificate is made again (delete `server.pem` to renew it).
pub fn ensure_dev_certs(dir: &Path) -> anyhow::Result<()> {
    let server_ready = dir.join(SERVER_CERT).exists() && dir.join(SERVER_KEY).exists();
    if server_ready {
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let now = OffsetDateTime::now_utc();
    let (ca_key, ca_pem) = if dir.join(CA_CERT).exists() && dir.join(CA_KEY).exists() {
        let key_pem = std::fs::read_to_string(dir.join(CA_KEY)).context("reading the CA key")?;
        let ca_pem = std::fs::read_to_string(dir.join(CA_CERT)).context("reading the CA certificate")?;
        (KeyPair::from_pem(&key_pem).context("parsing the CA key")?, ca_pem)
    } else {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "Handover development CA");
        params.distinguished_name.push(DnType::OrganizationName, "Handover (development)");
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(3650);
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        write_private(&dir.join(CA_KEY), key.serialize_pem().as_bytes())?;
        write_public(&dir.join(CA_CERT), cert.pem().as_bytes())?;
        tracing::info!(dir = %dir.display(), "created a development CA; clients trust {CA_CERT}");
        (key, cert.pem())
    };
    let issuer = Issuer::from_ca_cert_pem(&ca_pem, ca_key).context("reading the CA certificate")?;

    let mut params = CertificateParams::new(vec!["localhost".to_owned()])?;
    params.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
    params.subject_alt_names.push(SanType::IpAddress(std::net::Ipv6Addr::LOCALHOST.into()));
    params.distinguished_name.push(DnType::CommonName, "localhost");
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature, KeyUsagePurpose::KeyEncipherment];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - Duration::days(1);
    params.not_after = now + Duration::days(397);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write_private(&dir.join(SERVER_KEY), key.serialize_pem().as_bytes())?;
    // The chain: the server certificate, then the CA that signed it.
    write_public(&dir.join(SERVER_CERT), format!("{}{}", cert.pem(), ca_pem).as_bytes())?;
    tracing::info!(dir = %dir.display(), "created a development server certificate for localhost, 127.0.0.1 and ::1");
    Ok(())
}

/// Loads the server certificate chain and key into a rustls configuration.
pub fn server_config(dir: &Path) -> anyhow::Result<rustls::ServerConfig> {
    let cert_path = dir.join(SERVER_CERT);
    let key_path = dir.join(SERVER_KEY);
    let chain = CertificateDer::pem_file_iter(&cert_path)
        .with_context(|| format!("reading {}", cert_path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing {}", cert_path.display()))?;
    anyhow::ensure!(!chain.is_empty(), "{} holds no certificate", cert_path.display());
    let key = PrivateKeyDer::from_pem_file(&key_path).with_context(|| format!("reading {}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the server certificate and key do not match")?;
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dev_certs_are_made_once_with_private_keys_and_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        ensure_dev_certs(dir.path()).expect("made");
        let ca_before = std::fs::read(dir.path().join(CA_CERT)).expect("ca");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            for key in [CA_KEY, SERVER_KEY] {
                let mode = std::fs::metadata(dir.path().join(key)).expect("key").permissions().mode();
                assert_eq!(mode & 0o777, 0o600, "{key}");
            }
        }
        server_config(dir.path()).expect("loads");

        // Renewing the server certificate keeps the CA that clients trust.
        std::fs::remove_file(dir.path().join(SERVER_CERT)).expect("remove");
        ensure_dev_certs(dir.path()).expect("renewed");
        assert_eq!(std::fs::read(dir.path().join(CA_CERT)).expect("ca"), ca_before);
        server_config(dir.path()).expect("loads again");
    }
}
