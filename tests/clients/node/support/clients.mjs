/**
 * The providers behind the gateway (each by a model only it serves, with the
 * text the mock answers), and OpenAI clients that count their HTTP requests.
 */

import OpenAI from 'openai';

// No client key is checked yet; the SDK insists on having one.
export const CLIENT_KEY = 'sk-client-dummy';
// Longest any single request of a test may take, in milliseconds.
const REQUEST_TIMEOUT_MS = 30_000;

export class Provider {
  constructor(name, model, visionModel) {
    this.name = name;
    this.model = model;
    this.visionModel = visionModel;
  }

  /** The mock's whole answer to a plain request. */
  greeting(model = this.model) {
    return `Hello from ${this.name} (${model}).`;
  }

  /** What `chunks` streamed content deltas add up to. */
  streamedText(chunks = 3) {
    const words = this.greeting().split(' ').map((w) => `${w} `);
    return Array.from({ length: chunks }, (_, i) => words[i % words.length]).join('');
  }
}

export const PROVIDERS = [
  new Provider('moonshot', 'kimi-k2-turbo-preview', 'moonshot-v1-8k-vision-preview'),
  new Provider('aimlapi', 'moonshot/kimi-k2-preview', 'moonshot/kimi-k2-preview'),
  new Provider('agentsflare', 'kimi-chat', 'kimi-chat'),
];

/**
 * An OpenAI client for `servers` (no retries unless asked) and the list of
 * requests it sent: `{ url, body, at, status }` in order (`status` once the
 * response head has come).
 */
export function makeClient(servers, { onStatus, ...options } = {}) {
  const requests = [];
  const client = new OpenAI({
    baseURL: servers.baseURL,
    apiKey: CLIENT_KEY,
    maxRetries: 0,
    timeout: REQUEST_TIMEOUT_MS,
    ...options,
    fetch: async (url, init) => {
      const request = { url: String(url), body: init?.body, at: performance.now() };
      requests.push(request);
      const response = await fetch(url, init);
      request.status = response.status;
      // Called as each answer comes, before the SDK acts on it.
      onStatus?.(response.status);
      return response;
    },
  });
  return { client, requests };
}

/** The JSON body of the last request sent. */
export function sentBody(requests) {
  return JSON.parse(requests.at(-1).body);
}
