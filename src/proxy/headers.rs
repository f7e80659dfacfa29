//! Which upstream response headers reach the client: everything but
//! hop-by-hop headers, cookies, account identifiers and headers the gateway
//! sets itself.

use http::{HeaderMap, HeaderName, HeaderValue};

/// Header names the gateway sets or reads on every request, parsed once
/// (a `&str` name is validated and hashed on each use).
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_UPSTREAM_REQUEST_ID: HeaderName = HeaderName::from_static("x-upstream-request-id");
pub const X_ACCEL_BUFFERING: HeaderName = HeaderName::from_static("x-accel-buffering");
pub const X_GATEWAY_ATTEMPTS: HeaderName = HeaderName::from_static("x-gateway-attempts");
pub const X_GATEWAY_PROVIDER: HeaderName = HeaderName::from_static("x-gateway-provider");

/// Upstream response headers never forwarded.
const DROPPED: &[&str] = &[
    // hop-by-hop (RFC 9110 7.6.1) and framing, which hyper recomputes
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    // state and identity of the gateway's provider account
    "set-cookie",
    "msh-uid",
    "msh-gid",
    // set by the gateway itself
    "content-type",
    "date",
    "server",
    "x-request-id",
    "x-should-retry",
    "cache-control",
    "x-accel-buffering",
];

/// Copies the forwardable headers of an upstream response.
pub fn copy_response_headers(from: &HeaderMap, to: &mut HeaderMap) {
    for (name, value) in from {
        if !is_dropped(name) {
            to.append(name.clone(), value.clone());
        }
    }
}

fn is_dropped(name: &HeaderName) -> bool {
    let name = name.as_str();
    // The provider account's own rate limits are not the client's.
    DROPPED.contains(&name) || name.starts_with("x-ratelimit-")
}

/// The provider's id for this request, under the names the providers use.
pub fn upstream_request_id(headers: &HeaderMap) -> Option<HeaderValue> {
    const NAMES: [HeaderName; 4] = [
        X_REQUEST_ID,
        HeaderName::from_static("msh-request-id"),
        HeaderName::from_static("request-id"),
        HeaderName::from_static("x-amzn-requestid"),
    ];
    NAMES.iter().find_map(|name| headers.get(name)).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_private_and_hop_by_hop_headers() {
        let mut from = HeaderMap::new();
        for (k, v) in [
            ("msh-uid", "u1"),
            ("Msh-Gid", "g1"),
            ("set-cookie", "a=b"),
            ("connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("x-ratelimit-remaining-requests", "5"),
            ("msh-context-cache-id", "cache-1"),
            ("retry-after", "3"),
        ] {
            from.insert(
                HeaderName::try_from(k).unwrap(),
                HeaderValue::from_static(v),
            );
        }
        let mut to = HeaderMap::new();
        copy_response_headers(&from, &mut to);
        let mut names: Vec<&str> = to.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["msh-context-cache-id", "retry-after"]);
    }
}
