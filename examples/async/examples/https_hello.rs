//! HTTPS with rustls over `greenstack::net::TcpStream`, in blocking style:
//! a self-signed certificate made at start-up (rcgen), then one coroutine
//! per connection running rustls's `StreamOwned` over the socket (its
//! reads and writes park the coroutine, not the worker), answering every
//! request with `Hello, world!`.
//!
//! Run with `cargo run --release --example https_hello [ADDR]` (default
//! `127.0.0.1:8443`), then `curl --insecure https://127.0.0.1:8443/`.

use std::io::{Read, Write};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

const RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, world!";

/// A server configuration with a fresh self-signed certificate for
/// `localhost` and 127.0.0.1.
fn config() -> Result<Arc<rustls::ServerConfig>, Box<dyn std::error::Error>> {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let chain = vec![CertificateDer::from(cert.cert.der().to_vec())];
    // ring, not aws-lc-rs (rustls's default): it builds without cmake.
    // rustls deprecates it for lacking post-quantum key exchange, which a
    // self-signed demo does not need.
    #[allow(deprecated)]
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// Answers the requests on one TLS connection until the client closes it
/// or asks to close.
fn serve(
    config: Arc<rustls::ServerConfig>,
    tcp: greenstack::net::TcpStream,
) -> Result<(), Box<dyn std::error::Error>> {
    let conn = rustls::ServerConnection::new(config)?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            buf.drain(..end + 4);
            tls.write_all(RESPONSE)?;
            tls.flush()?;
            if head.contains("connection: close") {
                tls.conn.send_close_notify();
                tls.flush()?;
                return Ok(());
            }
        }
        let n = tls.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[greenstack::main]
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:8443".into());
    let config = config()?;
    let listener = greenstack::net::TcpListener::bind(&addr)?;
    println!(
        "https_hello listening on https://{}/",
        listener.local_addr()?
    );
    loop {
        let (tcp, _) = listener.accept()?;
        let config = Arc::clone(&config);
        greenstack::spawn(move || {
            if let Err(e) = serve(config, tcp) {
                eprintln!("https_hello: {e}");
            }
        });
    }
}
