/**
 * GET /v1/models and /v1/models/{id} through the official SDK, including ids
 * with a `/` (which the SDK percent-encodes).
 */

import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { NotFoundError } from 'openai';
import { makeClient, PROVIDERS } from '../support/clients.mjs';
import { useServers } from '../support/servers.mjs';

const servers = useServers({ before, after });

describe('models', () => {
  for (const provider of PROVIDERS) {
    describe(provider.name, () => {
      it('list contains the provider model', async () => {
        const { client } = makeClient(servers);
        const models = new Map();
        for await (const model of client.models.list()) models.set(model.id, model);
        assert.ok(models.has(provider.model), [...models.keys()].join(', '));
        assert.equal(models.get(provider.model).owned_by, provider.name);
        assert.equal(models.get(provider.model).object, 'model');
      });

      it('retrieve returns the model', async () => {
        const { client } = makeClient(servers);
        const model = await client.models.retrieve(provider.model);
        assert.equal(model.id, provider.model);
        assert.equal(model.owned_by, provider.name);
      });
    });
  }

  it('list has no duplicates', async () => {
    const { client } = makeClient(servers);
    const ids = [];
    for await (const model of client.models.list()) ids.push(model.id);
    assert.ok(ids.length > 0);
    assert.equal(new Set(ids).size, ids.length);
  });

  for (const [id, owner] of [
    ['moonshot/kimi-k2-preview', 'aimlapi'],
    ['agentsflare/kimi-k2.6', 'agentsflare'],
  ]) {
    it(`retrieve an id with a slash: ${id}`, async () => {
      const { client, requests } = makeClient(servers);
      const model = await client.models.retrieve(id);
      assert.equal(model.id, id);
      assert.equal(model.owned_by, owner);
      assert.match(requests[0].url, /%2F/, 'the SDK encodes the slash');
    });
  }

  it('retrieve an unknown model is NotFoundError', async () => {
    const { client } = makeClient(servers);
    await assert.rejects(client.models.retrieve('no-such/model'), (err) => {
      assert.ok(err instanceof NotFoundError, String(err));
      assert.equal(err.type, 'resource_not_found_error');
      assert.equal(err.code, 'model_not_found');
      return true;
    });
  });
});
