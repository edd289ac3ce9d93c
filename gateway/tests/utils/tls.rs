//! TLS and HTTP/2 for the black-box tests.
//!
//! - [`Pki`]: a throw-away CA made with rcgen in the test's temp dir, and leaf
//!   certificates it signs (server or client), written as PEM files for the config. No
//!   private key is ever committed.
//! - [`tls_client_config`], [`send_tls`]: an HTTPS client (HTTP/1.1) that trusts the
//!   test CA.
//! - [`H2`]: an HTTP/2 client (hyper) over TLS with ALPN `h2` or over cleartext with
//!   prior knowledge, sending a [`Req`] as its HTTP/2 twin.
//! - [`raw`]: hand-made HTTP/2 frames (HPACK literals without Huffman), for what a
//!   well-behaved client library refuses to send: floods, forbidden headers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpSocket;

use super::{read_response, Req, Resp, IO_TIMEOUT};

/// A certificate and key written to disk.
#[derive(Debug, Clone)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// A test certificate authority.
pub struct Pki {
    dir: PathBuf,
    ca: rcgen::Certificate,
    ca_key: KeyPair,
    /// The CA certificate (PEM file).
    pub ca_file: PathBuf,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Pki {
    /// A fresh CA named `name`, its files under `dir`.
    pub fn new(dir: &Path, name: &str) -> Pki {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca = params.self_signed(&ca_key).expect("self-signed CA");
        let ca_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&ca_file, ca.pem()).expect("write CA");
        Pki {
            dir: dir.to_path_buf(),
            ca,
            ca_key,
            ca_file,
        }
    }

    /// A leaf certificate for `names` (DNS names or IP addresses), for a server or a
    /// client; written as `<file>.pem` and `<file>.key`.
    pub fn issue(&self, file: &str, names: &[&str], client: bool) -> Issued {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or(file));
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let cert = params
            .signed_by(&key, &self.ca, &self.ca_key)
            .expect("sign leaf");
        let issued = Issued {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}.key")),
        };
        std::fs::write(&issued.cert, cert.pem()).expect("write cert");
        std::fs::write(&issued.key, key.serialize_pem()).expect("write key");
        issued
    }

    /// The CA as a root store.
    pub fn roots(&self) -> rustls::RootCertStore {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.der().clone()).expect("add CA");
        roots
    }
}

fn load(issued: &Issued) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let certs = CertificateDer::pem_file_iter(&issued.cert)
        .expect("open cert")
        .collect::<Result<Vec<_>, _>>()
        .expect("cert PEM");
    let key = PrivateKeyDer::from_pem_file(&issued.key).expect("key PEM");
    (certs, key)
}

/// A TLS server (HTTP/1.1) with `identity`; with `client_ca`, clients must present a
/// certificate that CA signed.
pub fn server_acceptor(identity: &Issued, client_ca: Option<&Pki>) -> tokio_rustls::TlsAcceptor {
    let (certs, key) = load(identity);
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions");
    let builder = match client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(ca.roots()),
                provider(),
            )
            .build()
            .expect("client verifier"),
        ),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder.with_single_cert(certs, key).expect("server cert");
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(cfg))
}

/// A client trusting only `ca`, offering `alpn`.
pub fn tls_client_config(ca: &Pki, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(cfg)
}

async fn connect_from(src: Ipv4Addr, addr: SocketAddr) -> Result<tokio::net::TcpStream, String> {
    let sock = TcpSocket::new_v4().map_err(|e| e.to_string())?;
    sock.bind(SocketAddr::new(IpAddr::V4(src), 0))
        .map_err(|e| format!("bind {src}: {e}"))?;
    sock.connect(addr).await.map_err(|e| e.to_string())
}

/// Opens a TLS connection from `src` to `addr`, verifying the server as `name`.
pub async fn tls_connect(
    addr: SocketAddr,
    src: Ipv4Addr,
    cfg: Arc<rustls::ClientConfig>,
    name: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let tcp = connect_from(src, addr).await?;
    let name = ServerName::try_from(name.to_owned()).map_err(|e| e.to_string())?;
    tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {e}"))
}

/// Sends `raw` HTTP/1.1 bytes over TLS and reads one response.
pub async fn send_tls(
    addr: SocketAddr,
    src: Ipv4Addr,
    cfg: Arc<rustls::ClientConfig>,
    raw: &[u8],
) -> Result<Resp, String> {
    let fut = async {
        let mut tls = tls_connect(addr, src, cfg, "127.0.0.1").await?;
        let _ = tls.write_all(raw).await;
        let _ = tls.flush().await;
        read_response(&mut tls).await
    };
    tokio::time::timeout(IO_TIMEOUT, fut)
        .await
        .map_err(|_| "timed out waiting for a response".to_string())?
}

/// An HTTP/2 connection to the gateway.
pub struct H2 {
    sender: hyper::client::conn::http2::SendRequest<Full<Bytes>>,
    scheme: &'static str,
    authority: String,
}

impl H2 {
    /// HTTP/2 over TLS (ALPN `h2`, which the server must select).
    pub async fn tls(addr: SocketAddr, src: Ipv4Addr, ca: &Pki) -> Result<H2, String> {
        let tls = tls_connect(addr, src, tls_client_config(ca, &[b"h2"]), "127.0.0.1").await?;
        let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
        if alpn.as_deref() != Some(b"h2") {
            return Err(format!("server chose ALPN {alpn:?}, not h2"));
        }
        H2::handshake(tls, "https", addr).await
    }

    /// HTTP/2 over cleartext with prior knowledge.
    pub async fn cleartext(addr: SocketAddr, src: Ipv4Addr) -> Result<H2, String> {
        let tcp = connect_from(src, addr).await?;
        H2::handshake(tcp, "http", addr).await
    }

