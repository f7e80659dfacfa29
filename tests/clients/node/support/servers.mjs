/**
 * Starts a mock provider and a kimi-gateway as child processes on free
 * loopback ports, waits until each answers, and stops them again.
 *
 * The binaries come from MOCK_PROVIDER_BIN and KIMI_GATEWAY_BIN, defaulting to
 * target/debug/mock-provider and target/debug/kimi-gateway under the
 * repository root. The gateway runs with tests/clients/gateway.toml (one
 * attempt per request, no circuit breaking). Stopping them removes their
 * working directory (with both logs) unless KIMI_GATEWAY_KEEP_TEST_LOGS is set.
 */

import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, closeSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as delay } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(HERE, '../../../..');
const GATEWAY_CONFIG = path.resolve(HERE, '../../gateway.toml');
export const PROVIDER_KEY = 'mock-key';
const STARTUP_MS = 30_000;

function binary(envVar, name) {
  const file = process.env[envVar] || path.join(REPO_ROOT, 'target', 'debug', name);
  if (!existsSync(file)) {
    throw new Error(`${file} not found: run \`cargo build --bins\` or set ${envVar}`);
  }
  return file;
}

/** A port nothing listens on right now (the OS picks it for port 0). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function start(file, args, { env, log, cwd }) {
  const fd = openSync(log, 'w');
  const child = spawn(file, args, { env, cwd, stdio: ['ignore', fd, fd] });
  closeSync(fd);
  child.exited = new Promise((resolve) => child.once('exit', (code, signal) => resolve({ code, signal })));
  return child;
}

/** Polls `url` until it answers 200; fails early if `child` exits. */
async function waitUntilOk(url, child, log) {
  const deadline = Date.now() + STARTUP_MS;
  let lastError;
  while (Date.now() < deadline) {
    if (child.exitCode !== null || child.signalCode !== null) {
      throw new Error(`${child.spawnfile} exited (${child.exitCode ?? child.signalCode}):\n${readFileSync(log, 'utf8')}`);
    }
    try {
      const response = await fetch(url, { signal: AbortSignal.timeout(1000) });
      if (response.ok) return;
      lastError = new Error(`HTTP ${response.status}`);
    } catch (err) {
      lastError = err;
    }
    await delay(50);
  }
  throw new Error(`${url} did not answer within ${STARTUP_MS} ms (${lastError}):\n${readFileSync(log, 'utf8')}`);
}

async function stop(child) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const killer = setTimeout(() => child.kill('SIGKILL'), 5000);
  await child.exited;
  clearTimeout(killer);
}

/**
 * Starts both processes. Resolves to `{ baseURL, mockURL, stop() }`, where
 * `baseURL` is what an OpenAI client takes as its base URL.
 */
export async function startServers() {
  const mockBin = binary('MOCK_PROVIDER_BIN', 'mock-provider');
  const gatewayBin = binary('KIMI_GATEWAY_BIN', 'kimi-gateway');
  const workdir = mkdtempSync(path.join(os.tmpdir(), 'kimi-gateway-clients-'));
  const children = [];
  const stopAll = async () => {
    for (const child of children.reverse()) await stop(child);
    if (process.env.KIMI_GATEWAY_KEEP_TEST_LOGS) {
      console.log(`logs kept in ${workdir}`);
    } else {
      rmSync(workdir, { recursive: true, force: true });
    }
  };
  try {
    const mockPort = await freePort();
    const mockURL = `http://127.0.0.1:${mockPort}`;
    const mockLog = path.join(workdir, 'mock-provider.log');
    const mock = start(mockBin, ['--listen', `127.0.0.1:${mockPort}`, '--api-key', PROVIDER_KEY], {
      env: process.env,
      log: mockLog,
      cwd: workdir,
    });
    children.push(mock);
    await waitUntilOk(`${mockURL}/moonshot/v1/models`, mock, mockLog);

    const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('KIMI_GATEWAY_')));
    for (const name of ['moonshot', 'aimlapi', 'agentsflare']) {
      env[`${name.toUpperCase()}_API_KEY`] = PROVIDER_KEY;
      env[`${name.toUpperCase()}_BASE_URL`] = `${mockURL}/${name}/v1`;
    }
    const gatewayPort = await freePort();
    const gatewayURL = `http://127.0.0.1:${gatewayPort}`;
    const gatewayLog = path.join(workdir, 'kimi-gateway.log');
    const gateway = start(gatewayBin, ['--config', GATEWAY_CONFIG, '--listen', `127.0.0.1:${gatewayPort}`], {
      env,
      log: gatewayLog,
      cwd: workdir,
    });
    children.push(gateway);
    await waitUntilOk(`${gatewayURL}/healthz`, gateway, gatewayLog);
    return { baseURL: `${gatewayURL}/v1`, gatewayURL, mockURL, stop: stopAll };
  } catch (err) {
    await stopAll();
    throw err;
  }
}

/**
 * Registers `before`/`after` hooks that start and stop the servers for the
 * calling test file; returns an object filled in once they are up.
 */
export function useServers({ before, after }) {
  const servers = {};
  before(async () => Object.assign(servers, await startServers()));
  after(async () => servers.stop?.());
  return servers;
}
