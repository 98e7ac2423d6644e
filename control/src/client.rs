//! A small client of the daemon's HTTP API, for `vringctl` and the tests.

use std::path::PathBuf;

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;

/// Errors of an API call, worded for the person who ran the command.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(
        "cannot reach the vringswitch API at {addr}: {source} (is the daemon running? see --api)"
    )]
    Connect {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP exchange with {addr} failed: {source}")]
    Http {
        addr: String,
        #[source]
        source: hyper::Error,
    },
    /// The daemon answered with an error: said in its words (`detail`), with its code
    /// (`not_found`...); the request only when there are no words.
    #[error("{}", api_words(.method, .path, .status, .error, .detail.as_deref()))]
    Api {
        method: Method,
        path: String,
        status: StatusCode,
        error: String,
        detail: Option<String>,
    },
    #[error("{path}: unexpected response: {source}")]
    Decode {
        path: String,
        #[source]
        source: serde_json::Error,
    },
    /// vringctl itself refuses: what the daemon holds is not what was asked.
    #[error("{0}")]
    Refused(String),
}

/// Where the API listens: a TCP address, or the daemon's --api-socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `HOST:PORT` as given (a name is looked up when connecting, and sent as `Host`).
    Tcp(String),
    Unix(PathBuf),
}

/// The daemon's default API port, for an address given without one.
pub const DEFAULT_API_PORT: u16 = 9180;

impl std::str::FromStr for Endpoint {
    type Err = String;
    /// `HOST[:PORT]` or `http://HOST[:PORT][/]` (HOST a name or an address, PORT 9180 if
    /// left out), or a path to a unix socket (absolute, or starting with `./`).
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.starts_with('/') || s.starts_with("./") {
            return Ok(Endpoint::Unix(PathBuf::from(s)));
        }
        let bad = || {
            format!(
                "{s:?} is neither an address like 127.0.0.1:9180, localhost:9180 or \
                 http://127.0.0.1:9180, nor a socket path"
            )
        };
        let rest = s.strip_prefix("http://").unwrap_or(s);
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
            return Err(bad());
        }
        // [v6]:port, v6 alone, host:port, host alone.
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (addr, after) = v6.split_once(']').ok_or_else(bad)?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().map_err(|_| bad())?,
                None if after.is_empty() => DEFAULT_API_PORT,
                None => return Err(bad()),
            };
            (format!("[{addr}]"), port)
        } else if rest.parse::<std::net::Ipv6Addr>().is_ok() {
            (format!("[{rest}]"), DEFAULT_API_PORT)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (h.to_owned(), p.parse().map_err(|_| bad())?),
                None => (rest.to_owned(), DEFAULT_API_PORT),
            }
        };
        if host.is_empty() {
            return Err(bad());
        }
        Ok(Endpoint::Tcp(format!("{host}:{port}")))
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Tcp(a) => write!(f, "{a}"),
            Endpoint::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Where the API listens, and the bearer token to present.
#[derive(Debug, Clone)]
pub struct ApiClient {
    pub endpoint: Endpoint,
    pub token: Option<String>,
}

/// The message of an error response: `error: detail` from the API's JSON body, else the body.
/// The API's error body: its code and its words, or the body as text if it is not one.
fn error_message(body: &[u8]) -> (String, Option<String>) {
    #[derive(serde::Deserialize)]
    struct ApiError {
        error: String,
        #[serde(default)]
        detail: Option<String>,
    }
    match serde_json::from_slice::<ApiError>(body) {
        Ok(e) => (e.error, e.detail.filter(|d| !d.is_empty())),
        Err(_) => (String::from_utf8_lossy(body).trim().to_owned(), None),
    }
}

/// An API error for a person: the daemon's words and its code (`no bridge named "x"
/// (invalid)`); without words, the request, its path as typed (not percent-encoded), and
/// the status.
fn api_words(
    method: &Method,
    path: &str,
    status: &StatusCode,
    error: &str,
    detail: Option<&str>,
) -> String {
    match detail {
        Some(d) => format!("{d} ({error})"),
        None => format!(
            "{method} {}: {error} (HTTP {status})",
            percent_decoded(path)
        ),
    }
}

