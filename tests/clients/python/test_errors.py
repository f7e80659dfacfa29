"""Every provider error reaches the SDK as the right exception class, with
the OpenAI `type`/`code` readable, whether or not the request streamed."""

import openai
import pytest

# mock scenario -> (SDK exception, HTTP status, error.type, error.code or None)
ERRORS = {
    "invalid_request": (openai.BadRequestError, 400, "invalid_request_error", None),
    "content_filter": (openai.BadRequestError, 400, "content_filter", None),
    "permission": (openai.PermissionDeniedError, 403, "permission_denied_error", None),
    "not_found": (openai.NotFoundError, 404, "resource_not_found_error", None),
    "rate_limit": (openai.RateLimitError, 429, "rate_limit_reached_error", None),
    "overloaded": (openai.RateLimitError, 429, "engine_overloaded_error", None),
    "overloaded_529": (openai.RateLimitError, 429, "engine_overloaded_error", None),
    "quota": (openai.RateLimitError, 429, "exceeded_current_quota_error", None),
    "server": (openai.InternalServerError, 500, "server_error", None),
    "bad_gateway": (openai.InternalServerError, 502, "server_error", None),
    "unavailable": (openai.InternalServerError, 503, "server_error", None),
    "generation_timeout": (openai.InternalServerError, 504, "server_error", None),
    "non_json": (openai.InternalServerError, 502, "server_error", "upstream_bad_response"),
    # The provider refusing the gateway's own key is the gateway's problem.
    "auth": (openai.InternalServerError, 502, "server_error", "upstream_key_rejected"),
}


@pytest.mark.parametrize("stream", [False, True], ids=["plain", "stream"])
@pytest.mark.parametrize("scenario", list(ERRORS))
def test_provider_error_maps_to_the_sdk_exception(client: openai.OpenAI, provider, scenario, stream):
    exception, status, error_type, code = ERRORS[scenario]
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model=provider.model,
            messages=[{"role": "user", "content": f"[mock error={scenario}]"}],
            stream=stream,
        )
    error = caught.value
    assert type(error) is exception, f"{type(error).__name__}: {error}"
    assert error.status_code == status
    assert error.type == error_type
    assert error.code == code
    assert isinstance(error.body, dict) and error.body["type"] == error_type
    assert error.body["message"] and error.message
    assert error.request_id


def test_the_key_rejection_names_the_variable_to_fix(client: openai.OpenAI, provider):
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(
            model=provider.model, messages=[{"role": "user", "content": "[mock error=auth]"}]
        )
    assert f"{provider.name.upper()}_API_KEY" in caught.value.message
    assert "mock-key" not in caught.value.message


def test_unknown_model_is_not_found_with_param_model(client: openai.OpenAI):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.type == "resource_not_found_error"
    assert caught.value.code == "model_not_found"
    assert caught.value.param == "model"


def test_a_request_without_messages_is_a_bad_request_with_param(client: openai.OpenAI, provider):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=provider.model, messages=None, extra_body={})
    assert caught.value.type == "invalid_request_error"
    assert caught.value.param == "messages"
