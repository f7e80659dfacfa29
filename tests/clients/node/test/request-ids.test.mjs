/**
 * The request id the gateway sets (`x-request-id`) as the SDK exposes it:
 * `_request_id` on responses, `request_id` from `withResponse()` and
 * `requestID` on errors.
 */

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { RateLimitError } from 'openai';
import { makeClient, PROVIDERS } from '../support/clients.mjs';
import { useServers } from '../support/servers.mjs';

const servers = useServers({ before, after });

const hi = [{ role: 'user', content: 'hi' }];

for (const provider of PROVIDERS) {
  describe(`request ids ${provider.name}`, () => {
    it('completion exposes the request id', async () => {
      const { client } = makeClient(servers);
      const { data, response, request_id } = await client.chat.completions
        .create({ model: provider.model, messages: hi })
        .withResponse();
      assert.ok(request_id);
      assert.equal(request_id, response.headers.get('x-request-id'));
      assert.equal(data._request_id, request_id);
    });

    it('each request gets its own id', async () => {
      const { client } = makeClient(servers);
      const ids = new Set();
      for (let i = 0; i < 3; i++) {
        ids.add((await client.chat.completions.create({ model: provider.model, messages: hi }))._request_id);
      }
      assert.ok(!ids.has(undefined) && !ids.has(null));
      assert.equal(ids.size, 3);
    });

    it('a client-chosen request id is kept', async () => {
      const { client } = makeClient(servers);
      const completion = await client.chat.completions.create(
        { model: provider.model, messages: hi },
        { headers: { 'x-request-id': 'client-trace-42' } },
      );
      assert.equal(completion._request_id, 'client-trace-42');
    });

    it('errors expose the request id', async () => {
      const { client } = makeClient(servers);
      await assert.rejects(
        client.chat.completions.create({ model: provider.model, messages: [{ role: 'user', content: '[mock error=rate_limit]' }] }),
        (err) => {
          assert.ok(err instanceof RateLimitError, String(err));
          assert.ok(err.requestID);
          assert.equal(err.requestID, err.headers.get('x-request-id'));
          return true;
        },
      );
    });

    it('streams expose the request id', async () => {
      const { client } = makeClient(servers);
      const { data: stream, request_id } = await client.chat.completions
        .create({ model: provider.model, messages: hi, stream: true })
        .withResponse();
      const chunks = [];
      for await (const chunk of stream) chunks.push(chunk);
      assert.ok(request_id);
      assert.ok(chunks.length > 0);
    });
  });
}

describe('request ids models', () => {
  it('models expose the request id', async () => {
    const { client } = makeClient(servers);
    const model = await client.models.retrieve('kimi-chat');
    assert.ok(model._request_id);
  });
});
