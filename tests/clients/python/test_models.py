"""`GET /v1/models` and `GET /v1/models/{id}` through the official SDK,
including ids that contain a `/` (which the SDK percent-encodes)."""

import openai
import pytest


def test_list_contains_every_providers_models(client: openai.OpenAI, provider):
    models = {m.id: m for m in client.models.list()}
    assert provider.model in models, sorted(models)
    assert models[provider.model].owned_by == provider.name
    assert models[provider.model].object == "model"


def test_list_has_no_duplicates(client: openai.OpenAI):
    ids = [m.id for m in client.models.list()]
    assert ids and len(ids) == len(set(ids))


def test_retrieve_returns_the_model(client: openai.OpenAI, provider):
    model = client.models.retrieve(provider.model)
    assert model.id == provider.model
    assert model.owned_by == provider.name


@pytest.mark.parametrize(
    "model_id, owner",
    [("moonshot/kimi-k2-preview", "aimlapi"), ("agentsflare/kimi-k2.6", "agentsflare")],
)
def test_retrieve_an_id_with_a_slash(client: openai.OpenAI, model_id, owner):
    model = client.models.retrieve(model_id)
    assert model.id == model_id
    assert model.owned_by == owner


def test_retrieve_an_unknown_model_is_not_found(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no-such/model")
    assert caught.value.type == "resource_not_found_error"
    assert caught.value.code == "model_not_found"
