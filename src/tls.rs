//! The TLS listener's server configuration: certificate and key read from PEM
//! files, ALPN h2 and http/1.1, and a cell a config reload swaps so that new
//! handshakes get the new certificate while open connections keep theirs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::ServerConfig;
use rustls::crypto::ring;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// Why the certificate or key could not be used; every message names the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is not valid PEM: {source}", path.display())]
    Pem {
        path: PathBuf,
        #[source]
        source: pem::Error,
    },
    #[error("{} holds no certificate (expected a PEM \"CERTIFICATE\" block)", path.display())]
    NoCertificate { path: PathBuf },
    #[error(
        "{} holds no private key (expected a PEM \"PRIVATE KEY\", \"RSA PRIVATE KEY\" or \"EC PRIVATE KEY\" block)",
        path.display()
    )]
    NoKey { path: PathBuf },
    #[error("the private key in {} does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot use the certificate in {} with the key in {}: {source}", cert.display(), key.display())]
    Rejected {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// Reads a certificate chain and its private key (PKCS#8, PKCS#1 or SEC1) and
/// builds a server config with the ring provider, the safe default protocol
/// versions, and ALPN `h2` then `http/1.1`.
pub fn load_server_config(
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = read_certificates(cert_file)?;
    let key = read_private_key(key_file)?;
    let rejected = |source| match source {
        rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
            TlsError::KeyMismatch {
                cert: cert_file.to_path_buf(),
                key: key_file.to_path_buf(),
            }
        }
        source => TlsError::Rejected {
            cert: cert_file.to_path_buf(),
            key: key_file.to_path_buf(),
            source,
        },
    };
    // The provider is named explicitly: should another one ever be compiled
    // in as well, rustls' process-wide default would be ambiguous and panic.
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(rejected)?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(rejected)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn read_file(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// The chain in file order: the leaf first, then its intermediates.
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = read_file(path)?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

fn read_private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let bytes = read_file(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|source| match source {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_path_buf(),
        },
        source => TlsError::Pem {
            path: path.to_path_buf(),
            source,
        },
    })
}

/// The TLS listener's current server config. Each accepted connection takes
/// an acceptor for the config of the moment and keeps it for its lifetime.
#[derive(Debug)]
pub struct TlsAcceptorCell {
    current: ArcSwap<ServerConfig>,
}

