//! Cluster CA and node certificates: generation (for `concordant init` and tests) and
//! loading from PEM files into the rustls types the transport uses, with checks that the
//! pieces fit (chain signed by the CA, key matching the certificate).
//!
//! It owns certificate naming (a node's certificate is valid for the DNS name
//! [`node_dns_name`] of its id). It reads the files it is given and writes nothing; it must
//! not open connections (the transport builds rustls configs from a [`TlsIdentity`]).

use std::fmt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
use rustls::sign::CertifiedKey;
use rustls::InconsistentKeys;
use rustls_pki_types::pem::{Error as PemError, PemObject};
use rustls_pki_types::{CertificateDer, DnsName, PrivateKeyDer, ServerName, UnixTime};
use webpki::{EndEntityCert, KeyUsage};

/// Everything one node needs for mutual TLS: the cluster CA it trusts, its own certificate
/// chain (whose DNS subject alternative name is its node id) and its private key.
#[derive(Debug)]
pub struct TlsIdentity {
    /// The cluster CA certificate; peers must present certificates signed by it.
    pub ca: CertificateDer<'static>,
    /// This node's certificate chain, leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// This node's private key.
    pub key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        TlsIdentity {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
        }
    }
}

/// Why a certificate or key could not be generated, read or used. Messages name the file
/// (or the PEM text) they are about.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A file could not be read.
    #[error("{}: cannot read: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// A certificate or key is malformed, of the wrong kind, or does not fit the others
    /// (not signed by the CA, key not matching the certificate, ...).
    #[error("{what}: {message}")]
    Invalid {
        /// The file, or which PEM text (e.g. `CA certificate (PEM text)`).
        what: String,
        /// What is wrong.
        message: String,
    },
    /// rcgen failed to make a key or certificate.
    #[error("cannot generate {what}: {source}")]
    Generate {
        /// What was being generated.
        what: String,
        /// rcgen's error.
        source: rcgen::Error,
    },
    /// The node id cannot be turned into a TLS name.
    #[error("node id {id:?} cannot name a certificate: {message}")]
    NodeName {
        /// The node id.
        id: String,
        /// Why.
        message: String,
    },
}

/// A cluster CA able to sign node certificates: its certificate and private key, in PEM.
#[derive(Clone)]
pub struct CaBundle {
    /// The CA certificate (PEM).
    pub cert_pem: String,
    /// The CA private key (PKCS#8 PEM). Secret.
    pub key_pem: String,
}

impl fmt::Debug for CaBundle {
    /// Shows the certificate, never the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaBundle")
            .field("cert_pem", &self.cert_pem)
            .field("key_pem", &"<redacted>")
            .finish()
    }
}

/// Start of the CA's common name; the cluster id follows (cut at 64 characters in all).
const CA_NAME_PREFIX: &str = "concordant CA ";

fn generated(what: &str) -> impl FnOnce(rcgen::Error) -> CertError + '_ {
    move |source| CertError::Generate {
        what: what.to_string(),
        source,
    }
}

fn invalid(what: &str, message: impl Into<String>) -> CertError {
    CertError::Invalid {
        what: what.to_string(),
        message: message.into(),
    }
}

/// Validity of every certificate made here: long enough never to matter for a cluster.
fn set_validity(params: &mut CertificateParams) {
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2200, 1, 1);
}

