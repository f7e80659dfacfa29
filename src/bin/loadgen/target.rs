//! The request every worker sends: resolved address, path, headers and body.

use crate::Cli;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request, Uri, header};
use http_body_util::Full;
use kimi_gateway::client::{header_line, request_line};
use serde_json::json;
use std::net::SocketAddr;

/// Everything a worker needs to build and send its request.
pub(crate) struct Target {
    pub(crate) addr: SocketAddr,
    /// `http://host:port/`, for load mode's client.
    pub(crate) origin: Uri,
    uri: Uri,
    host: HeaderValue,
    auth: Option<HeaderValue>,
    sdk_headers: bool,
    pub(crate) body: Bytes,
}

/// What the OpenAI Python SDK (1.x, synchronous client) sends besides the
/// host, content type, length and key (names lowercase: `http` keeps them
/// so, and the gateway compares them without case).
const SDK_HEADERS: [(&str, &str); 12] = [
    ("accept", "application/json"),
    ("accept-encoding", "gzip, deflate"),
    ("user-agent", "OpenAI/Python 1.99.0"),
    ("x-stainless-lang", "python"),
    ("x-stainless-package-version", "1.99.0"),
    ("x-stainless-os", "Linux"),
    ("x-stainless-arch", "x64"),
    ("x-stainless-runtime", "CPython"),
    ("x-stainless-runtime-version", "3.11.2"),
    ("x-stainless-async", "false"),
    ("x-stainless-retry-count", "0"),
    ("x-stainless-read-timeout", "600"),
];

impl Target {
    /// The request's head as it goes on the wire (load mode's client sends
    /// it): the same fields as [`Target::request`], with the length.
    pub(crate) fn write_head(&self, head: &mut Vec<u8>) {
        request_line(head, &Method::POST, self.uri.path());
        header_line(head, &header::HOST, self.host.as_bytes());
        header_line(head, &header::CONTENT_TYPE, b"application/json");
        let length = itoa::Buffer::new().format(self.body.len()).to_owned();
        header_line(head, &header::CONTENT_LENGTH, length.as_bytes());
        if let Some(auth) = &self.auth {
            header_line(head, &header::AUTHORIZATION, auth.as_bytes());
        }
        if self.sdk_headers {
            for (name, value) in SDK_HEADERS {
                header_line(head, &HeaderName::from_static(name), value.as_bytes());
            }
        }
        head.extend_from_slice(b"\r\n");
    }

    pub(crate) fn request(&self) -> Request<Full<Bytes>> {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(header::HOST, self.host.clone())
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(self.body.clone()))
            .expect("valid request");
        if let Some(auth) = &self.auth {
            request
                .headers_mut()
                .insert(header::AUTHORIZATION, auth.clone());
        }
        if self.sdk_headers {
            for (name, value) in SDK_HEADERS {
                request
                    .headers_mut()
                    .insert(name, HeaderValue::from_static(value));
            }
        }
        request
    }
}

pub(crate) async fn target(cli: &Cli) -> Result<Target, String> {
    if cli.url().scheme_str() != Some("http") {
        return Err(format!("{}: only http:// URLs are supported", cli.url()));
    }
    let authority = cli
        .url()
        .authority()
        .ok_or_else(|| format!("{}: no host", cli.url()))?
        .clone();
    let port = authority.port_u16().unwrap_or(80);
    let addr = tokio::net::lookup_host((authority.host(), port))
        .await
        .map_err(|e| format!("{}: {e}", authority.host()))?
        .next()
        .ok_or_else(|| format!("{}: no address", authority.host()))?;
    let path = cli
        .url()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .parse::<Uri>()
        .map_err(|e| e.to_string())?;
    let body = match &cli.body_file {
        Some(path) => std::fs::read(path)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .into(),
        None => built_in_body(cli),
    };
    let auth = (!cli.api_key.is_empty())
        .then(|| HeaderValue::try_from(format!("Bearer {}", cli.api_key)))
        .transpose()
        .map_err(|e| e.to_string())?;
    let origin = format!("http://{authority}/")
        .parse::<Uri>()
        .map_err(|e| e.to_string())?;
    Ok(Target {
        addr,
        origin,
        uri: path,
        host: HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?,
        auth,
        sdk_headers: cli.sdk_headers,
        body,
    })
}

/// A small chat request, about the size of a short interactive prompt.
fn built_in_body(cli: &Cli) -> Bytes {
    let mut content = String::from("Say hello in one short sentence.");
    if let Some(directive) = &cli.mock {
        content.push_str(&format!(" [mock {directive}]"));
    }
    let mut body = json!({
        "model": cli.model,
        "messages": [
            {"role": "system", "content": "You are a concise assistant."},
            {"role": "user", "content": content},
        ],
        "temperature": 0.6,
        "max_tokens": 64,
    });
    if cli.stream {
        body["stream"] = json!(true);
    }
    serde_json::to_vec(&body).expect("json").into()
}
