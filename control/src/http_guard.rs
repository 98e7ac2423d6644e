//! What keeps a web page in a browser on the host from using the API.
//!
//! A page can make the browser send a "simple" cross-site request (a `POST` with
//! `Content-Type: text/plain`, no preflight) to `127.0.0.1:9180`, and with DNS rebinding it
//! can even read the answers, under a name of its own that resolves to 127.0.0.1. So on
//! `/v1`:
//! - a request with a body (`POST`, `PATCH`) must say `Content-Type:
//!   application/json`, which no page can send cross-site without a preflight the API
//!   never grants (415 otherwise; checked by the handlers, with [`is_json`]);
//! - a request carrying an `Origin` must come from the API's own origin (403 otherwise);
//! - on TCP, the `Host` must be the listen address (`localhost` too on loopback) or a name
//!   the operator allowed with `--api-host` (403 otherwise). The unix socket is out of a
//!   browser's reach and takes any `Host`.

use std::sync::Arc;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;

/// The `Host` values (`name:port`, lower case) a listener answers to; `None` for any.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts(Option<Arc<Vec<String>>>);

impl AllowedHosts {
    /// Any host: for the unix socket.
    pub fn any() -> AllowedHosts {
        AllowedHosts(None)
    }

    /// The hosts of a TCP listener on `addr`: the address itself, `localhost` if it is a
    /// loopback address, and `names` (host names or addresses the operator allowed), each
    /// with the port. On an unspecified address (`0.0.0.0`, `::`) every address literal
    /// with the port is the listener's.
    pub fn for_listener(addr: std::net::SocketAddr, names: &[String]) -> AllowedHosts {
        let port = addr.port();
        let mut hosts = vec![host_port(&addr.ip().to_string(), addr.ip().is_ipv6(), port)];
        if addr.ip().is_loopback() {
            hosts.push(format!("localhost:{port}"));
        }
        for n in names {
            // NAME or NAME:PORT (an IPv6 address in brackets).
            let n = n.to_ascii_lowercase();
            let has_port = n.rsplit_once(':').is_some_and(|(h, p)| {
                p.parse::<u16>().is_ok() && (!h.contains(':') || h.ends_with(']'))
            });
            hosts.push(if has_port { n } else { format!("{n}:{port}") });
        }
        if addr.ip().is_unspecified() {
            hosts.push(format!("*:{port}"));
        }
        AllowedHosts(Some(Arc::new(hosts)))
    }

    /// Whether `host` (a `Host` header, port included or not) is one of these.
    fn allows(&self, host: &str) -> bool {
        let Some(hosts) = &self.0 else {
            return true;
        };
        let host = host.trim().to_ascii_lowercase();
        let with_port = |default: u16| {
            if host.starts_with('[') {
                if host.contains("]:") {
                    host.clone()
                } else {
                    format!("{host}:{default}")
                }
            } else if host.contains(':') {
                host.clone()
            } else {
                format!("{host}:{default}")
            }
        };
        let host = with_port(80);
        hosts.iter().any(|h| match h.strip_prefix("*:") {
            // Any address literal, on the listener's port.
            Some(port) => host.rsplit_once(':').is_some_and(|(name, p)| {
                p == port
                    && name
                        .trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<std::net::IpAddr>()
                        .is_ok()
            }),
            None => *h == host,
        })
    }
}

fn host_port(ip: &str, v6: bool, port: u16) -> String {
    if v6 {
        format!("[{ip}]:{port}")
    } else {
        format!("{ip}:{port}")
    }
}

/// `router` with the checks of this module on its `/v1` routes.
pub fn guard(router: Router, hosts: AllowedHosts) -> Router {
    router.layer(axum::middleware::from_fn_with_state(hosts, check))
}

fn refuse(status: StatusCode, error: &str, detail: String) -> Response {
    (
        status,
        axum::Json(serde_json::json!({ "error": error, "detail": detail })),
    )
        .into_response()
}

/// Why a request may not pass, if it may not.
fn verdict(headers: &HeaderMap, hosts: &AllowedHosts) -> Option<Response> {
    let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let host = text(header::HOST).unwrap_or("");
    if !hosts.allows(host) {
        return Some(refuse(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "Host {:?} is not this API's address: use the address the daemon listens on, \
                 or allow the name with --api-host",
                cut(host)
            ),
        ));
    }
    if let Some(origin) = text(header::ORIGIN) {
        let own = origin
            .strip_prefix("http://")
            .is_some_and(|o| hosts.0.is_some() && hosts.allows(o));
        if !own {
            return Some(refuse(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "requests from web pages are refused (Origin {:?})",
                    cut(origin)
                ),
            ));
        }
    }
    None
}

