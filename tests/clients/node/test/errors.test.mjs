/**
 * Every provider error reaches the SDK as the right exception class, with the
 * OpenAI `type`/`code`/`param` readable, whether or not the request streamed.
 */

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { BadRequestError, InternalServerError, NotFoundError, PermissionDeniedError, RateLimitError } from 'openai';
import { makeClient, PROVIDERS } from '../support/clients.mjs';
import { useServers } from '../support/servers.mjs';

const servers = useServers({ before, after });

// mock scenario -> [SDK error class, HTTP status, error.type, error.code]
const ERRORS = {
  invalid_request: [BadRequestError, 400, 'invalid_request_error', null],
  content_filter: [BadRequestError, 400, 'content_filter', null],
  permission: [PermissionDeniedError, 403, 'permission_denied_error', null],
  not_found: [NotFoundError, 404, 'resource_not_found_error', null],
  rate_limit: [RateLimitError, 429, 'rate_limit_reached_error', null],
  overloaded: [RateLimitError, 429, 'engine_overloaded_error', null],
  overloaded_529: [RateLimitError, 429, 'engine_overloaded_error', null],
  quota: [RateLimitError, 429, 'exceeded_current_quota_error', null],
  server: [InternalServerError, 500, 'server_error', null],
  bad_gateway: [InternalServerError, 502, 'server_error', null],
  unavailable: [InternalServerError, 503, 'server_error', null],
  generation_timeout: [InternalServerError, 504, 'server_error', null],
  non_json: [InternalServerError, 502, 'server_error', 'upstream_bad_response'],
  // The provider refusing the gateway's own key is the gateway's problem.
  auth: [InternalServerError, 502, 'server_error', 'upstream_key_rejected'],
};

for (const provider of PROVIDERS) {
  describe(`errors ${provider.name}`, () => {
    for (const [scenario, [ErrorClass, status, type, code]] of Object.entries(ERRORS)) {
      for (const stream of [false, true]) {
        it(`${scenario}${stream ? ' (stream)' : ''} -> ${ErrorClass.name}`, async () => {
          const { client } = makeClient(servers);
          await assert.rejects(
            client.chat.completions.create({
              model: provider.model,
              messages: [{ role: 'user', content: `[mock error=${scenario}]` }],
              stream,
            }),
            (err) => {
              assert.equal(err.constructor, ErrorClass, `${err.constructor.name}: ${err}`);
              assert.equal(err.status, status);
              assert.equal(err.type, type);
              assert.equal(err.code, code);
              assert.equal(err.error.type, type);
              assert.ok(err.error.message);
              assert.ok(err.requestID);
              return true;
            },
          );
        });
      }
    }

    it('the key rejection names the variable to fix', async () => {
      const { client } = makeClient(servers);
      await assert.rejects(
        client.chat.completions.create({
          model: provider.model,
          messages: [{ role: 'user', content: '[mock error=auth]' }],
        }),
        (err) => {
          assert.ok(err instanceof InternalServerError, String(err));
          assert.match(err.message, new RegExp(`${provider.name.toUpperCase()}_API_KEY`));
          assert.doesNotMatch(err.message, /mock-key/);
          return true;
        },
      );
    });
  });
}

describe('gateway errors', () => {
  it('unknown model is NotFoundError with param model', async () => {
    const { client } = makeClient(servers);
    await assert.rejects(client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] }), (err) => {
      assert.ok(err instanceof NotFoundError, String(err));
      assert.equal(err.type, 'resource_not_found_error');
      assert.equal(err.code, 'model_not_found');
      assert.equal(err.param, 'model');
      return true;
    });
  });

  it('a request without messages is BadRequestError with param messages', async () => {
    const { client } = makeClient(servers);
    await assert.rejects(client.chat.completions.create({ model: 'kimi-chat' }), (err) => {
      assert.ok(err instanceof BadRequestError, String(err));
      assert.equal(err.type, 'invalid_request_error');
      assert.equal(err.param, 'messages');
      return true;
    });
  });
});