    async fn handshake<IO>(io: IO, scheme: &'static str, addr: SocketAddr) -> Result<H2, String>
    where
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        let (sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(io))
                .await
                .map_err(|e| format!("h2 handshake: {e}"))?;
        tokio::spawn(conn);
        Ok(H2 {
            sender,
            scheme,
            authority: addr.to_string(),
        })
    }

    /// The HTTP/2 twin of `req`: `:authority` instead of `Host`, the same method, path,
    /// other headers and body. `Err` when HTTP/2 cannot carry it (a header value with
    /// CR, LF or NUL, say) or the stream was refused.
    pub async fn send(&mut self, req: &Req) -> Result<Resp, String> {
        let target = if req.target.starts_with('/') {
            format!("{}://{}{}", self.scheme, self.authority, req.target)
        } else {
            req.target.clone()
        };
        let mut b = hyper::Request::builder()
            .method(req.method.as_str())
            .uri(target);
        // An HTTP/1 request in absolute form still carries `Host` (the gateway's
        // address): its HTTP/2 twin carries both `:authority` and that `Host`.
        if req.host && !req.target.starts_with('/') {
            b = b.header("host", self.authority.as_str());
        }
        for (n, v) in &req.headers {
            let v = http::HeaderValue::from_bytes(v).map_err(|e| format!("{n}: {e}"))?;
            b = b.header(n.as_str(), v);
        }
        let hreq = b
            .body(Full::new(Bytes::from(req.body.clone())))
            .map_err(|e| format!("not an HTTP/2 request: {e}"))?;
        let fut = async {
            self.sender
                .ready()
                .await
                .map_err(|e| format!("h2 not ready: {e}"))?;
            let resp = self
                .sender
                .send_request(hreq)
                .await
                .map_err(|e| format!("h2 request: {e}"))?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| format!("h2 body: {e}"))?
                .to_bytes();
            Ok(Resp {
                status: parts.status.as_u16(),
                headers: parts
                    .headers
                    .iter()
                    .map(|(n, v)| {
                        (
                            n.as_str().to_owned(),
                            String::from_utf8_lossy(v.as_bytes()).into_owned(),
                        )
                    })
                    .collect(),
                body: body.to_vec(),
            })
        };
        tokio::time::timeout(IO_TIMEOUT, fut)
            .await
            .map_err(|_| "timed out waiting for an h2 response".to_string())?
    }
}

/// Hand-made HTTP/2 frames.
pub mod raw {
    use tokio::io::{AsyncRead, AsyncReadExt};

    /// The client connection preface.
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const DATA: u8 = 0x0;
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const GOAWAY: u8 = 0x7;
    pub const CONTINUATION: u8 = 0x9;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;
    /// Error codes (RFC 9113 §7).
    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const REFUSED_STREAM: u32 = 0x7;
    pub const CANCEL: u32 = 0x8;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;

    /// One frame.
    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    fn int(out: &mut Vec<u8>, prefix_bits: u8, first: u8, mut v: usize) {
        let max = (1usize << prefix_bits) - 1;
        if v < max {
            out.push(first | v as u8);
            return;
        }
        out.push(first | max as u8);
        v -= max;
        while v >= 128 {
            out.push((v % 128 + 128) as u8);
            v /= 128;
        }
        out.push(v as u8);
    }

    /// An HPACK header block of literals without indexing (no Huffman, no dynamic
    /// table): any bytes, exactly as given.
    pub fn hpack(fields: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (name, value) in fields {
            out.push(0x00);
            int(&mut out, 7, 0, name.len());
            out.extend_from_slice(name);
            int(&mut out, 7, 0, value.len());
            out.extend_from_slice(value);
        }
        out
    }

    /// A GET's header block for `path` with `extra` fields.
    pub fn get(path: &str, authority: &str, extra: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut fields: Vec<(&[u8], &[u8])> = vec![
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":path", path.as_bytes()),
            (b":authority", authority.as_bytes()),
        ];
        fields.extend_from_slice(extra);
        hpack(&fields)
    }

    /// Frames the server sent, read until `stop` says so, the connection ends, or
    /// `timeout` passes: (type, flags, stream, payload).
    pub async fn read_frames<S: AsyncRead + Unpin>(
        s: &mut S,
        timeout: std::time::Duration,
        mut stop: impl FnMut(&(u8, u8, u32, Vec<u8>)) -> bool,
    ) -> (Vec<(u8, u8, u32, Vec<u8>)>, bool) {
        let mut frames = Vec::new();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let mut head = [0u8; 9];
            match tokio::time::timeout_at(deadline, s.read_exact(&mut head)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return (frames, true),
                Err(_) => return (frames, false),
            }
            let len = (head[0] as usize) << 16 | (head[1] as usize) << 8 | head[2] as usize;
            let mut payload = vec![0u8; len];
            match tokio::time::timeout_at(deadline, s.read_exact(&mut payload)).await {
                Ok(Ok(_)) => {}
                Ok(Err(_)) => return (frames, true),
                Err(_) => return (frames, false),
            }
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let f = (head[3], head[4], stream, payload);
            let done = stop(&f);
            frames.push(f);
            if done {
                return (frames, false);
            }
        }
    }

    /// The error code of a GOAWAY or RST_STREAM frame.
    pub fn error_code(f: &(u8, u8, u32, Vec<u8>)) -> Option<u32> {
        let p = &f.3;
        match f.0 {
            RST_STREAM if p.len() >= 4 => Some(u32::from_be_bytes([p[0], p[1], p[2], p[3]])),
            GOAWAY if p.len() >= 8 => Some(u32::from_be_bytes([p[4], p[5], p[6], p[7]])),
            _ => None,
        }
    }
}
