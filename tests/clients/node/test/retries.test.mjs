/**
 * The SDK's retry logic driven by the gateway's headers: `Retry-After` is
 * honoured on a 429, `x-should-retry: false` stops retries of errors that a
 * retry cannot fix, and `x-should-retry: true` keeps 5xx retried. Attempts
 * are counted through the client's `fetch`.
 */

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { BadRequestError, InternalServerError, NotFoundError, PermissionDeniedError, RateLimitError } from 'openai';
import { makeClient, PROVIDERS } from '../support/clients.mjs';
import { useServers } from '../support/servers.mjs';

const servers = useServers({ before, after });

const ask = (client, provider, content) =>
  client.chat.completions.create({ model: provider.model, messages: [{ role: 'user', content }] });

for (const provider of PROVIDERS) {
  describe(`retries ${provider.name}`, () => {
    for (const [directive, field, value] of [
      ['[mock error=rate_limit retry_after=1]', 'retry-after', '1'],
      // Moonshot's 429 says "please try again after 1 seconds" and sends no
      // Retry-After; the gateway turns the words into the fields.
      ['[mock error=rate_limit]', 'retry-after-ms', '1000'],
    ]) {
      it(`a 429 is retried after its wait (${field})`, async () => {
        const { client, requests } = makeClient(servers, { maxRetries: 1 });
        await assert.rejects(ask(client, provider, directive), (err) => {
          assert.ok(err instanceof RateLimitError, String(err));
          assert.equal(err.headers.get(field), value);
          return true;
        });
        assert.equal(requests.length, 2);
        // The SDK's own first backoff is at most 0.5 s: waiting about a
        // second means it took the gateway's wait.
        assert.ok(requests[1].at - requests[0].at >= 900, `${requests[1].at - requests[0].at} ms`);
      });
    }

    for (const [scenario, ErrorClass] of [
      ['invalid_request', BadRequestError],
      ['content_filter', BadRequestError],
      ['permission', PermissionDeniedError],
      ['not_found', NotFoundError],
      ['quota', RateLimitError],
    ]) {
      it(`${scenario} is attempted once (x-should-retry: false)`, async () => {
        const { client, requests } = makeClient(servers, { maxRetries: 2 });
        await assert.rejects(ask(client, provider, `[mock error=${scenario}]`), (err) => {
          assert.equal(err.constructor, ErrorClass, String(err));
          assert.equal(err.headers.get('x-should-retry'), 'false');
          return true;
        });
        assert.equal(requests.length, 1);
      });
    }

    it('a server error is retried', async () => {
      const { client, requests } = makeClient(servers, { maxRetries: 2 });
      await assert.rejects(ask(client, provider, '[mock error=server]'), InternalServerError);
      assert.equal(requests.length, 3);
    });
  });
}

describe('retries gateway', () => {
  it('an unknown model is not retried', async () => {
    const { client, requests } = makeClient(servers, { maxRetries: 2 });
    await assert.rejects(client.chat.completions.create({ model: 'gpt-4o', messages: [{ role: 'user', content: 'hi' }] }), NotFoundError);
    assert.equal(requests.length, 1);
  });
});
