//! Routing by model name, the model listing and the health endpoints.

use crate::helpers::*;
use kimi_gateway::mock::Flavour;
use serde_json::Value;

async fn routed_to(app: &TestApp, model: &str) -> (Flavour, Value) {
    let before = app.mock.requests().len();
    let response = app.chat(chat_body(model, "hi", false)).await;
    assert_eq!(
        response.status(),
        200,
        "{model}: {}",
        response.text().await.unwrap()
    );
    let requests = app.mock.requests();
    assert_eq!(
        requests.len(),
        before + 1,
        "{model} made one upstream request"
    );
    let last = requests.last().unwrap();
    (last.flavour, serde_json::from_slice(&last.body).unwrap())
}

#[tokio::test]
async fn exact_names_route_to_the_provider_that_serves_them() {
    let app = spawn_app().await;
    for (model, flavour) in [
        ("kimi-k2-turbo-preview", Flavour::Moonshot),
        ("moonshot/kimi-k2-preview", Flavour::Aimlapi),
        ("kimi-chat", Flavour::Agentsflare),
        // served by Moonshot and Agentsflare: Moonshot first by default
        ("kimi-k2.6", Flavour::Moonshot),
    ] {
        let (got, body) = routed_to(&app, model).await;
        assert_eq!(got, flavour, "{model}");
        assert_eq!(body["model"], model, "upstream id unchanged");
    }
}

#[tokio::test]
async fn provider_prefix_picks_the_provider_and_sends_its_own_id() {
    let app = spawn_app().await;
    let (got, body) = routed_to(&app, "agentsflare/kimi-k2.6").await;
    assert_eq!(got, Flavour::Agentsflare);
    assert_eq!(body["model"], "kimi-k2.6");
    let (got, body) = routed_to(&app, "aimlapi/moonshot/kimi-k2-6").await;
    assert_eq!(got, Flavour::Aimlapi);
    assert_eq!(body["model"], "moonshot/kimi-k2-6");
}

#[tokio::test]
async fn an_alias_routes_to_its_first_target_with_the_upstream_id() {
    let app = spawn_app_with(
        r#"
        [aliases.kimi]
        targets = [{ provider = "aimlapi", model = "moonshot/kimi-k2-6" },
                   { provider = "moonshot", model = "kimi-k2.6" }]
        [aliases."kimi-k2.6"]
        targets = [{ provider = "agentsflare", model = "kimi-k2.6" }]
        "#,
        &[],
    )
    .await;
    let (got, body) = routed_to(&app, "kimi").await;
    assert_eq!(got, Flavour::Aimlapi);
    assert_eq!(body["model"], "moonshot/kimi-k2-6");
    // An alias overrides the default order of an exact name.
    let (got, _) = routed_to(&app, "kimi-k2.6").await;
    assert_eq!(got, Flavour::Agentsflare);
}

#[tokio::test]
async fn unknown_model_is_404_with_param_model() {
    let app = spawn_app().await;
    let response = app.chat(chat_body("gpt-4o", "hi", false)).await;
    assert_eq!(response.status(), 404);
    assert_eq!(response.headers()["x-should-retry"], "false");
    let error = error_of(response).await;
    assert_eq!(error["type"], "resource_not_found_error");
    assert_eq!(error["param"], "model");
    assert!(app.mock.requests().is_empty());
}

#[tokio::test]
async fn a_provider_without_a_key_is_not_served_and_the_error_names_the_variable() {
    let app = spawn_app_with("", &[("AGENTSFLARE_API_KEY", None)]).await;
    let response = app.chat(chat_body("kimi-chat", "hi", false)).await;
    assert_eq!(response.status(), 503);
    let error = error_of(response).await;
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("AGENTSFLARE_API_KEY"),
        "{error}"
    );
    // A model another keyed provider also serves still works.
    let (got, _) = routed_to(&app, "kimi-latest").await;
    assert_eq!(got, Flavour::Moonshot);
    // And the listing leaves the unkeyed provider's models out.
    let list = app.get_json("/v1/models").await;
    let ids = model_ids(&list);
    assert!(!ids.iter().any(|id| id == "kimi-chat"));
    assert!(ids.iter().any(|id| id == "kimi-latest"));
}

#[tokio::test]
async fn models_list_has_every_routable_name_with_its_owner() {
    let app = spawn_app_with(
        "[aliases.fast]\ntargets = [{ provider = \"moonshot\", model = \"kimi-k2-turbo-preview\" }]\n",
        &[],
    )
    .await;
    let list = app.get_json("/v1/models").await;
    assert_eq!(list["object"], "list");
    let data = list["data"].as_array().unwrap();
    let owner = |id: &str| {
        data.iter()
            .find(|m| m["id"] == id)
            .unwrap_or_else(|| panic!("{id} missing"))["owned_by"]
            .clone()
    };
    assert_eq!(owner("kimi-k2-turbo-preview"), "moonshot");
    assert_eq!(owner("moonshot/kimi-k2-preview"), "aimlapi");
    assert_eq!(owner("kimi-chat"), "agentsflare");
    assert_eq!(owner("agentsflare/kimi-k2.6"), "agentsflare");
    assert_eq!(owner("fast"), "moonshot");
    assert!(data.iter().all(|m| m["object"] == "model"));
}

#[tokio::test]
async fn models_retrieve_accepts_ids_with_slashes() {
    let app = spawn_app().await;
    let model = app.get_json("/v1/models/moonshot/kimi-k2-preview").await;
    assert_eq!(model["id"], "moonshot/kimi-k2-preview");
    assert_eq!(model["owned_by"], "aimlapi");
    let missing = app
        .client
        .get(app.url("/v1/models/nope/nothing"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(error_of(missing).await["type"], "resource_not_found_error");
    // A long id is quoted by its start and length, as chat's errors do.
    let long = "x".repeat(10_000);
    let missing = app
        .client
        .get(app.url(&format!("/v1/models/{long}")))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    let message = error_of(missing).await["message"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(message.contains("... (10000 bytes)"), "{message}");
    assert!(message.len() < 400, "{message}");
    // An id that is not UTF-8 once decoded gets the OpenAI error shape too.
    let garbled = app
        .client
        .get(app.url("/v1/models/%ff%fe"))
        .send()
        .await
        .unwrap();
    assert_eq!(garbled.status(), 400);
    assert_eq!(error_of(garbled).await["param"], "model");
}

#[tokio::test]
async fn health_and_readiness() {
    let app = spawn_app().await;
    let health = app.client.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = app.client.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert!(body["config"].as_str().is_some_and(|c| !c.is_empty()));

    let keyless = spawn_app_with(
        "",
        &[
            ("MOONSHOT_API_KEY", None),
            ("AIMLAPI_API_KEY", None),
            ("AGENTSFLARE_API_KEY", None),
        ],
    )
    .await;
    let ready = keyless
        .client
        .get(keyless.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    let health = keyless
        .client
        .get(keyless.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn unknown_paths_and_methods_get_openai_errors() {
    let app = spawn_app().await;
    let response = app.client.get(app.url("/v1/nothing")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    error_of(response).await;
    let response = app
        .client
        .get(app.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    error_of(response).await;
    let response = app
        .client
        .delete(app.url("/v1/models"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert!(response.headers().contains_key("allow"));
    error_of(response).await;
    // Only the exact path is the chat endpoint.
    let response = app
        .client
        .post(app.url("/v1/chat/completions/"))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    error_of(response).await;
}