/// `path` with its `%XX` escapes undone (as the user typed the names in it).
fn percent_decoded(path: &str) -> String {
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl ApiClient {
    /// Sends one request and returns the body of a 2xx answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Bytes, ClientError> {
        let mut answer = self.send(method, path, body).await?;
        let mut bytes = Vec::new();
        while let Some(piece) = answer.next().await? {
            bytes.extend_from_slice(&piece);
        }
        Ok(Bytes::from(bytes))
    }

    /// GETs `path`, whose body is read as it comes ([`Streamed::next`]).
    pub async fn stream(&self, path: &str) -> Result<Streamed, ClientError> {
        self.send(Method::GET, path, None).await
    }

    /// Sends one request; a 2xx answer's body is left to read, another is an error.
    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Streamed, ClientError> {
        let addr = self.endpoint.to_string();
        let connect = |source| ClientError::Connect {
            addr: addr.clone(),
            source,
        };
        let http = |source| ClientError::Http {
            addr: addr.clone(),
            source,
        };
        let (mut sender, driver) = match &self.endpoint {
            Endpoint::Tcp(a) => {
                open(
                    tokio::net::TcpStream::connect(a.as_str())
                        .await
                        .map_err(connect)?,
                )
                .await
            }
            Endpoint::Unix(p) => {
                open(tokio::net::UnixStream::connect(p).await.map_err(connect)?).await
            }
        }
        .map_err(http)?;
        let host = match &self.endpoint {
            Endpoint::Tcp(a) => a.to_string(),
            Endpoint::Unix(_) => "localhost".to_owned(),
        };
        let mut req = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(hyper::header::HOST, &host);
        if let Some(t) = &self.token {
            req = req.header(hyper::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let payload = match body {
            Some(v) => {
                req = req.header(hyper::header::CONTENT_TYPE, "application/json");
                Bytes::from(v.to_string())
            }
            None => Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .expect("method, path and headers are valid");
        let resp = sender.send_request(req).await.map_err(http)?;
        let status = resp.status();
        let mut answer = Streamed {
            body: resp.into_body(),
            driver,
            addr,
        };
        if !status.is_success() {
            let mut bytes = Vec::new();
            while let Some(piece) = answer.next().await? {
                bytes.extend_from_slice(&piece);
            }
            let (error, detail) = error_message(&bytes);
            return Err(ClientError::Api {
                method,
                path: path.to_owned(),
                status,
                error,
                detail,
            });
        }
        Ok(answer)
    }

    /// GETs `path` and decodes its JSON body.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let body = self.call(Method::GET, path, None).await?;
        serde_json::from_slice(&body).map_err(|source| ClientError::Decode {
            path: path.to_owned(),
            source,
        })
    }
}

/// The body of an answer, read piece by piece as it arrives; the connection closes when
/// this is dropped.
pub struct Streamed {
    body: hyper::body::Incoming,
    driver: tokio::task::JoinHandle<()>,
    addr: String,
}

impl Streamed {
    /// The next piece of the body, or `None` at its end.
    pub async fn next(&mut self) -> Result<Option<Bytes>, ClientError> {
        loop {
            match self.body.frame().await {
                None => return Ok(None),
                Some(Err(source)) => {
                    return Err(ClientError::Http {
                        addr: self.addr.clone(),
                        source,
                    })
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        return Ok(Some(data));
                    }
                }
            }
        }
    }
}

impl Drop for Streamed {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

/// An HTTP/1 connection over `stream`: the request sender, and the task driving it.
async fn open<S>(
    stream: S,
) -> Result<
    (
        hyper::client::conn::http1::SendRequest<Full<Bytes>>,
        tokio::task::JoinHandle<()>,
    ),
    hyper::Error,
>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    Ok((
        sender,
        tokio::spawn(async move {
            let _ = conn.await;
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::{error_message, percent_decoded, ClientError, Method, StatusCode};

    #[test]
    fn endpoints_are_addresses_or_socket_paths() {
        use super::Endpoint;
        let tcp = |s: &str| Ok(Endpoint::Tcp(s.to_owned()));
        for (given, want) in [
            ("127.0.0.1:9180", "127.0.0.1:9180"),
            ("localhost:9181", "localhost:9181"),
            ("localhost", "localhost:9180"),
            ("http://127.0.0.1:9180", "127.0.0.1:9180"),
            ("http://switch.example:9180/", "switch.example:9180"),
            ("http://switch.example", "switch.example:9180"),
            ("[::1]:9180", "[::1]:9180"),
            ("::1", "[::1]:9180"),
            ("http://[::1]", "[::1]:9180"),
        ] {
            assert_eq!(given.parse::<Endpoint>(), tcp(want), "{given}");
        }
        assert_eq!(
            "/run/vringswitch/api.sock".parse::<Endpoint>(),
            Ok(Endpoint::Unix("/run/vringswitch/api.sock".into()))
        );
        for bad in [
            "",
            "http://",
            "host:port",
            "http://h:9180/v1",
            "https//x",
            "a b",
        ] {
            assert!(
                bad.parse::<Endpoint>().unwrap_err().contains("neither"),
                "{bad}"
            );
        }
    }

    #[test]
    fn error_messages_carry_the_apis_words() {
        let said = |body: &[u8], path: &str| {
            let (error, detail) = error_message(body);
            ClientError::Api {
                method: Method::DELETE,
                path: path.to_owned(),
                status: StatusCode::NOT_FOUND,
                error,
                detail,
            }
            .to_string()
        };
        assert_eq!(
            said(
                br#"{"error":"not_found","detail":"no port named \"vm 9\""}"#,
                "/v1/ports/vm%209"
            ),
            "no port named \"vm 9\" (not_found)"
        );
        assert_eq!(
            said(
                br#"{"error":"not_found"}"#,
                "/v1/bridges/br0/fdb/52%3A54%3A00%3A00%3A00%3A01"
            ),
            "DELETE /v1/bridges/br0/fdb/52:54:00:00:00:01: not_found (HTTP 404 Not Found)"
        );
        assert_eq!(
            error_message(b"plain text\n"),
            ("plain text".to_owned(), None)
        );
        assert_eq!(percent_decoded("a%2"), "a%2");
        assert_eq!(percent_decoded("%zz%41"), "%zzA");
    }
}