fn ca_params(common_name: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    set_validity(&mut params);
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// Makes a new cluster CA (ECDSA P-256, valid 2020 to 2200) whose common name carries the
/// cluster id.
pub fn generate_ca(cluster: &str) -> Result<CaBundle, CertError> {
    let key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generated("the CA key"))?;
    let mut name = format!("{CA_NAME_PREFIX}{cluster}");
    if name.chars().count() > 64 {
        name = name.chars().take(64).collect();
    }
    let cert = ca_params(&name)
        .self_signed(&key)
        .map_err(generated("the CA certificate"))?;
    Ok(CaBundle {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The DNS name a node's certificate carries and peers verify: the node id itself when it
/// is a valid DNS name (`n1`, `node_7`, ...); otherwise (all digits, leading or trailing
/// `-`, 64 characters, ...) the hex of the id in labels under `id.concordant`. Ids never
/// contain dots, so the two forms cannot collide.
pub fn node_dns_name(node_id: &str) -> String {
    if !node_id.contains('.') && DnsName::try_from(node_id).is_ok() {
        return node_id.to_string();
    }
    let hex = hex::encode(node_id.as_bytes());
    let mut labels: Vec<&str> = Vec::new();
    let mut rest = hex.as_str();
    while !rest.is_empty() {
        let (label, tail) = rest.split_at(rest.len().min(60));
        labels.push(label);
        rest = tail;
    }
    labels.push("id");
    labels.push("concordant");
    labels.join(".")
}

/// The TLS server name to dial node `node_id` with; its certificate is valid for it.
pub fn node_server_name(node_id: &str) -> Result<ServerName<'static>, CertError> {
    ServerName::try_from(node_dns_name(node_id)).map_err(|e| CertError::NodeName {
        id: node_id.to_string(),
        message: e.to_string(),
    })
}

/// Makes a certificate and key (PEM) for node `node_id`, signed by `ca`: ECDSA P-256,
/// DNS name [`node_dns_name`] (the id itself for ids like `n1`), common name the id,
/// usable for TLS server and client authentication.
pub fn generate_node_cert(ca: &CaBundle, node_id: &str) -> Result<(String, String), CertError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|e| {
        invalid(
            "CA key (PEM text)",
            format!("not a usable private key: {e}"),
        )
    })?;
    let ca_der = parse_single_cert("CA certificate (PEM text)", ca.cert_pem.as_bytes())?;
    let ca_name = ca_common_name(&ca_der)?;
    let issuer = Issuer::new(ca_params(&ca_name), ca_key);

    let dns = node_dns_name(node_id);
    let dns = rcgen::string::Ia5String::try_from(dns).map_err(|e| CertError::NodeName {
        id: node_id.to_string(),
        message: e.to_string(),
    })?;
    let mut params = CertificateParams::default();
    set_validity(&mut params);
    params.subject_alt_names = vec![SanType::DnsName(dns)];
    params.distinguished_name = DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, node_id);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let key =
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(generated("a node key"))?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(generated("a node certificate"))?;
    let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
    // Check the result the way peers will: it must chain to the CA.
    identity_from_pem(&ca.cert_pem, &cert_pem, &key_pem)?;
    Ok((cert_pem, key_pem))
}

/// The common name of a CA made by [`generate_ca`]: its subject is a single CN attribute.
fn ca_common_name(ca: &CertificateDer<'_>) -> Result<String, CertError> {
    const WHAT: &str = "CA certificate (PEM text)";
    let parsed = EndEntityCert::try_from(ca)
        .map_err(|e| invalid(WHAT, format!("not a valid certificate: {e}")))?;
    let not_ours = || {
        invalid(
            WHAT,
            "its subject is not a single common name: only a CA made by `concordant init` \
             can sign node certificates here",
        )
    };
    // Name ::= SEQUENCE (already stripped) OF SET OF SEQUENCE { OID, value }.
    let (set, rest) = der_read(parsed.subject(), 0x31).ok_or_else(not_ours)?;
    let (attr, set_rest) = der_read(set, 0x30).ok_or_else(not_ours)?;
    let (oid, value) = der_read(attr, 0x06).ok_or_else(not_ours)?;
    let (name, value_rest) = der_read(value, 0x0c).ok_or_else(not_ours)?;
    if !rest.is_empty() || !set_rest.is_empty() || !value_rest.is_empty() || oid != [85, 4, 3] {
        return Err(not_ours());
    }
    String::from_utf8(name.to_vec()).map_err(|_| not_ours())
}