impl TlsAcceptorCell {
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self {
            current: ArcSwap::new(config),
        }
    }

    /// Loads the files and wraps the result; see [`load_server_config`].
    pub fn load(cert_file: &Path, key_file: &Path) -> Result<Self, TlsError> {
        load_server_config(cert_file, key_file).map(Self::new)
    }

    /// An acceptor for the config in place now.
    pub fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(self.current.load_full())
    }

    /// The config in place now.
    pub fn current(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// New handshakes use `config`; connections already open are untouched.
    pub fn replace(&self, config: Arc<ServerConfig>) {
        self.current.store(config);
    }

    /// Loads the files and swaps them in; on error the old config stays.
    pub fn reload(&self, cert_file: &Path, key_file: &Path) -> Result<(), TlsError> {
        self.replace(load_server_config(cert_file, key_file)?);
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    use rustls::pki_types::ServerName;
    use rustls::{ClientConfig, RootCertStore};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    /// A certificate with its key, as PEM and DER.
    pub(crate) struct TestCert {
        pub cert_pem: String,
        pub key_pem: String,
        pub der: CertificateDer<'static>,
        /// The private key as PKCS#8 DER.
        pub key_der: Vec<u8>,
    }

    pub(crate) fn self_signed(names: &[&str]) -> TestCert {
        let key = KeyPair::generate().unwrap();
        let params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        TestCert {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    /// A CA and a leaf for `names` signed by it: (ca, leaf).
    pub(crate) fn ca_and_leaf(names: &[&str]) -> (TestCert, TestCert) {
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let ca = TestCert {
            cert_pem: ca_cert.pem(),
            key_pem: ca_key.serialize_pem(),
            der: ca_cert.der().clone(),
            key_der: ca_key.serialize_der(),
        };
        let issuer = Issuer::new(ca_params, ca_key);
        let leaf_key = KeyPair::generate().unwrap();
        let leaf_cert =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap()
                .signed_by(&leaf_key, &issuer)
                .unwrap();
        let leaf = TestCert {
            cert_pem: leaf_cert.pem(),
            key_pem: leaf_key.serialize_pem(),
            der: leaf_cert.der().clone(),
            key_der: leaf_key.serialize_der(),
        };
        (ca, leaf)
    }

    pub(crate) fn write(dir: &Path, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn write_pair(dir: &Path, prefix: &str, cert: &TestCert) -> (PathBuf, PathBuf) {
        (
            write(dir, &format!("{prefix}-cert.pem"), &cert.cert_pem),
            write(dir, &format!("{prefix}-key.pem"), &cert.key_pem),
        )
    }

    fn client_config(roots: &[&CertificateDer<'static>], alpn: &[&[u8]]) -> Arc<ClientConfig> {
        let mut store = RootCertStore::empty();
        for root in roots {
            store.add((*root).clone()).unwrap();
        }
        let mut config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(store)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }

    /// Accepts TLS connections with the cell's acceptor of the moment and
    /// echoes what each one sends.
    async fn echo_server(cell: Arc<TlsAcceptorCell>) -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = cell.acceptor();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let mut buf = [0u8; 256];
                    while let Ok(n) = tls.read(&mut buf).await {
                        if n == 0 || tls.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                        let _ = tls.flush().await;
                    }
                });
            }
        });
        addr
    }

    async fn connect(
        addr: std::net::SocketAddr,
        config: Arc<ClientConfig>,
    ) -> tokio_rustls::client::TlsStream<TcpStream> {
        let tcp = TcpStream::connect(addr).await.unwrap();
        tokio_rustls::TlsConnector::from(config)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .unwrap()
    }

    async fn echo(tls: &mut tokio_rustls::client::TlsStream<TcpStream>, text: &[u8]) -> Vec<u8> {
        tls.write_all(text).await.unwrap();
        tls.flush().await.unwrap();
        let mut buf = vec![0u8; text.len()];
        tls.read_exact(&mut buf).await.unwrap();
        buf
    }

    fn peer_leaf(tls: &tokio_rustls::client::TlsStream<TcpStream>) -> CertificateDer<'static> {
        tls.get_ref().1.peer_certificates().unwrap()[0]
            .clone()
            .into_owned()
    }

    #[test]
    fn loads_a_certificate_and_key_with_alpn_h2_then_http11() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a", &self_signed(&["localhost"]));
        let config = load_server_config(&cert, &key).unwrap();
        assert_eq!(
            config.alpn_protocols,
            vec![b"h2".to_vec(), b"http/1.1".to_vec()]
        );
    }

    #[test]
    fn loads_a_sec1_ec_key() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = self_signed(&["localhost"]);
        let cert = write(dir.path(), "cert.pem", &leaf.cert_pem);
        let sec1 = sec1_from_pkcs8(&leaf.key_der);
        let key = write(dir.path(), "key.pem", pem_block("EC PRIVATE KEY", &sec1));
        load_server_config(&cert, &key).unwrap();
    }

    #[test]
    fn a_missing_file_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a", &self_signed(&["localhost"]));
        let missing = dir.path().join("nope.pem");
        let err = load_server_config(&missing, &key).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
        assert!(err.to_string().contains("nope.pem"), "{err}");
        let err = load_server_config(&cert, &missing).unwrap_err();
        assert!(matches!(err, TlsError::Read { .. }), "{err:?}");
    }

    #[test]
    fn garbage_and_swapped_files_are_explained() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = write_pair(dir.path(), "a", &self_signed(&["localhost"]));
        let garbage = write(dir.path(), "garbage.pem", "not a certificate\n");

        let err = load_server_config(&garbage, &key).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");
        assert!(
            err.to_string().contains("garbage.pem holds no certificate"),
            "{err}"
        );

        let err = load_server_config(&cert, &garbage).unwrap_err();
        assert!(matches!(err, TlsError::NoKey { .. }), "{err:?}");
        // The certificate given as the key: still "no key", not a parse error.
        let err = load_server_config(&cert, &cert).unwrap_err();
        assert!(matches!(err, TlsError::NoKey { .. }), "{err:?}");
        let err = load_server_config(&key, &key).unwrap_err();
        assert!(matches!(err, TlsError::NoCertificate { .. }), "{err:?}");

        let cut = write(dir.path(), "cut.pem", "-----BEGIN CERTIFICATE-----\nMIIB\n");
        let err = load_server_config(&cut, &key).unwrap_err();
        assert!(matches!(err, TlsError::Pem { .. }), "{err:?}");
        assert!(
            err.to_string().contains("cut.pem is not valid PEM"),
            "{err}"
        );
    }

    #[test]
    fn a_key_of_another_certificate_is_a_mismatch() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = write_pair(dir.path(), "a", &self_signed(&["localhost"]));
        let (_, other_key) = write_pair(dir.path(), "b", &self_signed(&["localhost"]));
        let err = load_server_config(&cert, &other_key).unwrap_err();
        assert!(matches!(err, TlsError::KeyMismatch { .. }), "{err:?}");
        assert!(err.to_string().contains("does not match"), "{err}");
    }

    #[tokio::test]
    async fn handshake_negotiates_h2_and_http11() {
        let dir = tempfile::tempdir().unwrap();
        let leaf = self_signed(&["localhost"]);
        let (cert, key) = write_pair(dir.path(), "a", &leaf);
        let cell = Arc::new(TlsAcceptorCell::load(&cert, &key).unwrap());
        let addr = echo_server(cell).await;

        for (offered, expected) in [
            (vec![&b"h2"[..], b"http/1.1"], Some(&b"h2"[..])),
            (vec![&b"http/1.1"[..]], Some(&b"http/1.1"[..])),
            (vec![], None),
        ] {
            let mut tls = connect(addr, client_config(&[&leaf.der], &offered)).await;
            assert_eq!(tls.get_ref().1.alpn_protocol(), expected);
            assert_eq!(echo(&mut tls, b"ping").await, b"ping");
        }
    }

    #[tokio::test]
    async fn a_chain_file_is_served_whole() {
        let dir = tempfile::tempdir().unwrap();
        let (ca, leaf) = ca_and_leaf(&["localhost"]);
        let chain = format!("{}{}", leaf.cert_pem, ca.cert_pem);
        let cert = write(dir.path(), "chain.pem", chain);
        let key = write(dir.path(), "key.pem", &leaf.key_pem);
        let cell = Arc::new(TlsAcceptorCell::load(&cert, &key).unwrap());
        let addr = echo_server(cell).await;

        let tls = connect(addr, client_config(&[&ca.der], &[b"http/1.1"])).await;
        let sent = tls.get_ref().1.peer_certificates().unwrap();
        assert_eq!(sent.len(), 2);
        assert_eq!(sent[0], leaf.der);
    }

    #[tokio::test]
    async fn replace_serves_the_new_certificate_to_new_handshakes_only() {
        let dir = tempfile::tempdir().unwrap();
        let first = self_signed(&["localhost"]);
        let second = self_signed(&["localhost"]);
        let (cert_a, key_a) = write_pair(dir.path(), "a", &first);
        let (cert_b, key_b) = write_pair(dir.path(), "b", &second);
        let cell = Arc::new(TlsAcceptorCell::load(&cert_a, &key_a).unwrap());
        let addr = echo_server(cell.clone()).await;
        let trust_both = client_config(&[&first.der, &second.der], &[b"h2"]);

        let mut before = connect(addr, trust_both.clone()).await;
        assert_eq!(peer_leaf(&before), first.der);

        cell.replace(load_server_config(&cert_b, &key_b).unwrap());
        let mut after = connect(addr, trust_both.clone()).await;
        assert_eq!(peer_leaf(&after), second.der);
        assert_eq!(echo(&mut after, b"new").await, b"new");
        // The connection opened before the swap is still served.
        assert_eq!(echo(&mut before, b"old").await, b"old");

        // A failed reload leaves the current certificate in place.
        let missing = dir.path().join("missing.pem");
        assert!(cell.reload(&missing, &key_a).is_err());
        let again = connect(addr, trust_both).await;
        assert_eq!(peer_leaf(&again), second.der);
    }

    /// The ECPrivateKey (SEC1) inside a PKCS#8 PrivateKeyInfo.
    fn sec1_from_pkcs8(pkcs8: &[u8]) -> Vec<u8> {
        let (_, info, _) = der_take(pkcs8);
        let (_, _, rest) = der_take(info); // version
        let (_, _, rest) = der_take(rest); // algorithm
        let (tag, key, _) = der_take(rest);
        assert_eq!(tag, 0x04, "privateKey is an OCTET STRING");
        key.to_vec()
    }

    /// (tag, contents, rest) of one DER element with a short or 1–2 byte length.
    fn der_take(input: &[u8]) -> (u8, &[u8], &[u8]) {
        let (len, header) = match input[1] {
            n if n < 0x80 => (usize::from(n), 2),
            0x81 => (usize::from(input[2]), 3),
            0x82 => ((usize::from(input[2]) << 8) | usize::from(input[3]), 4),
            other => panic!("unexpected DER length byte {other:#x}"),
        };
        let (contents, rest) = input[header..].split_at(len);
        (input[0], contents, rest)
    }

    fn pem_block(label: &str, der: &[u8]) -> String {
        const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut b64 = String::new();
        for chunk in der.chunks(3) {
            let n = chunk.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(*b))
                << (8 * (3 - chunk.len()));
            for i in 0..4 {
                if i <= chunk.len() {
                    b64.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
                } else {
                    b64.push('=');
                }
            }
        }
        let body: Vec<&str> = b64
            .as_bytes()
            .chunks(64)
            .map(|line| std::str::from_utf8(line).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            body.join("\n")
        )
    }
}
