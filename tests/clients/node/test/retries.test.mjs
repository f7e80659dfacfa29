/**
 * The SDK's retry logic driven by the gateway's headers: `Retry-After` is
 * honoured on a 429, `x-should-retry: false` stops retries of errors that a
 * retry cannot fix, and `x-should-retry: true` keeps 5xx retried, the
 * gateway's own 503 for a body it has no room for included. Attempts are
 * counted through the client's `fetch`.
 */

import assert from 'node:assert/strict';
import net from 'node:net';
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

    // This SDK sleeps for whatever wait it is given, inside the call: a
    // zero wait passed on would be retried at once, an hour's slept.
    it('a 429 whose provider asked for no wait is retried after a backoff', async () => {
      const { client, requests } = makeClient(servers, { maxRetries: 1 });
      await assert.rejects(ask(client, provider, '[mock error=rate_limit retry_after_ms=0]'), (err) => {
        assert.ok(err instanceof RateLimitError, String(err));
        assert.notEqual(err.headers.get('retry-after-ms'), '0');
        return true;
      });
      assert.equal(requests.length, 2);
      // The SDK's own first backoff is at least 0.375 s.
      assert.ok(requests[1].at - requests[0].at >= 300, `${requests[1].at - requests[0].at} ms`);
    });

    it('a 429 asking for an hour is not retried', async () => {
      const { client, requests } = makeClient(servers, { maxRetries: 2 });
      const started = Date.now();
      await assert.rejects(ask(client, provider, '[mock error=rate_limit retry_after=3600]'), (err) => {
        assert.ok(err instanceof RateLimitError, String(err));
        assert.equal(err.headers.get('retry-after'), '3600');
        assert.equal(err.headers.get('x-should-retry'), 'false');
        return true;
      });
      assert.equal(requests.length, 1);
      assert.ok(Date.now() - started < 10_000);
    });

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

/** A gauge's value on the gateway's /metrics. */
async function gauge(name) {
  const text = await (await fetch(`${servers.gatewayURL}/metrics`)).text();
  const line = text.split('\n').find((l) => l.startsWith(`${name} `));
  return line === undefined ? undefined : Number(line.split(' ')[1]);
}

async function waitFor(what, condition) {
  const deadline = performance.now() + 10_000;
  while (!(await condition())) {
    assert.ok(performance.now() < deadline, `timed out waiting until ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

describe('retries gateway resources', () => {
  it('a long prompt the gateway has no room for is retried after its wait', async () => {
    // A client declares a body of nearly the whole total and sends all of
    // it but its last byte: the gateway holds what it sent (a body claims
    // its bytes as they come, not its declared length).
    const held = 33_000_000;
    const { hostname, port } = new URL(servers.gatewayURL);
    const holder = net.connect(Number(port), hostname);
    holder.on('error', () => {});
    holder.write(
      'POST /v1/chat/completions HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n' +
        `Content-Length: ${held}\r\n\r\n{` +
        ' '.repeat(held - 2),
    );
    await waitFor('the nearly whole body is held', async () => (await gauge('kimi_gateway_request_body_bytes')) === held);

    const provider = PROVIDERS[0];
    // No room for the prompt: 503 with Retry-After: 1, which the SDK
    // retries. The holder leaves as the 503 comes, giving the room back
    // before the retry however slow the machine.
    const leave = (status) => status === 503 && holder.destroy();
    const { client, requests } = makeClient(servers, { maxRetries: 1, onStatus: leave });
    let completion;
    try {
      completion = await ask(client, provider, 'x'.repeat(600_000));
    } finally {
      holder.destroy();
    }
    assert.equal(completion.choices[0].message.content, provider.greeting());
    assert.deepEqual(requests.map((r) => r.status), [503, 200]);
    assert.ok(requests[1].at - requests[0].at >= 900, `${requests[1].at - requests[0].at} ms`);
    await waitFor('every body is given back', async () => (await gauge('kimi_gateway_request_body_bytes')) === 0);
  });
});
