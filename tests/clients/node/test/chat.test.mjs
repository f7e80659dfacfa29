/**
 * Non-streamed chat completions through the official SDK: plain answers,
 * cached tokens the OpenAI way, `n` choices, Moonshot's partial mode and
 * image content parts.
 */

import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, it } from 'node:test';
import { makeClient, PROVIDERS, sentBody } from '../support/clients.mjs';
import { useServers } from '../support/servers.mjs';

const servers = useServers({ before, after });

// A valid 1x1 PNG.
const TINY_PNG =
  'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==';

const hi = [{ role: 'user', content: 'hi' }];

for (const provider of PROVIDERS) {
  describe(`chat ${provider.name}`, () => {
    it('completion', async () => {
      const { client } = makeClient(servers);
      const completion = await client.chat.completions.create({ model: provider.model, messages: hi });
      assert.equal(completion.object, 'chat.completion');
      assert.equal(completion.model, provider.model);
      assert.equal(completion.choices.length, 1);
      const [choice] = completion.choices;
      assert.equal(choice.message.role, 'assistant');
      assert.equal(choice.message.content, provider.greeting());
      assert.equal(choice.finish_reason, 'stop');
      const { usage } = completion;
      assert.ok(usage.prompt_tokens > 0);
      assert.equal(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
    });

    it('cached tokens are readable the OpenAI way', async () => {
      const { client } = makeClient(servers);
      const completion = await client.chat.completions.create({ model: provider.model, messages: hi });
      // The mock's Moonshot reports 2 cached tokens as `usage.cached_tokens`.
      assert.equal(
        completion.usage.prompt_tokens_details?.cached_tokens,
        provider.name === 'moonshot' ? 2 : 0,
        JSON.stringify(completion.usage),
      );
    });

    it('n = 2 gives two choices', async () => {
      const { client } = makeClient(servers);
      const completion = await client.chat.completions.create({ model: provider.model, n: 2, messages: hi });
      assert.deepEqual(
        completion.choices.map((c) => c.index),
        [0, 1],
      );
      for (const choice of completion.choices) assert.equal(choice.message.content, provider.greeting());
    });

    it('partial mode: last assistant message with partial and name', async () => {
      const { client, requests } = makeClient(servers);
      const partial = { role: 'assistant', content: 'Once upon', partial: true, name: 'Narrator' };
      const completion = await client.chat.completions.create({
        model: provider.model,
        messages: [{ role: 'user', content: 'Tell me a story.' }, partial],
      });
      assert.equal(completion.choices[0].message.content, provider.greeting());
      assert.deepEqual(sentBody(requests).messages.at(-1), partial);
    });

    it('image content part', async () => {
      const { client, requests } = makeClient(servers);
      const url = `data:image/png;base64,${TINY_PNG}`;
      const completion = await client.chat.completions.create({
        model: provider.visionModel,
        messages: [
          {
            role: 'user',
            content: [
              { type: 'image_url', image_url: { url } },
              { type: 'text', text: 'What is in this picture?' },
            ],
          },
        ],
      });
      assert.equal(completion.choices[0].message.content, provider.greeting(provider.visionModel));
      assert.deepEqual(sentBody(requests).messages[0].content[0], { type: 'image_url', image_url: { url } });
    });

    it('a megabyte-sized image reaches the provider whole', async () => {
      const { client } = makeClient(servers);
      // 1.5 MB of base64: the mock provider itself takes bodies up to 2 MB.
      const picture = randomBytes(1100 * 1024).toString('base64');
      const completion = await client.chat.completions.create({
        model: provider.visionModel,
        messages: [
          {
            role: 'user',
            content: [
              { type: 'image_url', image_url: { url: `data:image/png;base64,${picture}` } },
              { type: 'text', text: 'Describe it.' },
            ],
          },
        ],
      });
      // The mock counts a prompt token per 4 bytes of the body it received.
      assert.ok(completion.usage.prompt_tokens >= picture.length / 4, String(completion.usage.prompt_tokens));
    });
  });
}

describe('chat routing', () => {
  it('a provider prefix routes to that provider', async () => {
    const { client } = makeClient(servers);
    const completion = await client.chat.completions.create({ model: 'agentsflare/kimi-k2.6', messages: hi });
    assert.equal(completion.choices[0].message.content, 'Hello from agentsflare (kimi-k2.6).');
  });
});