/// Reads one DER element with the given tag: (its contents, what follows it).
fn der_read(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&first, rest) = input.split_first()?;
    if first != tag {
        return None;
    }
    let (&len0, rest) = rest.split_first()?;
    let (len, rest) = match len0 {
        0..=0x7f => (usize::from(len0), rest),
        0x81 => (usize::from(*rest.first()?), rest.get(1..)?),
        0x82 => (
            usize::from(*rest.first()?) << 8 | usize::from(*rest.get(1)?),
            rest.get(2..)?,
        ),
        _ => return None,
    };
    Some((rest.get(..len)?, rest.get(len..)?))
}

fn parse_certs(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(what, format!("bad PEM: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(what, "no CERTIFICATE section found"));
    }
    Ok(certs)
}

fn parse_single_cert(what: &str, pem: &[u8]) -> Result<CertificateDer<'static>, CertError> {
    let mut certs = parse_certs(what, pem)?;
    if certs.len() > 1 {
        return Err(invalid(
            what,
            format!("{} certificates found; expected exactly one", certs.len()),
        ));
    }
    Ok(certs.remove(0))
}

fn parse_key(what: &str, pem: &[u8]) -> Result<PrivateKeyDer<'static>, CertError> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        PemError::NoItemsFound => invalid(what, "no PRIVATE KEY section found"),
        other => invalid(what, format!("bad PEM: {other}")),
    })
}

/// Builds and checks an identity from PEM text: one CA certificate, the node's chain (leaf
/// first) and its private key. The chain must be signed by the CA for both server and
/// client authentication, and the key must match the leaf.
pub fn identity_from_pem(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<TlsIdentity, CertError> {
    build_identity(
        ("CA certificate (PEM text)", ca_pem.as_bytes()),
        ("node certificate (PEM text)", cert_pem.as_bytes()),
        ("node key (PEM text)", key_pem.as_bytes()),
    )
}

/// Reads and checks a node's identity from its CA, certificate and key files (PEM); every
/// error names the file at fault.
pub fn load_identity(ca: &Path, cert: &Path, key: &Path) -> Result<TlsIdentity, CertError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| CertError::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let (ca_pem, cert_pem, key_pem) = (read(ca)?, read(cert)?, read(key)?);
    build_identity(
        (&ca.display().to_string(), &ca_pem),
        (&cert.display().to_string(), &cert_pem),
        (&key.display().to_string(), &key_pem),
    )
}

fn build_identity(
    (ca_what, ca_pem): (&str, &[u8]),
    (cert_what, cert_pem): (&str, &[u8]),
    (key_what, key_pem): (&str, &[u8]),
) -> Result<TlsIdentity, CertError> {
    let ca = parse_single_cert(ca_what, ca_pem)?;
    let chain = parse_certs(cert_what, cert_pem)?;
    let key = parse_key(key_what, key_pem)?;

    let anchor = webpki::anchor_from_trusted_cert(&ca)
        .map_err(|e| invalid(ca_what, format!("not a usable CA certificate: {e}")))?;
    let leaf = EndEntityCert::try_from(&chain[0])
        .map_err(|e| invalid(cert_what, format!("not a valid certificate: {e}")))?;
    for usage in [KeyUsage::server_auth(), KeyUsage::client_auth()] {
        leaf.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            std::slice::from_ref(&anchor),
            &chain[1..],
            UnixTime::now(),
            usage,
            None,
            None,
        )
        .map_err(|e| {
            invalid(
                cert_what,
                format!("not valid under the CA in {ca_what} for mutual TLS: {e}"),
            )
        })?;
    }

    let provider = rustls::crypto::ring::default_provider();
    let signing_key = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| invalid(key_what, format!("unusable private key: {e}")))?;
    match CertifiedKey::new(chain.clone(), signing_key).keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
        Err(e) => {
            return Err(invalid(
                key_what,
                format!("does not match the certificate in {cert_what}: {e}"),
            ));
        }
    }
    Ok(TlsIdentity { ca, chain, key })
}

