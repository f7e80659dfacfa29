//! Catalogue refresh: a provider's `/models` is asked on a schedule, the
//! Kimi ids it lists are routed and listed, a failed ask keeps the
//! catalogue, and what was found outlives a reload.

use crate::helpers::*;
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the test provider lists and has seen.
#[derive(Default)]
struct Listing {
    /// The ids `/models` lists; `None`: it answers 500.
    ids: Option<Vec<&'static str>>,
    /// The `Authorization` of every `/models` request.
    authorizations: Vec<String>,
    /// `/models` never answers.
    hang: bool,
}

/// A provider that serves `/v1/models` from `listing` and answers every
/// chat completion with the model it was asked for.
async fn listing_provider(listing: Arc<Mutex<Listing>>) -> String {
    async fn models(
        State(listing): State<Arc<Mutex<Listing>>>,
        headers: HeaderMap,
    ) -> Result<Json<Value>, StatusCode> {
        let hang = {
            let mut listing = listing.lock().unwrap();
            let authorization = headers
                .get("authorization")
                .map(|v| v.to_str().unwrap().to_string())
                .unwrap_or_default();
            listing.authorizations.push(authorization);
            listing.hang
        };
        if hang {
            std::future::pending::<()>().await;
        }
        let ids = listing
            .lock()
            .unwrap()
            .ids
            .clone()
            .ok_or(StatusCode::INTERNAL_SERVER_ERROR)?;
        let data: Vec<Value> = ids
            .iter()
            .map(|id| json!({"id": id, "object": "model", "owned_by": "test"}))
            .collect();
        Ok(Json(json!({"object": "list", "data": data})))
    }
    async fn chat(Json(request): Json<Value>) -> Json<Value> {
        Json(json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1,
            "model": request["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        }))
    }
    let router = axum::Router::new()
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .with_state(listing);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

/// The ids the gateway's `/v1/models` lists.
async fn listed(app: &TestApp) -> Vec<String> {
    let list = app.get_json("/v1/models").await;
    list["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

/// Waits (up to 10 s) until the gateway's model list satisfies `done`.
async fn until_listed(app: &TestApp, done: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let ids = listed(app).await;
        if done(&ids) {
            return ids;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the model list never changed as expected: {ids:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits (up to 10 s) until the metrics show `at_least` refreshes of
/// Moonshot's catalogue with `result`.
async fn until_refreshes(app: &TestApp, result: &str, at_least: u64) {
    let series =
        format!("kimi_gateway_model_refreshes_total{{provider=\"moonshot\",result=\"{result}\"}}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let metrics = scrape(app).await;
        let count = metrics
            .lines()
            .find_map(|line| line.strip_prefix(&series))
            .map_or(0, |n| n.trim().parse().unwrap());
        if count >= at_least {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{series} stayed at {count}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn chat_status(app: &TestApp, model: &str) -> (u16, Value) {
    let response = app.chat(chat_body(model, "hi", false)).await;
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

const REFRESH_EVERY_SECOND: &str = "[providers.moonshot]\nrefresh_models_secs = 1\n";

/// A gateway whose configuration file (in `dir`) is `text`, with Moonshot
/// at `url`, and its catalogue refresh running. A refresh that finds a
/// change rebuilds the configuration from the text it runs on.
async fn refreshing_app(dir: &tempfile::TempDir, text: &str, url: &str) -> TestApp {
    let path = dir.path().join("gateway.toml");
    std::fs::write(&path, text).unwrap();
    let app = spawn_app_from(
        ConfigSource::File(&path),
        &[("MOONSHOT_BASE_URL", Some(url))],
    )
    .await;
    kimi_gateway::model_refresh::spawn(app.state.clone());
    app
}

#[tokio::test]
async fn models_a_provider_lists_are_routed_and_listed_as_its_list_changes() {
    let listing = Arc::new(Mutex::new(Listing {
        ids: Some(vec!["kimi-k3-preview", "gpt-4o", "kimi-k2.6"]),
        ..Listing::default()
    }));
    let url = listing_provider(listing.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = refreshing_app(&dir, REFRESH_EVERY_SECOND, &url).await;

    let ids = until_listed(&app, |ids| ids.iter().any(|id| id == "kimi-k3-preview")).await;
    // Only Kimi models are taken from a list, by default.
    assert!(!ids.contains(&"gpt-4o".to_string()), "{ids:?}");
    let (status, answer) = chat_status(&app, "kimi-k3-preview").await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["model"], "kimi-k3-preview");
    let (status, answer) = chat_status(&app, "moonshot/kimi-k3-preview").await;
    assert_eq!(status, 200, "{answer}");
    let (status, answer) = chat_status(&app, "gpt-4o").await;
    assert_eq!(status, 404, "{answer}");
    // Asked with the provider's own key.
    assert_eq!(
        listing.lock().unwrap().authorizations[0],
        format!("Bearer {PROVIDER_KEY}")
    );

    // The provider drops a model and adds another: the list follows, and
    // the configured catalogue stays whole.
    listing.lock().unwrap().ids = Some(vec!["kimi-k3"]);
    let ids = until_listed(&app, |ids| ids.iter().any(|id| id == "kimi-k3")).await;
    assert!(!ids.contains(&"kimi-k3-preview".to_string()), "{ids:?}");
    assert!(
        ids.contains(&"kimi-k2-turbo-preview".to_string()),
        "{ids:?}"
    );
    let (status, _) = chat_status(&app, "kimi-k3-preview").await;
    assert_eq!(status, 404);
    until_refreshes(&app, "success", 2).await;
    // A rebuild says nothing of the file, which no reload has read yet.
    let readyz = app.readyz().await;
    assert_eq!(readyz["last_reload"]["result"], "", "{readyz}");
    assert_eq!(readyz["last_reload"]["at"], 0, "{readyz}");
}

#[tokio::test]
async fn a_failed_refresh_keeps_the_catalogue_it_had() {
    let listing = Arc::new(Mutex::new(Listing {
        ids: Some(vec!["kimi-k3-preview"]),
        ..Listing::default()
    }));
    let url = listing_provider(listing.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let app = refreshing_app(&dir, REFRESH_EVERY_SECOND, &url).await;
    until_listed(&app, |ids| ids.iter().any(|id| id == "kimi-k3-preview")).await;

    // An error, then a list of no model: both fail, and change nothing.
    listing.lock().unwrap().ids = None;
    until_refreshes(&app, "failure", 1).await;
    let (status, answer) = chat_status(&app, "kimi-k3-preview").await;
    assert_eq!(status, 200, "{answer}");
    assert!(listed(&app).await.contains(&"kimi-k3-preview".to_string()));
    listing.lock().unwrap().ids = Some(vec![]);
    until_refreshes(&app, "failure", 2).await;
    let (status, answer) = chat_status(&app, "kimi-k3-preview").await;
    assert_eq!(status, 200, "{answer}");
    // A list of models the match picks none of: a Kimi provider listing
    // no Kimi model is at fault too.
    listing.lock().unwrap().ids = Some(vec!["gpt-4o"]);
    until_refreshes(&app, "failure", 3).await;
    let (status, answer) = chat_status(&app, "kimi-k3-preview").await;
    assert_eq!(status, 200, "{answer}");
}

#[tokio::test]
async fn what_a_refresh_found_outlives_a_reload_that_keeps_the_refresh() {
    let listing = Arc::new(Mutex::new(Listing {
        ids: Some(vec!["kimi-k3-preview", "gpt-4o"]),
        ..Listing::default()
    }));
    let url = listing_provider(listing.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let app = refreshing_app(&dir, REFRESH_EVERY_SECOND, &url).await;
    until_listed(&app, |ids| ids.iter().any(|id| id == "kimi-k3-preview")).await;
    // Stop the provider's list from changing what follows.
    listing.lock().unwrap().ids = None;

    // A new match takes gpt-4o from what was found, at once.
    std::fs::write(
        &path,
        format!("{REFRESH_EVERY_SECOND}refresh_models_match = [\"kimi\", \"GPT\"]\n"),
    )
    .unwrap();
    assert!(
        kimi_gateway::reload::reload(&app.state, "test", kimi_gateway::reload::Reading::File).await
    );
    let ids = listed(&app).await;
    assert!(ids.contains(&"kimi-k3-preview".to_string()), "{ids:?}");
    assert!(ids.contains(&"gpt-4o".to_string()), "{ids:?}");

    // Turned off, the refresh adds nothing any more.
    std::fs::write(&path, "").unwrap();
    assert!(
        kimi_gateway::reload::reload(&app.state, "test", kimi_gateway::reload::Reading::File).await
    );
    let ids = listed(&app).await;
    assert!(!ids.contains(&"kimi-k3-preview".to_string()), "{ids:?}");
    assert!(ids.contains(&"kimi-k2.6".to_string()), "{ids:?}");
}

/// The configuration a refresh rebuilds is the running one, not whatever
/// the file holds at that moment: a file caught part-way through a write
/// (here empty, which is valid TOML) is the file watcher's to wait out.
#[tokio::test]
async fn a_refresh_rebuilds_the_running_configuration_not_the_file() {
    let listing = Arc::new(Mutex::new(Listing {
        ids: Some(vec!["kimi-k3-preview"]),
        ..Listing::default()
    }));
    let url = listing_provider(listing.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        "{REFRESH_EVERY_SECOND}[aliases.keepme]\ntargets = [{{ provider = \"moonshot\", model = \"kimi-k2.6\" }}]\n"
    );
    let app = refreshing_app(&dir, &text, &url).await;
    until_listed(&app, |ids| ids.iter().any(|id| id == "kimi-k3-preview")).await;

    std::fs::write(dir.path().join("gateway.toml"), "").unwrap();
    listing.lock().unwrap().ids = Some(vec!["kimi-k3"]);
    let ids = until_listed(&app, |ids| ids.iter().any(|id| id == "kimi-k3")).await;
    assert!(ids.contains(&"keepme".to_string()), "{ids:?}");
    let (status, answer) = chat_status(&app, "keepme").await;
    assert_eq!(status, 200, "{answer}");
}

/// A client key limited to a model only a refresh found is refused by a
/// reload as `--check` and the next start refuse it (before any refresh
/// the model is unknown), with the way out in the message.
#[tokio::test]
async fn a_key_may_not_be_limited_to_a_model_only_a_refresh_found() {
    let listing = Arc::new(Mutex::new(Listing {
        ids: Some(vec!["kimi-later"]),
        ..Listing::default()
    }));
    let url = listing_provider(listing.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gateway.toml");
    let app = refreshing_app(&dir, REFRESH_EVERY_SECOND, &url).await;
    until_listed(&app, |ids| ids.iter().any(|id| id == "kimi-later")).await;

    let key = format!(
        "[keys.team]\nsecret_sha256 = \"{}\"\nmodels = [\"kimi-later\"]\n",
        "ab".repeat(32)
    );
    std::fs::write(&path, format!("{REFRESH_EVERY_SECOND}{key}")).unwrap();
    let reading = kimi_gateway::reload::Reading::File;
    assert!(!kimi_gateway::reload::reload(&app.state, "test", reading).await);
    let readyz = app.readyz().await;
    let problems = readyz["last_reload"]["problems"].to_string();
    assert!(
        problems.contains("keys.team.models[0]: unknown model \\\"kimi-later\\\": only the provider's catalogue refresh lists it"),
        "{readyz}"
    );
    // A refresh that rebuilds the running configuration meanwhile does not
    // hide that the file was rejected.
    listing.lock().unwrap().ids = Some(vec!["kimi-later", "kimi-newer"]);
    until_listed(&app, |ids| ids.iter().any(|id| id == "kimi-newer")).await;
    let readyz = app.readyz().await;
    assert_eq!(readyz["last_reload"]["result"], "failure", "{readyz}");
    let gauge = "kimi_gateway_config_last_reload_successful";
    assert_eq!(sample(&scrape(&app).await, gauge), Some(0.0));
    // Named in the catalogue, it is the key's to use.
    std::fs::write(
        &path,
        format!("{REFRESH_EVERY_SECOND}extra_models = [\"kimi-later\"]\n{key}"),
    )
    .unwrap();
    assert!(kimi_gateway::reload::reload(&app.state, "test", reading).await);
}

/// A gateway whose file points Moonshot at an endpoint listing `old`, with
/// a refresh every `every` seconds, and a second endpoint listing `new`.
struct Moving {
    app: TestApp,
    dir: tempfile::TempDir,
    old: Arc<Mutex<Listing>>,
    new: Arc<Mutex<Listing>>,
    new_url: String,
}

fn moonshot_at(url: &str, every: u32) -> String {
    format!("[providers.moonshot]\nbase_url = \"{url}\"\nrefresh_models_secs = {every}\n")
}

impl Moving {
    async fn start(old: Listing, new: Listing, every: u32) -> Moving {
        let (old, new) = (Arc::new(Mutex::new(old)), Arc::new(Mutex::new(new)));
        let old_url = listing_provider(old.clone()).await;
        let new_url = listing_provider(new.clone()).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, moonshot_at(&old_url, every)).unwrap();
        let app = spawn_app_from(ConfigSource::File(&path), &[("MOONSHOT_BASE_URL", None)]).await;
        kimi_gateway::model_refresh::spawn(app.state.clone());
        Moving {
            app,
            dir,
            old,
            new,
            new_url,
        }
    }

    /// Points Moonshot at the new endpoint (an hourly refresh) and reloads.
    async fn move_provider(&self) {
        let path = self.dir.path().join("gateway.toml");
        std::fs::write(&path, moonshot_at(&self.new_url, 3600)).unwrap();
        let reading = kimi_gateway::reload::Reading::File;
        assert!(kimi_gateway::reload::reload(&self.app.state, "test", reading).await);
    }
}

/// A provider a reload moves to another endpoint lists nothing the old
/// one listed, and is asked at the new one at once, not a refresh
/// interval later. A list whose change the match does not pick (other
/// makers' ids, the picked ids in another order) rebuilds nothing.
#[tokio::test]
async fn a_moved_provider_is_asked_at_once_and_only_picked_changes_rebuild() {
    let old = Listing {
        ids: Some(vec!["kimi-only-old", "kimi-two", "gpt-1"]),
        ..Listing::default()
    };
    let new = Listing {
        ids: Some(vec!["kimi-only-new"]),
        ..Listing::default()
    };
    let moving = Moving::start(old, new, 1).await;
    let app = &moving.app;
    until_listed(app, |ids| ids.iter().any(|id| id == "kimi-only-old")).await;
    let reloads = |metrics: &str| {
        sample(
            metrics,
            r#"kimi_gateway_config_reloads_total{result="success"}"#,
        )
        .unwrap_or(0.0)
    };
    let before = reloads(&scrape(app).await);
    moving.old.lock().unwrap().ids = Some(vec!["gpt-2", "kimi-two", "kimi-only-old"]);
    let asked = moving.old.lock().unwrap().authorizations.len();
    wait_until("two more asks answered with the changed list", async || {
        moving.old.lock().unwrap().authorizations.len() >= asked + 2
    })
    .await;
    assert_eq!(reloads(&scrape(app).await), before, "no rebuild");

    moving.move_provider().await;
    let ids = listed(app).await;
    assert!(!ids.contains(&"kimi-only-old".to_string()), "{ids:?}");
    until_listed(app, |ids| ids.iter().any(|id| id == "kimi-only-new")).await;
    assert_eq!(moving.new.lock().unwrap().authorizations.len(), 1);
}

/// An ask of a provider's old endpoint still in flight when a reload moves
/// the provider does not hold up the ask of the new one (an ask may take
/// 15 s), and its answer, if any, is not kept.
#[tokio::test]
async fn a_move_ends_an_ask_of_the_old_endpoint_in_flight() {
    let old = Listing {
        hang: true,
        ..Listing::default()
    };
    let new = Listing {
        ids: Some(vec!["kimi-only-new"]),
        ..Listing::default()
    };
    let moving = Moving::start(old, new, 3600).await;
    let app = &moving.app;
    wait_until("the old endpoint is asked", async || {
        !moving.old.lock().unwrap().authorizations.is_empty()
    })
    .await;
    moving.move_provider().await;
    let moved = tokio::time::Instant::now();
    until_listed(app, |ids| ids.iter().any(|id| id == "kimi-only-new")).await;
    assert!(
        moved.elapsed() < Duration::from_secs(5),
        "{:?}",
        moved.elapsed()
    );
    let metrics = scrape(app).await;
    assert!(
        !metrics.contains(
            r#"kimi_gateway_model_refreshes_total{provider="moonshot",result="failure"}"#
        ),
        "the ended ask is no failure:\n{metrics}"
    );
}
