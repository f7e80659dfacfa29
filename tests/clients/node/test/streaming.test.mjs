/**
 * Streamed chat completions through the official SDK: reassembly chunk by
 * chunk, `stream_options.include_usage` for every provider, `n` streams, an
 * error after the first byte (the gateway's or the provider's own event), and
 * a client-side timeout mid-stream.
 */

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { APIConnectionError, APIConnectionTimeoutError, APIError } from 'openai';
import { makeClient, PROVIDERS } from '../support/clients.mjs';
import { useServers } from '../support/servers.mjs';

const servers = useServers({ before, after });

function stream(client, provider, content = 'hi', options = {}, requestOptions = {}) {
  return client.chat.completions.create(
    { model: provider.model, messages: [{ role: 'user', content }], stream: true, ...options },
    requestOptions,
  );
}

async function collect(streamPromise) {
  const chunks = [];
  for await (const chunk of await streamPromise) chunks.push(chunk);
  return chunks;
}

/** The chunks a stream delivered before it threw, and what it threw. */
async function thrownMidStream(client, provider, content) {
  const seen = [];
  const response = await stream(client, provider, content);
  try {
    for await (const chunk of response) seen.push(chunk);
  } catch (err) {
    return { seen, err };
  }
  assert.fail(`the stream ended without an error after ${seen.length} chunks`);
}

const finishReasons = (chunks) => chunks.filter((c) => c.choices[0]?.finish_reason).map((c) => c.choices[0].finish_reason);

for (const provider of PROVIDERS) {
  describe(`streaming ${provider.name}`, () => {
    it('chunks reassemble into the answer', async () => {
      const { client } = makeClient(servers);
      const chunks = await collect(stream(client, provider, '[mock chunks=5]'));
      // Every chunk has a choice, from every provider (Agentsflare's opening
      // Azure-style chunk with none is dropped): OpenAI's own examples read
      // `chunk.choices[0]` of each.
      for (const c of chunks) {
        assert.equal(c.object, 'chat.completion.chunk');
        assert.ok(c.choices.length > 0, JSON.stringify(c));
      }
      const content = chunks.filter((c) => c.choices[0].delta?.content);
      assert.equal(content.length, 5);
      assert.equal(content.map((c) => c.choices[0].delta.content).join(''), provider.streamedText(5));
      const roles = chunks.filter((c) => c.choices[0]?.delta?.role).map((c) => c.choices[0].delta.role);
      assert.deepEqual(roles, ['assistant']);
      assert.deepEqual(finishReasons(chunks), ['stop']);
    });

    it('include_usage adds a final usage chunk', async () => {
      const { client } = makeClient(servers);
      const chunks = await collect(stream(client, provider, 'hi', { stream_options: { include_usage: true } }));
      const last = chunks.at(-1);
      assert.deepEqual(last.choices, [], JSON.stringify(last));
      assert.ok(last.usage, JSON.stringify(last));
      assert.equal(last.usage.completion_tokens, 3);
      assert.equal(last.usage.total_tokens, last.usage.prompt_tokens + last.usage.completion_tokens);
      assert.deepEqual(
        chunks.slice(0, -1).filter((c) => c.usage),
        [],
        'only the final chunk has a top-level usage',
      );
    });

    it('the usage chunk reports cached tokens the OpenAI way', async () => {
      const { client } = makeClient(servers);
      const chunks = await collect(stream(client, provider, 'hi', { stream_options: { include_usage: true } }));
      const { usage } = chunks.at(-1);
      assert.ok(usage, 'no usage chunk');
      assert.equal(usage.prompt_tokens_details?.cached_tokens, provider.name === 'moonshot' ? 2 : 0, JSON.stringify(usage));
    });

    it('no usage chunk unless asked', async () => {
      const { client } = makeClient(servers);
      const chunks = await collect(stream(client, provider));
      assert.deepEqual(
        chunks.filter((c) => c.usage && c.choices.length === 0),
        [],
      );
      assert.equal(chunks.at(-1).choices[0].finish_reason, 'stop');
    });

    it('n = 2 streams reassemble per choice', async () => {
      const { client } = makeClient(servers);
      const texts = {};
      const finished = {};
      for (const chunk of await collect(stream(client, provider, 'hi', { n: 2 }))) {
        for (const choice of chunk.choices) {
          texts[choice.index] = (texts[choice.index] ?? '') + (choice.delta.content ?? '');
          if (choice.finish_reason) finished[choice.index] = choice.finish_reason;
        }
      }
      assert.deepEqual(texts, { 0: provider.streamedText(), 1: provider.streamedText() });
      assert.deepEqual(finished, { 0: 'stop', 1: 'stop' });
    });

    it('a failure after the first byte throws mid-stream', async () => {
      const { client } = makeClient(servers);
      const { seen, err } = await thrownMidStream(client, provider, '[mock cut_after=3 chunks=5 chunk_delay_ms=50]');
      assert.ok(err instanceof APIError, String(err));
      assert.ok(!(err instanceof APIConnectionError), String(err));
      assert.equal(err.type, 'server_error');
      assert.equal(err.code, 'upstream_unreachable');
      assert.match(err.message, new RegExp(provider.name));
      assert.ok(seen.length > 0, 'chunks before the failure were delivered');
    });

    it("a provider's error event mid-stream throws with its message", async () => {
      const { client } = makeClient(servers);
      const { seen, err } = await thrownMidStream(client, provider, '[mock error_event_after=2 chunks=5 chunk_delay_ms=20]');
      assert.ok(err instanceof APIError, String(err));
      assert.equal(err.type, 'engine_overloaded_error');
      assert.match(err.message, /overloaded/);
      assert.ok(seen.length > 0, 'chunks before the error event were delivered');
    });

    it('an empty error event mid-stream throws with a message that says so', async () => {
      const { client } = makeClient(servers);
      const { seen, err } = await thrownMidStream(
        client,
        provider,
        '[mock error_event_after=2 chunks=5 chunk_delay_ms=20 empty_error]',
      );
      assert.ok(err instanceof APIError, String(err));
      assert.equal(err.type, 'server_error');
      assert.match(err.message, new RegExp(provider.name));
      assert.ok(seen.length > 0, 'chunks before the error event were delivered');
    });

    it('a client-side timeout mid-stream ends the stream early', async () => {
      // The SDK's `timeout` covers the wait for the response head; a signal
      // bounds the whole exchange, body included.
      const { client } = makeClient(servers, { timeout: 500 });
      const signal = AbortSignal.timeout(500);
      const seen = [];
      const response = await stream(client, provider, '[mock chunk_delay_ms=3000 chunks=3]', {}, { signal });
      try {
        for await (const chunk of response) seen.push(chunk);
      } catch (err) {
        assert.ok(err.name === 'AbortError' || err.name === 'TimeoutError' || err instanceof APIError, String(err));
      }
      assert.ok(signal.aborted, 'the stream ended before the timeout fired');
      assert.ok(seen.length > 0, 'events before the first delay arrived');
      assert.deepEqual(finishReasons(seen), [], 'the answer did not complete');
    });

    it('the SDK timeout applies while waiting for the head', async () => {
      const { client, requests } = makeClient(servers, { timeout: 500 });
      await assert.rejects(stream(client, provider, '[mock head_delay_ms=3000]'), APIConnectionTimeoutError);
      assert.equal(requests.length, 1);
    });
  });
}