/// A fresh cluster CA and one identity per id, all in memory and never written: for a
/// cluster that lives in one process ([`crate::local::LocalCluster`]: the demo and the
/// benchmark; tests and examples). A real cluster's files come from `concordant init`.
pub fn in_memory_identities(cluster: &str, ids: &[&str]) -> Result<Vec<TlsIdentity>, CertError> {
    let ca = generate_ca(cluster)?;
    ids.iter()
        .map(|id| {
            let (cert, key) = generate_node_cert(&ca, id)?;
            identity_from_pem(&ca.cert_pem, &cert, &key)
        })
        .collect()
}

/// Whether the leaf certificate `cert` is valid for node `node_id` (its DNS name is
/// [`node_dns_name`] of the id). Says nothing about who signed it: the TLS handshake
/// checks that against the CA.
pub fn cert_node_id_matches(cert: &CertificateDer<'_>, node_id: &str) -> bool {
    let Ok(name) = node_server_name(node_id) else {
        return false;
    };
    match EndEntityCert::try_from(cert) {
        Ok(parsed) => parsed.verify_is_valid_for_subject_name(&name).is_ok(),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use rustls::server::WebPkiClientVerifier;
    use rustls::{ClientConfig, ClientConnection, RootCertStore, ServerConfig, ServerConnection};

    #[test]
    fn generated_identities_parse_and_match_their_ids() {
        let ids = in_memory_identities("demo", &["n1", "n2", "node_3"]).unwrap();
        assert_eq!(ids.len(), 3);
        for (identity, id) in ids.iter().zip(["n1", "n2", "node_3"]) {
            assert_eq!(identity.chain.len(), 1);
            assert!(cert_node_id_matches(&identity.chain[0], id));
        }
        assert!(!cert_node_id_matches(&ids[0].chain[0], "n2"));
        assert!(!cert_node_id_matches(&ids[0].chain[0], "n10"));
        assert!(!cert_node_id_matches(&ids[0].chain[0], "N1x"));
        assert!(!cert_node_id_matches(&ids[1].chain[0], "n1"));
        assert!(!cert_node_id_matches(
            &CertificateDer::from(vec![1, 2, 3]),
            "n1"
        ));
        // Both identities trust the same CA.
        assert_eq!(ids[0].ca, ids[1].ca);
    }

    #[test]
    fn every_valid_node_id_gets_a_working_name() {
        let long = "a".repeat(64);
        let odd = [
            "1",
            "0",
            "42",
            "0x1f",
            "-a",
            "a-",
            "_",
            "A_b-9",
            long.as_str(),
        ];
        let ids = in_memory_identities("odd", &odd).unwrap();
        for (identity, id) in ids.iter().zip(odd) {
            assert!(cert_node_id_matches(&identity.chain[0], id), "{id}");
            node_server_name(id).unwrap();
        }
        assert!(!cert_node_id_matches(&ids[0].chain[0], "0"));
        assert_eq!(node_dns_name("n1"), "n1");
        assert_eq!(node_dns_name("1"), "31.id.concordant");
        assert_ne!(node_dns_name(&long), long);
    }

    #[test]
    fn certificates_of_another_ca_are_refused() {
        let ca1 = generate_ca("one").unwrap();
        let ca2 = generate_ca("two").unwrap();
        let (cert, key) = generate_node_cert(&ca1, "n1").unwrap();
        identity_from_pem(&ca1.cert_pem, &cert, &key).unwrap();
        let e = identity_from_pem(&ca2.cert_pem, &cert, &key)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("node certificate (PEM text): not valid under the CA"),
            "{e}"
        );
        let (_, other_key) = generate_node_cert(&ca1, "n2").unwrap();
        let e = identity_from_pem(&ca1.cert_pem, &cert, &other_key)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("node key (PEM text): does not match the certificate"),
            "{e}"
        );
        assert!(!format!("{ca1:?}").contains(&ca1.key_pem));
    }

    #[test]
    fn garbage_files_are_refused_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let ca = generate_ca("demo").unwrap();
        let (cert, key) = generate_node_cert(&ca, "n1").unwrap();
        let write = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        let (ca_path, cert_path, key_path) = (
            write("ca.pem", &ca.cert_pem),
            write("n1.pem", &cert),
            write("n1.key", &key),
        );
        let garbage = write(
            "garbage.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let empty = write("empty.pem", "hello\n");

        let identity = load_identity(&ca_path, &cert_path, &key_path).unwrap();
        assert!(cert_node_id_matches(&identity.chain[0], "n1"));

        let e = load_identity(&garbage, &cert_path, &key_path)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("{}: bad PEM", garbage.display())),
            "{e}"
        );
        let e = load_identity(&ca_path, &empty, &key_path)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("{}: no CERTIFICATE", empty.display())),
            "{e}"
        );
        let e = load_identity(&ca_path, &cert_path, &empty)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("{}: no PRIVATE KEY", empty.display())),
            "{e}"
        );
        let missing = dir.path().join("missing.key");
        let e = load_identity(&ca_path, &cert_path, &missing)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with(&format!("{}: cannot read", missing.display())),
            "{e}"
        );
        // A node certificate is not a CA.
        let e = load_identity(&cert_path, &cert_path, &key_path)
            .unwrap_err()
            .to_string();
        assert!(e.starts_with(&cert_path.display().to_string()), "{e}");
        let e = identity_from_pem("nope", &cert, &key)
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("CA certificate (PEM text): no CERTIFICATE"),
            "{e}"
        );
        let bad_ca = CaBundle {
            cert_pem: ca.cert_pem.clone(),
            key_pem: "junk".into(),
        };
        let e = generate_node_cert(&bad_ca, "n1").unwrap_err().to_string();
        assert!(e.starts_with("CA key (PEM text)"), "{e}");
    }

    fn server_config(id: &TlsIdentity) -> Arc<ServerConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(id.ca.clone()).unwrap();
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .unwrap();
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(id.chain.clone(), id.key.clone_key())
            .unwrap();
        Arc::new(config)
    }

    fn client_config(id: &TlsIdentity) -> Arc<ClientConfig> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(id.ca.clone()).unwrap();
        let config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(id.chain.clone(), id.key.clone_key())
            .unwrap();
        Arc::new(config)
    }

    /// Runs a TLS handshake in memory; Ok if both sides complete it.
    fn handshake(
        client: Arc<ClientConfig>,
        server: Arc<ServerConfig>,
        server_id: &str,
    ) -> Result<ServerConnection, rustls::Error> {
        let mut c = ClientConnection::new(client, node_server_name(server_id).unwrap())?;
        let mut s = ServerConnection::new(server)?;
        for _ in 0..20 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            let mut slice = buf.as_slice();
            while !slice.is_empty() {
                s.read_tls(&mut slice).unwrap();
            }
            s.process_new_packets()?;
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            let mut slice = buf.as_slice();
            while !slice.is_empty() {
                c.read_tls(&mut slice).unwrap();
            }
            c.process_new_packets()?;
            if !c.is_handshaking() && !s.is_handshaking() {
                return Ok(s);
            }
        }
        panic!("handshake did not finish");
    }

    #[test]
    fn mutual_tls_handshake_with_generated_identities() {
        let ids = in_memory_identities("demo", &["n1", "n2"]).unwrap();
        let s = handshake(client_config(&ids[0]), server_config(&ids[1]), "n2").unwrap();
        let peer = s.peer_certificates().unwrap();
        assert!(cert_node_id_matches(&peer[0], "n1"));
        assert!(!cert_node_id_matches(&peer[0], "n2"));
        // The client checks the server name: n2's certificate is not valid for n3.
        assert!(handshake(client_config(&ids[0]), server_config(&ids[1]), "n3").is_err());
        // A client of another cluster CA is refused.
        let other = in_memory_identities("other", &["n1"]).unwrap();
        let mut mixed = other[0].clone();
        mixed.ca = ids[0].ca.clone();
        assert!(handshake(client_config(&mixed), server_config(&ids[1]), "n2").is_err());
    }
}
