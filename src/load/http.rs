//! The generator's HTTP/1.1 connections: one hyper connection per generator connection (as wrk),
//! plain or TLS (rustls with ring), reopened after a failure; failures are classified.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls_pki_types::ServerName;
use tokio::net::TcpStream;

/// Where requests go: parsed once from `--url`.
#[derive(Clone)]
pub struct Endpoint {
    pub host: String,
    pub port: u16,
    /// `Host` header value.
    pub authority: String,
    /// Path prefix of the service (`--url`'s path without a trailing `/`).
    pub base_path: String,
    /// `--url`'s path and query exactly as given (the `get` scenario).
    pub exact: String,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

impl Endpoint {
    pub fn parse(url: &str, ca_pem: Option<&[u8]>) -> Result<Endpoint, String> {
        let uri: Uri = url.parse().map_err(|e| format!("--url {url:?}: {e}"))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            _ => return Err(format!("--url {url:?}: expected http:// or https://")),
        };
        let host = uri.host().ok_or_else(|| format!("--url {url:?}: no host"))?.trim_matches(['[', ']']).to_owned();
        let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
        let authority = uri.authority().map(|a| a.as_str().to_owned()).unwrap_or_else(|| host.clone());
        let exact = uri.path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_else(|| "/".into());
        let base_path = uri.path().trim_end_matches('/').to_owned();
        let tls = if https {
            let config = crate::tls::client_config(ca_pem)?;
            let name = ServerName::try_from(host.clone()).map_err(|e| format!("--url {url:?}: host name: {e}"))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };
        Ok(Endpoint { host, port, authority, base_path, exact, tls })
    }

    /// Open one HTTP/1.1 connection.
    pub async fn connect(&self, timeout: Duration) -> Result<Conn, Failure> {
        let tcp = tokio::time::timeout(timeout, TcpStream::connect((self.host.as_str(), self.port)))
            .await
            .map_err(|_| Failure::Connect("connect timed out".into()))?
            .map_err(|e| Failure::Connect(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let (sender, driver) = match &self.tls {
            None => handshake(tcp).await?,
            Some((connector, name)) => {
                let tls = tokio::time::timeout(timeout, connector.connect(name.clone(), tcp))
                    .await
                    .map_err(|_| Failure::Connect("TLS handshake timed out".into()))?
                    .map_err(|e| Failure::Connect(format!("TLS: {}", crate::tls::refusal(&e, &self.host))))?;
                handshake(tls).await?
            }
        };
        Ok(Conn { sender, driver })
    }
}

/// The connection's I/O driver, polled by the task that sends on it (no hop to another task per request).
type Driver = std::pin::Pin<Box<dyn std::future::Future<Output = hyper::Result<()>> + Send>>;

async fn handshake<T>(io: T) -> Result<(SendRequest<Full<Bytes>>, Driver), Failure>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) =
        hyper::client::conn::http1::handshake(TokioIo::new(io)).await.map_err(|e| Failure::Connect(e.to_string()))?;
    Ok((sender, Box::pin(conn)))
}

/// Why a request failed before an HTTP answer could be judged.
#[derive(Debug, Clone)]
pub enum Failure {
    Connect(String),
    Timeout,
    /// The connection broke during the exchange.
    Io(String),
    /// The connection was found closed (e.g. an idle keep-alive timeout) before anything was sent:
    /// not the service's failure; the caller reconnects and sends.
    Stale,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Connect(why) => write!(f, "cannot connect: {why}"),
            Failure::Timeout => f.write_str("no answer within --timeout"),
            Failure::Io(why) => write!(f, "the connection broke: {why}"),
            Failure::Stale => f.write_str("the connection was found closed before the request was sent"),
        }
    }
}

impl Failure {
    pub fn class(&self) -> &'static str {
        match self {
            Failure::Connect(_) => "connect",
            Failure::Timeout => "timeout",
            Failure::Io(_) | Failure::Stale => "io",
        }
    }
}

/// One open connection.
pub struct Conn {
    sender: SendRequest<Full<Bytes>>,
    driver: Driver,
}

/// A request ready to send (cheap to clone: the body is shared).
#[derive(Clone)]
pub struct Call {
    pub method: Method,
    pub path: String,
    pub body: Option<Bytes>,
}

impl Conn {
    /// Send `call` and read the whole answer. On `Err` the connection must be dropped.
    pub async fn send(
        &mut self,
        ep: &Endpoint,
        key: Option<&str>,
        call: &Call,
    ) -> Result<(StatusCode, Bytes), Failure> {
        let mut req = Request::builder().method(call.method.clone()).uri(call.path.as_str());
        req = req.header(hyper::header::HOST, ep.authority.as_str());
        if let Some(k) = key {
            req = req.header(audit_api::API_KEY_HEADER, k);
        }
        if call.body.is_some() {
            req = req.header(hyper::header::CONTENT_TYPE, "application/json");
        }
        let req = req
            .body(Full::new(call.body.clone().unwrap_or_default()))
            .map_err(|e| Failure::Io(format!("building the request: {e}")))?;
        // A connection the server closed while it sat idle is noticed here, before sending.
        let closed = tokio::select! {
            biased;
            _ = &mut self.driver => true,
            _ = std::future::ready(()) => false,
        };
        if closed {
            return Err(Failure::Stale);
        }
        let sender = &mut self.sender;
        let exchange = async move {
            sender.ready().await.map_err(|e| Failure::Io(e.to_string()))?;
            let resp = sender.send_request(req).await.map_err(|e| Failure::Io(e.to_string()))?;
            let status = resp.status();
            let body = resp.into_body().collect().await.map_err(|e| Failure::Io(e.to_string()))?.to_bytes();
            Ok((status, body))
        };
        // Drive the connection and the exchange together; the driver ends only when the connection does.
        tokio::select! {
            biased;
            r = exchange => r,
            end = &mut self.driver => Err(Failure::Io(match end {
                Ok(()) => "connection closed by the server".to_owned(),
                Err(e) => e.to_string(),
            })),
        }
    }
}
