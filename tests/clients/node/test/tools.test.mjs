/**
 * Tool calls through the official SDK: a function tool round trip, the same
 * streamed, and Moonshot's builtin `$web_search` whose arguments the client
 * echoes back in a `role: tool` message.
 */

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { makeClient, PROVIDERS } from '../support/clients.mjs';
import { useServers } from '../support/servers.mjs';

const servers = useServers({ before, after });

const WEATHER_TOOL = {
  type: 'function',
  function: {
    name: 'lookup_weather',
    description: 'Current weather for a place.',
    parameters: { type: 'object', properties: { query: { type: 'string' } }, required: ['query'] },
  },
};
const WEB_SEARCH_TOOL = { type: 'builtin_function', function: { name: '$web_search' } };

/** The assistant message to send back, as the SDK returned it. */
const assistantTurn = ({ role, content, tool_calls }) => ({ role, content, tool_calls });

for (const provider of PROVIDERS) {
  describe(`tools ${provider.name}`, () => {
    it('function tool round trip', async () => {
      const { client } = makeClient(servers);
      const messages = [{ role: 'user', content: 'Weather in Paris?' }];
      const first = await client.chat.completions.create({ model: provider.model, messages, tools: [WEATHER_TOOL] });
      const [choice] = first.choices;
      assert.equal(choice.finish_reason, 'tool_calls');
      assert.equal(choice.message.tool_calls.length, 1);
      const [call] = choice.message.tool_calls;
      assert.equal(call.type, 'function');
      assert.equal(call.function.name, 'lookup_weather');
      assert.deepEqual(JSON.parse(call.function.arguments), { query: 'mock' });

      messages.push(assistantTurn(choice.message), { role: 'tool', tool_call_id: call.id, content: 'sunny, 21 C' });
      const second = await client.chat.completions.create({ model: provider.model, messages, tools: [WEATHER_TOOL] });
      assert.equal(second.choices[0].finish_reason, 'stop');
      assert.equal(second.choices[0].message.content, 'The tool said: sunny, 21 C');
    });

    it('streamed tool call reassembles', async () => {
      const { client } = makeClient(servers);
      const calls = new Map();
      let finish = null;
      const stream = await client.chat.completions.create({
        model: provider.model,
        messages: [{ role: 'user', content: 'Weather in Paris?' }],
        tools: [WEATHER_TOOL],
        stream: true,
      });
      for await (const chunk of stream) {
        const [choice] = chunk.choices;
        if (!choice) continue;
        for (const delta of choice.delta.tool_calls ?? []) {
          const call = calls.get(delta.index) ?? { id: null, name: '', arguments: '' };
          call.id = delta.id ?? call.id;
          call.name += delta.function?.name ?? '';
          call.arguments += delta.function?.arguments ?? '';
          calls.set(delta.index, call);
        }
        finish = choice.finish_reason ?? finish;
      }
      assert.equal(finish, 'tool_calls');
      assert.deepEqual([...calls.keys()], [0]);
      const call = calls.get(0);
      assert.ok(call.id);
      assert.equal(call.name, 'lookup_weather');
      assert.deepEqual(JSON.parse(call.arguments), { query: 'mock' });
    });

    it('builtin $web_search round trip echoes the arguments', async () => {
      const { client } = makeClient(servers);
      const messages = [{ role: 'user', content: 'Search the news about Kimi.' }];
      const first = await client.chat.completions.create({ model: provider.model, messages, tools: [WEB_SEARCH_TOOL] });
      const [choice] = first.choices;
      assert.equal(choice.finish_reason, 'tool_calls');
      const [call] = choice.message.tool_calls;
      assert.equal(call.function.name, '$web_search');
      const args = call.function.arguments;
      assert.equal(JSON.parse(args).search_result.search_id, 'mock-search-1');

      // Moonshot's contract: hand the arguments back unchanged as the tool result.
      messages.push(assistantTurn(choice.message), {
        role: 'tool',
        tool_call_id: call.id,
        name: '$web_search',
        content: args,
      });
      const second = await client.chat.completions.create({ model: provider.model, messages, tools: [WEB_SEARCH_TOOL] });
      assert.equal(second.choices[0].message.content, `The tool said: ${args}`);
    });
  });
}
