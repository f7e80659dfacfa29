//! Client keys: a missing or unknown key is 401, a key outside its models
//! is 403, `x-api-key` works like a bearer token, public paths need no key,
//! and with no keys the gateway is open. Secrets never sit in the file.

use crate::helpers::*;
use kimi_gateway::config;

pub const KEYS: &str = r#"
[keys.team-a]
secret_env = "TEAM_A_KEY"

[keys.team-b]
secret_sha256 = "SHA_OF_SK_B"
models = ["kimi", "kimi-k2.6"]

[aliases.kimi]
targets = [{ provider = "moonshot", model = "kimi-k2.6" }]
"#;

/// A gateway with keys `sk-a` (every model) and `sk-b` (two models).
pub async fn spawn_with_keys(extra: &str) -> TestApp {
    let sha_b = sha256_hex("sk-b");
    let toml = format!("{}\n{extra}", KEYS.replace("SHA_OF_SK_B", &sha_b));
    spawn_app_with(&toml, &[("TEAM_A_KEY", Some("sk-a"))]).await
}

pub fn sha256_hex(secret: &str) -> String {
    kimi_gateway::auth::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn a_missing_or_unknown_key_is_401() {
    let app = spawn_with_keys("").await;
    let response = app.chat(chat_body("kimi-k2.6", "hi", false)).await;
    assert_eq!(response.status(), 401);
    assert_eq!(response.headers()["www-authenticate"], "Bearer");
    let error = error_of(response).await;
    assert_eq!(error["type"], "invalid_authentication_error");
    assert!(
        error["message"].as_str().unwrap().contains("missing"),
        "{error}"
    );

    let response = app
        .chat_as("sk-wrong", chat_body("kimi-k2.6", "hi", false))
        .await;
    assert_eq!(response.status(), 401);
    assert_eq!(
        error_of(response).await["type"],
        "invalid_authentication_error"
    );
    // A known key sent without its scheme is not taken, and the client is
    // told the form was wrong rather than that no key came.
    let response = app
        .client
        .post(app.url("/v1/chat/completions"))
        .header("authorization", "sk-a")
        .body(chat_body("kimi-k2.6", "hi", false).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    let error = error_of(response).await;
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("is not 'Bearer <key>'"), "{error}");
    assert!(!message.contains("sk-a"), "{error}");
    // Other endpoints need a key too, unknown ones included.
    let models = app.client.get(app.url("/v1/models")).send().await.unwrap();
    assert_eq!(models.status(), 401);
    let nowhere = app.client.get(app.url("/nowhere")).send().await.unwrap();
    assert_eq!(nowhere.status(), 401);
    assert_eq!(app.mock.requests().len(), 0);
}

/// A web page can make the browser POST to a gateway on localhost; the
/// browser names the page's origin. A gateway without keys refuses such
/// requests (403) before any provider is asked; public paths still
/// answer, and a keyed gateway serves a browser that sends its key.
#[tokio::test]
async fn an_open_gateway_refuses_requests_from_web_pages() {
    let app = spawn_app().await;
    let from_a_page = |path: &str| {
        app.client
            .post(app.url(path))
            .header("origin", "https://some.page.example")
            .header("content-type", "text/plain")
            .body(chat_body("kimi-k2.6", "hi", false).to_string())
            .send()
    };
    let response = from_a_page("/v1/chat/completions").await.unwrap();
    assert_eq!(response.status(), 403);
    let error = error_of(response).await;
    assert_eq!(error["type"], "permission_denied_error", "{error}");
    assert_eq!(error["code"], "browser_request_refused", "{error}");
    assert!(app.mock.requests().is_empty());
    let health = app
        .client
        .get(app.url("/healthz"))
        .header("origin", "https://some.page.example")
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    // Without the field (every SDK, curl), served.
    let response = app.chat(chat_body("kimi-k2.6", "hi", false)).await;
    assert_eq!(response.status(), 200);

    let keyed = spawn_with_keys("").await;
    let response = keyed
        .client
        .post(keyed.url("/v1/chat/completions"))
        .header("origin", "https://app.example")
        .bearer_auth("sk-a")
        .body(chat_body("kimi-k2.6", "hi", false).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn bearer_and_x_api_key_are_both_accepted() {
    let app = spawn_with_keys("").await;
    let response = app
        .chat_as("sk-a", chat_body("kimi-k2.6", "hi", false))
        .await;
    assert_eq!(response.status(), 200);
    let response = app
        .client
        .post(app.url("/v1/chat/completions"))
        .header("x-api-key", "sk-b")
        .body(chat_body("kimi", "hi", false).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The client's key never reaches the provider.
    for recorded in app.mock.requests() {
        assert_eq!(recorded.headers["authorization"], "Bearer mock-key");
        assert!(!recorded.headers.contains_key("x-api-key"));
    }
}

#[tokio::test]
async fn a_key_asking_for_a_model_outside_its_list_is_403() {
    let app = spawn_with_keys("").await;
    let response = app
        .chat_as("sk-b", chat_body("kimi-chat", "hi", false))
        .await;
    assert_eq!(response.status(), 403);
    assert_eq!(response.headers()["x-should-retry"], "false");
    let error = error_of(response).await;
    assert_eq!(error["type"], "permission_denied_error");
    assert_eq!(error["param"], "model");
    assert!(
        error["message"].as_str().unwrap().contains("team-b"),
        "{error}"
    );
    // Counted under the route the model names (`unknown` is for models
    // that name none).
    let metrics = scrape(&app).await;
    let refused = r#"kimi_gateway_requests_total{error_type="permission_denied_error",provider="none",route="kimi-chat",status="403"} 1"#;
    assert!(metrics.contains(refused), "{metrics}");
    // The key's model list is all it sees.
    let models: serde_json::Value = app
        .client
        .get(app.url("/v1/models"))
        .bearer_auth("sk-b")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ids = model_ids(&models);
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(
        ids == ["kimi", "kimi-k2.6"] || ids == ["kimi-k2.6", "kimi"],
        "{ids:?}"
    );
    let hidden = app
        .client
        .get(app.url("/v1/models/kimi-chat"))
        .bearer_auth("sk-b")
        .send()
        .await
        .unwrap();
    assert_eq!(hidden.status(), 404);
    // The same model under its provider-prefixed name is another route name.
    let response = app
        .chat_as("sk-b", chat_body("moonshot/kimi-k2.6", "hi", false))
        .await;
    assert_eq!(response.status(), 403);
    // A model nothing serves is not found, for this key as for any.
    let response = app
        .chat_as("sk-b", chat_body("kimi-typo", "hi", false))
        .await;
    assert_eq!(response.status(), 404);
    assert_eq!(error_of(response).await["code"], "model_not_found");
    assert_eq!(app.mock.requests().len(), 0);
}

#[tokio::test]
async fn public_paths_need_no_key() {
    let app = spawn_with_keys("").await;
    for path in ["/healthz", "/readyz"] {
        let response = app.client.get(app.url(path)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
    }
}

#[tokio::test]
async fn without_keys_the_gateway_is_open() {
    let app = spawn_app().await;
    let response = app.chat(chat_body("kimi-k2.6", "hi", false)).await;
    assert_eq!(response.status(), 200);
    // No limits configured: no rate-limit headers either.
    assert!(
        !response
            .headers()
            .contains_key("x-ratelimit-limit-requests")
    );
    let response = app
        .chat_as("anything", chat_body("kimi-k2.6", "hi", false))
        .await;
    assert_eq!(response.status(), 200);
}

#[test]
fn secrets_in_the_file_and_bad_key_tables_are_reported_with_their_paths() {
    let text = r#"
        [keys.plain]
        secret = "sk-in-the-file"
        [keys.both]
        secret_env = "A"
        secret_sha256 = "00"
        [keys.unset]
        secret_env = "NOT_SET"
        [keys.badhex]
        secret_sha256 = "xyz"
        [keys.models]
        secret_env = "SET"
        models = ["kimi-nope"]
        [keys.models.limits]
        requests_per_minute = 0
        [keys."bad name"]
        secret_env = "SET"
        [limits]
        backend = "redis"
        [limits.providers.nobody]
        requests_per_minute = 1
    "#;
    let env = |name: &str| (name == "SET").then(|| "sk-set".to_string());
    let errors = config::resolve(text, &env).err().expect("problems");
    let paths: Vec<String> = errors.0.iter().map(|p| p.path.clone()).collect();
    for expected in [
        "keys.plain.secret",
        "keys.both",
        "keys.unset.secret_env",
        "keys.badhex.secret_sha256",
        "keys.models.models[0]",
        "keys.models.limits.requests_per_minute",
        "keys.bad name",
        "limits.redis_url",
        "limits.providers.nobody",
    ] {
        assert!(
            paths.iter().any(|p| p == expected),
            "{expected} missing from {paths:?}"
        );
    }
    let plain = errors
        .0
        .iter()
        .find(|p| p.path == "keys.plain.secret")
        .unwrap();
    assert!(plain.message.contains("secret_env"), "{plain}");
    assert!(!errors.to_string().contains("sk-in-the-file"));
}