/// Whether a request says its body is JSON (`application/json`, parameters allowed). The
/// handlers that read a body check it (415 otherwise): after routing, so that a method a
/// path does not take is still a 405.
pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.split(';').next())
        .is_some_and(|t| t.trim().eq_ignore_ascii_case("application/json"))
}

/// At most 100 characters of a header value, for a message.
fn cut(s: &str) -> String {
    let mut out: String = s.chars().take(100).collect();
    if out.len() < s.len() {
        out.push('…');
    }
    out
}

async fn check(
    axum::extract::State(hosts): axum::extract::State<AllowedHosts>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    if path != "/v1" && !path.starts_with("/v1/") {
        return next.run(req).await;
    }
    match verdict(req.headers(), &hosts) {
        Some(refused) => refused,
        None => next.run(req).await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{HeaderValue, Method};

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(k.clone(), HeaderValue::from_str(v).unwrap());
        }
        h
    }

    /// The status the guard and a body-reading handler give a request.
    fn status(method: Method, pairs: &[(header::HeaderName, &str)], hosts: &AllowedHosts) -> u16 {
        let h = headers(pairs);
        if let Some(r) = verdict(&h, hosts) {
            return r.status().as_u16();
        }
        if matches!(method, Method::POST | Method::PATCH) && !is_json(&h) {
            return 415;
        }
        200
    }

    #[test]
    fn hosts_of_a_loopback_listener_and_named_ones() {
        let h = AllowedHosts::for_listener(
            "127.0.0.1:9180".parse().unwrap(),
            &["switch.example".into(), "10.0.0.5:9180".into()],
        );
        for ok in [
            "127.0.0.1:9180",
            "localhost:9180",
            "LOCALHOST:9180",
            "switch.example:9180",
            "10.0.0.5:9180",
        ] {
            assert!(h.allows(ok), "{ok}");
        }
        for bad in [
            "evil.example:9180",
            "127.0.0.1:9181",
            "localhost",
            "127.0.0.1",
            "",
            "switch.example:80",
        ] {
            assert!(!h.allows(bad), "{bad}");
        }
        let any = AllowedHosts::for_listener("0.0.0.0:80".parse().unwrap(), &[]);
        assert!(any.allows("192.0.2.7"));
        assert!(any.allows("[2001:db8::1]:80"));
        assert!(!any.allows("rebound.example"));
        let v6 = AllowedHosts::for_listener("[::1]:9180".parse().unwrap(), &[]);
        assert!(v6.allows("[::1]:9180") && v6.allows("localhost:9180"));
        assert!(AllowedHosts::any().allows("whatever"));
    }

    #[test]
    fn a_browser_cannot_post_rebind_or_cross_origin() {
        let h = AllowedHosts::for_listener("127.0.0.1:9180".parse().unwrap(), &[]);
        let host = (header::HOST, "127.0.0.1:9180");
        let json = (header::CONTENT_TYPE, "application/json; charset=utf-8");
        assert_eq!(status(Method::POST, &[host.clone(), json.clone()], &h), 200);
        assert_eq!(status(Method::GET, std::slice::from_ref(&host), &h), 200);
        assert_eq!(status(Method::DELETE, std::slice::from_ref(&host), &h), 200);
        // The simple cross-site POST of the report.
        let plain = (header::CONTENT_TYPE, "text/plain");
        assert_eq!(status(Method::POST, &[host.clone(), plain], &h), 415);
        assert_eq!(status(Method::PATCH, std::slice::from_ref(&host), &h), 415);
        assert_eq!(
            status(
                Method::POST,
                &[
                    host.clone(),
                    json.clone(),
                    (header::ORIGIN, "http://evil.example")
                ],
                &h
            ),
            403
        );
        assert_eq!(
            status(Method::GET, &[host.clone(), (header::ORIGIN, "null")], &h),
            403
        );
        assert_eq!(
            status(
                Method::GET,
                &[host.clone(), (header::ORIGIN, "http://127.0.0.1:9180")],
                &h
            ),
            200
        );
        // DNS rebinding: the page's own name resolving to 127.0.0.1.
        assert_eq!(
            status(Method::GET, &[(header::HOST, "rebound.example:9180")], &h),
            403
        );
        assert_eq!(status(Method::GET, &[], &h), 403);
        // The unix socket: any Host, but no Origin and JSON bodies still.
        let unix = AllowedHosts::any();
        assert_eq!(status(Method::GET, &[(header::HOST, "x")], &unix), 200);
        assert_eq!(
            status(Method::GET, &[(header::ORIGIN, "http://localhost")], &unix),
            403
        );
        assert_eq!(status(Method::POST, &[], &unix), 415);
    }
}
