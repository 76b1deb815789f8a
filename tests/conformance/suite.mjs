// The conformance suite: real third-party SSE clients against the real ssehub binary.
// Run through run.sh (which installs the clients and builds the binary):
//
//   node suite.mjs --bin PATH [--only SUBSTR] [--clients browser,node,python] [--out FILE]
//                  [--rev LABEL]  (the revision named in FILE; default: git HEAD)
//
// Prints a table of case × client (pass / FAIL / pending / n/a) and exits non-zero on any
// failure. `pending` marks cases of features the server does not have yet (TLS, CORS,
// tokens): detected by behaviour at run time, never by a list, so they run for real the
// moment the feature lands.
import { execFileSync, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BrowserAgent, ProcessAgent } from './lib/agents.mjs';
import {
  Ssehub,
  cleanupTmp,
  freePort,
  killAll,
  makeCerts,
  now,
  probe,
  rawStream,
  sleep,
  startNginx,
  staticServer,
  tmpDir,
  waitHttp,
} from './lib/harness.mjs';

const here = path.dirname(fileURLToPath(import.meta.url));
const repo = path.resolve(here, '../..');

// ---- command line ----------------------------------------------------------------------
const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(`--${name}`);
  return i >= 0 ? argv[i + 1] : dflt;
};
const BIN = opt('bin', path.join(repo, 'target/release/ssehub'));
const ONLY = opt('only', '');
const CLIENTS = opt('clients', 'browser,node,python').split(',');
const OUT = opt('out', '');
const CHROMIUM = opt('chromium', '/usr/bin/chromium');
const NGINX = opt('nginx', 'nginx');
const PYTHON = opt('python', path.join(here, '.venv/bin/python'));

// ---- small assertion helpers -------------------------------------------------------------
class Pending extends Error {}
function fail(msg) {
  throw new Error(msg);
}
function eq(actual, expected, what) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  if (a !== e) fail(`${what}: expected ${e.slice(0, 400)}, got ${a.slice(0, 400)}`);
}
/** The messages of a stream as {type, data, lastEventId}. */
const got = (s) => s.messages().map(({ type, data, lastEventId }) => ({ type, data, lastEventId }));
/** Per-client, in parallel: pass when `fn` resolves, FAIL with its message when it throws. */
async function perClient(agents, fn) {
  const out = {};
  await Promise.all(
    agents.map(async (a) => {
      try {
        const detail = await fn(a);
        out[a.name] = { status: 'pass', detail: detail || '' };
      } catch (e) {
        out[a.name] =
          e instanceof Pending ? { status: 'pending', detail: e.message } : { status: 'FAIL', detail: e.message };
      }
    }),
  );
  return out;
}
/** Opens `query` on `base` with `agent`; the browser runs it in a page of `pageUrl`. */
function openOn(agent, base, query, o = {}) {
  return agent.open({
    url: `${base}/events?${query}`,
    pageUrl: o.pageUrl || `${base}/healthz`,
    types: o.types || ['message'],
    withCredentials: o.withCredentials,
    cookies: o.cookies,
    headers: o.headers,
    ca: o.ca,
  });
}
async function closeAll(streams) {
  await Promise.all(streams.filter(Boolean).map((s) => s.close()));
}

// ---- cases -------------------------------------------------------------------------------
// Each case: {key, title, clients (names it applies to), run(ctx, agents) -> {name: result}}.
const cases = [];
const ALL = ['browser', 'node', 'python'];

cases.push({
  key: 'exact',
  title: 'event fields: exact data, event type, id',
  clients: ALL,
  async run(ctx, agents) {
    const server = await ctx.server();
    const types = ['message', 'notification', 'user.created:v2', 'price-update'];
    return perClient(agents, async (a) => {
      const topic = `notifications:${a.name}`;
      const s = await openOn(a, server.base, `topic=${encodeURIComponent(topic)}`, { types });
      await s.waitOpen();
      const p = await server.producer();
      const sends = [
        [{ data: 'hello' }, 'message', 'hello'],
        [{ event: 'notification', data: '{"title":"Hi"}' }, 'notification', '{"title":"Hi"}'],
        [{ data: 187.12 }, 'message', '187.12'],
        // A JSON value is sent as the producer's bytes minus whitespace outside strings.
        [`{"topic":"${topic}","data": {"a": [1, 2.50], "b": "x y"} }`, 'message', '{"a":[1,2.50],"b":"x y"}'],
        [`{"topic":"${topic}","data":1.50e3}`, 'message', '1.50e3'],
        [{ event: 'user.created:v2', data: '  two leading spaces' }, 'user.created:v2', '  two leading spaces'],
        [{ event: 'price-update', data: '' }, 'price-update', ''],
        [{ data: 'data: not a field; id: 1; event: x' }, 'message', 'data: not a field; id: 1; event: x'],
        [{ event: 'message', data: 'explicit message type' }, 'message', 'explicit message type'],
      ];
      const expected = [];
      for (const [body, type, data] of sends) {
        let id;
        if (typeof body === 'string') {
          const answer = JSON.parse(await p.request(body));
          if (!answer.ok) fail(`publish refused: ${JSON.stringify(answer)}`);
          id = answer.id;
        } else {
          id = await server.publish({ topic, ...body });
        }
        expected.push({ type, data, lastEventId: id });
      }
      await s.waitMessages(expected.length);
      await sleep(200);
      eq(got(s), expected, 'events');
      if (s.errors().length) fail(`unexpected error events: ${s.summary()}`);
      await s.close();
      return `${expected.length} events`;
    });
  },
});

cases.push({
  key: 'multiline',
  title: 'multi-line data: LF, CRLF, lone CR, blank lines',
  clients: ALL,
  async run(ctx, agents) {
    const server = await ctx.server();
    const payloads = [
      'line one\nline two',
      'crlf one\r\ncrlf two',
      'cr one\rcr two',
      'mixed\r\n\r\nafter a blank line\nand\rmore\r\n',
      '\n',
      'a\r\rb',
      'trailing CR\r',
      // An attempt to end the event early and inject fields stays data.
      'x\n\nid: 999\nevent: evil\nretry: 1\ndata: injected\n\n',
    ];
    return perClient(agents, async (a) => {
      const topic = `multiline:${a.name}`;
      const s = await openOn(a, server.base, `topic=${topic}`, { types: ['message', 'evil'] });
      await s.waitOpen();
      const expected = [];
      for (const data of payloads) {
        const id = await server.publish({ topic, data });
        // An EventSource joins data lines with LF, whatever ended them in the payload.
        expected.push({ type: 'message', data: data.replace(/\r\n|\r/g, '\n'), lastEventId: id });
      }
      await s.waitMessages(expected.length);
      await sleep(200);
      eq(got(s), expected, 'events');
      await s.close();
      return `${expected.length} payloads`;
    });
  },
});

cases.push({
  key: 'utf8',
  title: 'non-ASCII UTF-8 data and event type intact',
  clients: ALL,
  async run(ctx, agents) {
    const server = await ctx.server();
    const big = 'é€😀'.repeat(6000); // 54 KB of 2-, 3- and 4-byte sequences across reads
    const sends = [
      ['message', 'héllo wörld — ça va?'],
      ['message', '日本語のテキスト、中文，한국어'],
      ['message', 'emoji 🎉🚀👩‍💻 and a flag 🇫🇷'],
      ['message', 'Ελληνικά · עברית · العربية · русский'],
      ['message', 'combining: e\u0301 vs \u00e9'],
      ['message', 'not line breaks for SSE: [\u2028] [\u2029] [\u0085] [\u000b] [\u000c]'],
      ['événement', 'typed with a non-ASCII event name'],
      ['message', big],
    ];
    return perClient(agents, async (a) => {
      const topic = `utf8:${a.name}`;
      const s = await openOn(a, server.base, `topic=${topic}`, { types: ['message', 'événement'] });
      await s.waitOpen();
      const expected = [];
      for (const [type, data] of sends) {
        const id = await server.publish(type === 'message' ? { topic, data } : { topic, event: type, data });
        expected.push({ type, data, lastEventId: id });
      }
      await s.waitMessages(expected.length);
      await sleep(200);
      eq(got(s), expected, 'events');
      await s.close();
      return `${expected.length} payloads`;
    });
  },
});

cases.push({
  key: 'keepalive',
  title: 'keepalive comments invisible',
  clients: ALL,
  async run(ctx, agents) {
    const server = await ctx.server({ streams: { keepalive: '200ms' } });
    // Our own reader on the wire proves that keepalives were really sent meanwhile.
    const raw = rawStream(`${server.base}/events?topic=keepalive:raw`);
    const res = await perClient(agents, async (a) => {
      const topic = `keepalive:${a.name}`;
      const s = await openOn(a, server.base, `topic=${topic}`);
      await s.waitOpen();
      await sleep(1500);
      const id = await server.publish({ topic, data: 'after the quiet' });
      await s.waitMessages(1);
      await sleep(500);
      eq(got(s), [{ type: 'message', data: 'after the quiet', lastEventId: id }], 'events');
      if (s.errors().length || s.opens().length !== 1) fail(`expected one open and no error: ${s.summary()}`);
      await s.close();
    });
    const comments = (raw.body.match(/^:\n/gm) || []).length;
    raw.close();
    if (comments < 4) {
      for (const r of Object.values(res)) {
        if (r.status === 'pass') Object.assign(r, { status: 'FAIL', detail: `only ${comments} keepalive comments on the wire` });
      }
    }
    return res;
  },
});

cases.push({
  key: 'two-topics',
  title: 'two topics on one stream, in publish order',
  clients: ALL,
  async run(ctx, agents) {
    const server = await ctx.server();
    return perClient(agents, async (a) => {
      const A = `activity:user:${a.name}`;
      const B = `prices:${a.name}`;
      const s = await openOn(a, server.base, `topic=${encodeURIComponent(A)}&topic=${encodeURIComponent(B)}`, {
        types: ['activity', 'price', 'both'],
      });
      await s.waitOpen();
      const plan = [
        [[A], 'activity', 'a1'],
        [[B], 'price', 'b1'],
        [[B], 'price', 'b2'],
        [[A], 'activity', 'a2'],
        [[A, B], 'both', 'to both topics: once'],
        [[`other:${a.name}`], 'activity', 'not subscribed'],
        [[A], 'activity', 'a3'],
        [[B], 'price', 'b3'],
      ];
      const expected = [];
      for (const [topics, event, data] of plan) {
        const id = await server.publish({ topics, event, data });
        if (!topics[0].startsWith('other:')) expected.push({ type: event, data, lastEventId: id });
      }
      await s.waitMessages(expected.length);
      await sleep(300);
      eq(got(s), expected, 'events in publish order, the shared one once');
      await s.close();
    });
  },
});

cases.push({
  key: 'restart-resume',
  title: 'server restart: own reconnect with Last-Event-ID gets exactly the missed events',
  clients: ALL,
  async run(ctx, agents) {
    const retryMs = 2000;
    const dir = tmpDir('restart');
    const sections = {
      history: { data_dir: path.join(dir, 'data') },
      streams: { retry_base: `${retryMs}ms`, retry_jitter: '0s', shutdown_spread: '0s', drain_timeout: '2s' },
    };
    let server = await Ssehub.start(BIN, sections, { dir });
    ctx.track(server);
    const streams = {};
    const seen = {};
    await Promise.all(
      agents.map(async (a) => {
        const s = await openOn(a, server.base, `topic=restart:${a.name}`);
        streams[a.name] = s;
        await s.waitOpen();
      }),
    );
    for (const a of agents) {
      seen[a.name] = [];
      for (let i = 1; i <= 3; i++) seen[a.name].push(await server.publish({ topic: `restart:${a.name}`, data: `before ${i}` }));
    }
    await Promise.all(agents.map((a) => streams[a.name].waitMessages(3)));
    // Stop the server while every client is connected; start the new one first, then publish.
    const tStop = now();
    const exit = await server.stop('SIGTERM');
    const port = server.port;
    server = await Ssehub.start(BIN, sections, { dir, listen: `127.0.0.1:${port}` });
    ctx.track(server);
    const missed = {};
    for (const a of agents) {
      missed[a.name] = [];
      for (let i = 1; i <= 3; i++) missed[a.name].push(await server.publish({ topic: `restart:${a.name}`, data: `missed ${i}` }));
    }
    const publishedAfter = now() - tStop;
    return perClient(agents, async (a) => {
      const s = streams[a.name];
      if (exit.code !== 0) fail(`server exited with ${JSON.stringify(exit)} on SIGTERM`);
      // No client may reconnect before `retry` after the close, so all were away meanwhile.
      if (publishedAfter > retryMs * 0.9)
        fail(`restart + publish took ${publishedAfter.toFixed(0)} ms: too slow to be sure the client was away`);
      await s.waitMessages(6, retryMs * 3);
      const live = await server.publish({ topic: `restart:${a.name}`, data: 'live' });
      await s.waitMessages(7);
      await sleep(300);
      const want = [
        ...seen[a.name].map((id, i) => ({ type: 'message', data: `before ${i + 1}`, lastEventId: id })),
        ...missed[a.name].map((id, i) => ({ type: 'message', data: `missed ${i + 1}`, lastEventId: id })),
        { type: 'message', data: 'live', lastEventId: live },
      ];
      eq(got(s), want, 'events across the restart (no gap, no duplicate)');
      const opens = s.opens();
      if (opens.length !== 2) fail(`expected 2 opens (first + one reconnect): ${s.summary()}`);
      const err = s.errors()[0];
      const delay = opens[1].t - err.t;
      if (err.readyState !== 0) fail(`the close should leave readyState CONNECTING: ${s.summary()}`);
      if (delay < retryMs * 0.9) fail(`reconnected after ${delay.toFixed(0)} ms, before retry ${retryMs} ms`);
      await s.close();
      return `reconnected after ${delay.toFixed(0)} ms (retry ${retryMs})`;
    });
  },
});

cases.push({
  key: 'retry',
  title: 'reconnect delay follows the server\'s retry: (500 ms)',
  clients: ALL,
  async run(ctx, agents) {
    const retryMs = 500;
    const server = await ctx.server({ streams: { retry_base: `${retryMs}ms`, retry_jitter: '0s' } });
    return perClient(agents, async (a) => {
      // The stream ends after a final event; the reconnect (answered 204) shows the delay.
      const topic = `progress:retry-${a.name}`;
      const s = await openOn(a, server.base, `topic=${topic}`, { types: ['done'] });
      await s.waitOpen();
      await server.publish({ topic, event: 'done', data: '100', final: true });
      await s.waitFor((x) => x.errors().some((e) => e.readyState === 2), 5000, 'the closing error');
      const [first, last] = [s.errors()[0], s.errors().at(-1)];
      if (first.readyState !== 0) fail(`stream end should leave CONNECTING first: ${s.summary()}`);
      const delay = last.t - first.t;
      // The EventSource default is 3 s in browsers and the npm package.
      if (delay < retryMs * 0.9 || delay > retryMs + 1000)
        fail(`reconnected after ${delay.toFixed(0)} ms; retry was ${retryMs} ms`);
      await s.close();
      return `${delay.toFixed(0)} ms`;
    });
  },
});

cases.push({
  key: 'final-closed',
  title: 'final event: reconnect gets 204, EventSource CLOSED',
  clients: ALL,
  async run(ctx, agents) {
    const server = await ctx.server({ streams: { retry_base: '300ms', retry_jitter: '0s' } });
    return perClient(agents, async (a) => {
      const topic = `progress:export-${a.name}`;
      const s = await openOn(a, server.base, `topic=${topic}`, { types: ['message', 'done'] });
      await s.waitOpen();
      const p1 = await server.publish({ topic, data: '50' });
      const done = await server.publish({ topic, event: 'done', data: '100', final: true });
      await s.waitFor((x) => x.errors().some((e) => e.readyState === 2), 5000, 'readyState CLOSED');
      await sleep(1200); // four retry periods: no further reconnect
      eq(
        got(s),
        [
          { type: 'message', data: '50', lastEventId: p1 },
          { type: 'done', data: '100', lastEventId: done },
        ],
        'events',
      );
      eq(
        s.errors().map((e) => e.readyState),
        [0, 2],
        'error readyStates (stream end: CONNECTING, then 204: CLOSED)',
      );
      if (s.opens().length !== 1) fail(`one open expected: ${s.summary()}`);
      const statuses = a.name === 'browser' ? s.obs.filter((o) => o.kind === 'http').map((o) => o.status) : s.errors().map((e) => e.status).filter(Boolean);
      if (!statuses.includes(204)) fail(`the reconnect was not answered 204 (statuses ${statuses})`);
      if (a.name === 'browser') eq(await a.readyState(s), 2, 'EventSource.readyState');
      await s.close();
      return 'CLOSED after 204';
    });
  },
});

cases.push({
  key: 'burst',
  title: 'burst of 2,000 events (1 MB): all, in order, once (resuming if cut off)',
  clients: ALL,
  async run(ctx, agents) {
    // The burst is bigger than max_pending_bytes: a client that does not keep up is cut
    // off as a slow subscriber and must resume with Last-Event-ID from history.
    const server = await ctx.server({
      history: { max_events: 10000 },
      streams: { max_pending_bytes: 65536, retry_base: '300ms', retry_jitter: '0s' },
    });
    const n = 2000;
    return perClient(agents, async (a) => {
      const topic = `burst:${a.name}`;
      const s = await openOn(a, server.base, `topic=${topic}`, { types: ['message', 'tick'] });
      await s.waitOpen();
      const first = await server.publish({ topic, data: 'first' });
      await s.waitMessages(1);
      const p = await server.producer();
      // Pipelined: every line is written before any answer is read.
      const t0 = now();
      const datas = Array.from({ length: n }, (_, i) => `${i}:` + 'x€\n'.repeat(i % 97) + 'ü'.repeat((i * 7) % 300));
      const answers = await Promise.all(
        datas.map((data, i) => p.request(JSON.stringify(i % 3 ? { topic, data } : { topic, event: 'tick', data }))),
      );
      const expected = [{ type: 'message', data: 'first', lastEventId: first }];
      answers.forEach((line, i) => {
        const ans = JSON.parse(line);
        if (!ans.ok) fail(`publish refused: ${line}`);
        expected.push({ type: i % 3 ? 'message' : 'tick', data: datas[i], lastEventId: ans.id });
      });
      const tPub = now();
      await s.waitMessages(n + 1, 30000);
      const tAll = now();
      await sleep(300);
      const seen = got(s);
      if (seen.length !== expected.length) fail(`${seen.length} events, expected ${expected.length}: ${s.summary()}`);
      for (let i = 0; i < expected.length; i++) eq(seen[i], expected[i], `event ${i} of ${expected.length}`);
      await s.close();
      const reconnects = s.opens().length - 1;
      return `${n + 1} events, ${reconnects} reconnect(s), published in ${(tPub - t0).toFixed(0)} ms, all received after ${(tAll - t0).toFixed(0)} ms`;
    });
  },
});

cases.push({
  key: 'reset',
  title: 'unknown resume id: typed reset event (no id), then the history',
  clients: ALL,
  async run(ctx, agents) {
    const server = await ctx.server();
    return perClient(agents, async (a) => {
      const topic = `reset:${a.name}`;
      const ids = [];
      for (let i = 0; i < 3; i++) ids.push(await server.publish({ topic, data: `kept ${i}` }));
      // A first connection resuming from an id the hub never issued.
      const s = await openOn(a, server.base, `topic=${topic}&lastEventId=not-an-id`, { types: ['message', 'reset'] });
      await s.waitMessages(4);
      const live = await server.publish({ topic, data: 'live' });
      await s.waitMessages(5);
      await sleep(200);
      const [reset, ...rest] = got(s);
      eq(reset.type, 'reset', 'first event type');
      eq(JSON.parse(reset.data), { lastEventId: 'not-an-id', earliestId: ids[0] }, 'reset data');
      // No id: line, so the client's last event id is unchanged (still empty).
      eq(reset.lastEventId, '', 'lastEventId of the reset event');
      eq(
        rest,
        [...ids.map((id, i) => ({ type: 'message', data: `kept ${i}`, lastEventId: id })), { type: 'message', data: 'live', lastEventId: live }],
        'replay then live',
      );
      await s.close();
    });
  },
});

/**
 * ssehub behind nginx configured by docs/nginx.conf (read timeout replaced). With
 * `http10`, the example's HTTP/1.1 upstream lines are dropped: nginx's default HTTP/1.0
 * to the upstream, which the example says works as well.
 */
async function behindNginx(ctx, serverSections, readTimeout, { server, http10 = false } = {}) {
  server = server || (await ctx.server(serverSections));
  let lastError;
  // The free port is released before nginx binds it: try again should another process
  // take it meanwhile.
  for (let attempt = 0; attempt < 3; attempt++) {
    try {
      return await startBehind(ctx, server, readTimeout, http10);
    } catch (e) {
      lastError = e;
    }
  }
  throw lastError;
}

async function startBehind(ctx, server, readTimeout, http10) {
  const port = await freePort();
  const subst = [
    ['listen 80;', `listen 127.0.0.1:${port};`],
    ['server 127.0.0.1:8080;', `server 127.0.0.1:${server.port};`],
    ['proxy_read_timeout 1h;', `proxy_read_timeout ${readTimeout};`],
  ];
  if (http10) subst.push(['proxy_http_version 1.1;', '', 2], ['proxy_set_header Connection "";', '', 2]);
  const ngx = await startNginx(NGINX, path.join(repo, 'docs/nginx.conf'), subst);
  ctx.onCleanup(() => ngx.stop());
  const base = `http://127.0.0.1:${port}`;
  let r;
  try {
    r = await Promise.race([
      waitHttp(`${base}/healthz`),
      ngx.exited.then((code) => Promise.reject(new Error(`nginx exited with ${code}`))),
    ]);
  } catch (e) {
    await ngx.stop();
    fail(`nginx did not come up: ${e.message}\n${ngx.stderr()}\n${ngx.errorLog()}`);
  }
  if (r.status !== 200 || !/nginx/.test(r.headers.server || '')) fail(`/healthz through nginx: ${r.status} ${JSON.stringify(r.headers)}`);
  return { server, ngx, base };
}

cases.push({
  key: 'nginx-each-event',
  title: 'behind nginx (docs/nginx.conf): each event before the next is published',
  clients: ALL,
  async run(ctx, agents) {
    // The example as it is (HTTP/1.1 upstream), and with nginx's default HTTP/1.0 upstream.
    const v11 = await behindNginx(ctx, {}, '1h');
    const v10 = await behindNginx(ctx, {}, '1h', { server: v11.server, http10: true });
    const server = v11.server;
    return perClient(agents, async (a) => {
      const lat = [];
      for (const [label, base] of [['1.1', v11.base], ['1.0', v10.base]]) {
        const topic = `proxied:${a.name}:http${label}`;
        const s = await openOn(a, base, `topic=${topic}`);
        await s.waitOpen();
        const expected = [];
        for (let i = 0; i < 5; i++) {
          const t0 = now();
          const id = await server.publish({ topic, data: `event ${i}` });
          expected.push({ type: 'message', data: `event ${i}`, lastEventId: id });
          await s.waitMessages(i + 1, 3000).catch((e) => fail(`upstream HTTP/${label}: ${e.message}`));
          lat.push(now() - t0);
        }
        eq(got(s), expected, `events through nginx (upstream HTTP/${label})`);
        await s.close();
      }
      return `upstream HTTP/1.1 and 1.0; max ${Math.max(...lat).toFixed(0)} ms publish→client`;
    });
  },
});

cases.push({
  key: 'nginx-idle',
  title: 'behind nginx: idle stream outlives proxy_read_timeout via keepalives',
  clients: ALL,
  async run(ctx, agents) {
    const readTimeout = '2s';
    const idleMs = 5000;
    const { server, base } = await behindNginx(ctx, { streams: { keepalive: '500ms' } }, readTimeout);
    // Control: the same proxy in front of a server whose keepalive is longer than the
    // read timeout must cut the stream, or this case would prove nothing.
    const control = await behindNginx(ctx, { streams: { keepalive: '60s' } }, readTimeout);
    const raw = rawStream(`${control.base}/events?topic=control`);
    const res = await perClient(agents, async (a) => {
      const topic = `idle:${a.name}`;
      const s = await openOn(a, base, `topic=${topic}`);
      await s.waitOpen();
      await sleep(idleMs);
      const id = await server.publish({ topic, data: 'still here' });
      await s.waitMessages(1, 3000);
      eq(got(s), [{ type: 'message', data: 'still here', lastEventId: id }], 'events');
      if (s.errors().length || s.opens().length !== 1) fail(`the stream was interrupted: ${s.summary()}`);
      await s.close();
      return `idle ${idleMs / 1000} s, proxy_read_timeout ${readTimeout}`;
    });
    const controlEnded = raw.ended;
    raw.close();
    if (!controlEnded) {
      for (const r of Object.values(res))
        Object.assign(r, { status: 'FAIL', detail: 'control: a stream without keepalives survived proxy_read_timeout' });
    }
    return res;
  },
});

// ---- cases of features that may not have landed yet: detected by behaviour ------------

/** Starts a TLS server; Pending when the listener still speaks plain HTTP. */
async function tlsServer(ctx, extra = {}) {
  let server;
  try {
    server = await ctx.server({ ...extra, tls: { cert: ctx.certs.cert, key: ctx.certs.key } });
  } catch (e) {
    fail(`the server refused the [tls] config: ${e.message.split('\n').slice(0, 3).join(' ')}`);
  }
  try {
    const r = await probe(`${server.tlsBase}/healthz`, { ca: fs.readFileSync(ctx.certs.ca) });
    if (r.status !== 200) fail(`GET /healthz over TLS: ${r.status}`);
  } catch (e) {
    let plain = null;
    try {
      plain = await probe(`${server.base}/healthz`);
    } catch {}
    if (plain && plain.status === 200)
      throw new Pending('TLS: with [tls] cert/key the listener still speaks plain HTTP (feature not landed)');
    fail(`TLS handshake or request failed: ${e.message}`);
  }
  return server;
}

cases.push({
  key: 'https',
  title: 'HTTPS with a CA made in the test (each client trusts it its own way)',
  clients: ALL,
  async run(ctx, agents) {
    let server;
    try {
      server = await tlsServer(ctx);
    } catch (e) {
      return allResult(agents, e);
    }
    return perClient(agents, async (a) => {
      const topic = `tls:${a.name}`;
      // Browser: --ignore-certificate-errors-spki-list with the leaf's key; Node:
      // NODE_EXTRA_CA_CERTS; Python: verify= the CA file.
      const s = await openOn(a, server.tlsBase, `topic=${topic}`, { types: ['message', 'secure'], ca: ctx.certs.ca });
      await s.waitOpen();
      const id1 = await server.publish({ topic, data: 'over TLS' });
      const id2 = await server.publish({ topic, event: 'secure', data: 'line 1\nline 2 ✓' });
      await s.waitMessages(2);
      eq(
        got(s),
        [
          { type: 'message', data: 'over TLS', lastEventId: id1 },
          { type: 'secure', data: 'line 1\nline 2 ✓', lastEventId: id2 },
        ],
        'events over TLS',
      );
      await s.close();
    });
  },
});

/** Same result (pending or failure) for every client. */
function allResult(agents, e) {
  const out = {};
  for (const a of agents)
    out[a.name] = e instanceof Pending ? { status: 'pending', detail: e.message } : { status: 'FAIL', detail: e.message };
  return out;
}

/** Detects CORS support: Pending while the server ignores [cors]. */
async function requireCors(server, allowed, denied) {
  const ok = await probe(`${server.base}/events?topic=probe`, { headers: { Origin: allowed } });
  const no = await probe(`${server.base}/events?topic=probe`, { headers: { Origin: denied } });
  if (!ok.headers['access-control-allow-origin'] && no.status === 200)
    throw new Pending(
      'CORS: [cors] allowed_origins has no effect yet (no Access-Control-Allow-Origin, other origins get 200)',
    );
}

/**
 * Mints a token with `ssehub token`. While that command does not exist the token is made
 * here instead (HS256 JWT with `subscribe` and `exp`, protocol 4) so that the server's token
 * checks are exercised for real; the case then ends `pending` on the missing command
 * (or FAIL when the server got it wrong).
 */
function mintToken(secret, patterns, ttl = '1h') {
  const args = ['token', '--secret', secret, '--ttl', ttl];
  for (const p of patterns) args.push('--subscribe', p);
  try {
    return { token: execFileSync(BIN, args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString().trim(), cli: true };
  } catch (e) {
    const err = (e.stderr || '').toString();
    if (!/unrecognized subcommand|invalid subcommand/i.test(err)) fail(`ssehub token failed: ${err}`);
  }
  const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
  const body = `${b64({ alg: 'HS256', typ: 'JWT' })}.${b64({ subscribe: patterns, exp: Math.floor(Date.now() / 1000) + 3600 })}`;
  const sig = crypto.createHmac('sha256', secret).update(body).digest('base64url');
  return { token: `${body}.${sig}`, cli: false };
}
const NO_TOKEN_CLI = 'tokens: `ssehub token` does not exist yet (the server side passed with a token minted by the suite)';
/** Turns passes into pending while `ssehub token` is missing. */
function pendingWithoutCli(res, minted) {
  if (minted.cli) return res;
  for (const r of Object.values(res)) if (r.status === 'pass') Object.assign(r, { status: 'pending', detail: NO_TOKEN_CLI });
  return res;
}

/** Detects token checks: Pending while a private topic is served without a token. */
async function requireAuth(server, topic) {
  const r = await probe(`${server.base}/events?topic=${topic}`);
  if (r.status === 200) throw new Pending('auth: [auth] private topics are served without a token (not landed)');
  if (r.status !== 401) fail(`private topic without a token: expected 401, got ${r.status}`);
}

const SECRET = 'conformance-secret-0123456789abcdef';
const AUTH = { secret: SECRET, private: ['private:*'], cookie: 'ssehub_token' };

cases.push({
  key: 'cors-allowed',
  title: 'cross-origin page, origin allowed: receives events',
  clients: ['browser'],
  async run(ctx, agents) {
    const page = await ctx.page();
    const other = await ctx.page();
    const server = await ctx.server({ cors: { allowed_origins: [page.origin] } });
    try {
      await requireCors(server, page.origin, other.origin);
    } catch (e) {
      return allResult(agents, e);
    }
    return perClient(agents, async (a) => {
      const s = await openOn(a, server.base, 'topic=cors:allowed', { pageUrl: `${page.origin}/` });
      await s.waitOpen();
      const id = await server.publish({ topic: 'cors:allowed', data: 'cross-origin ok' });
      await s.waitMessages(1);
      eq(got(s), [{ type: 'message', data: 'cross-origin ok', lastEventId: id }], 'events');
      await s.close();
    });
  },
});

cases.push({
  key: 'cors-denied',
  title: 'cross-origin page, origin not allowed: gets nothing',
  clients: ['browser'],
  async run(ctx, agents) {
    const page = await ctx.page();
    const other = await ctx.page();
    const server = await ctx.server({ cors: { allowed_origins: [page.origin] } });
    try {
      await requireCors(server, page.origin, other.origin);
    } catch (e) {
      return allResult(agents, e);
    }
    return perClient(agents, async (a) => {
      const s = await openOn(a, server.base, 'topic=cors:denied', { pageUrl: `${other.origin}/` });
      await s.waitFor((x) => x.errors().length > 0, 5000, 'an error event');
      await server.publish({ topic: 'cors:denied', data: 'must not arrive' });
      await sleep(700);
      if (s.messages().length || s.opens().length) fail(`the page got something: ${s.summary()}`);
      eq(await a.readyState(s), 2, 'EventSource.readyState');
      const statuses = s.obs.filter((o) => o.kind === 'http').map((o) => o.status);
      await s.close();
      return `error, CLOSED (HTTP ${statuses.join(',') || 'blocked'})`;
    });
  },
});

cases.push({
  key: 'cors-credentials',
  title: 'cross-origin withCredentials with a cookie token (private topic)',
  clients: ['browser'],
  async run(ctx, agents) {
    const page = await ctx.page();
    const other = await ctx.page();
    const server = await ctx.server({
      cors: { allowed_origins: [page.origin], allow_credentials: true },
      auth: AUTH,
    });
    let minted;
    try {
      await requireCors(server, page.origin, other.origin);
      await requireAuth(server, 'private:probe');
      minted = mintToken(SECRET, ['private:*']);
    } catch (e) {
      return allResult(agents, e);
    }
    const token = minted.token;
    const res = await perClient(agents, async (a) => {
      // The page (127.0.0.1:A) and ssehub (127.0.0.1:B) are same-site, cross-origin: the
      // cookie for 127.0.0.1 goes along with credentialed requests.
      const cookies = [{ name: 'ssehub_token', value: token, url: server.base, sameSite: 'Lax' }];
      const s = await openOn(a, server.base, 'topic=private:cookie', {
        pageUrl: `${page.origin}/`,
        withCredentials: true,
        cookies,
      });
      await s.waitOpen();
      const id = await server.publish({ topic: 'private:cookie', data: 'for cookie holders' });
      await s.waitMessages(1);
      eq(got(s), [{ type: 'message', data: 'for cookie holders', lastEventId: id }], 'events');
      await s.close();
      // Without credentials the cookie stays home: 401, the EventSource gives up.
      const n = await openOn(a, server.base, 'topic=private:cookie', { pageUrl: `${page.origin}/`, cookies });
      await n.waitFor((x) => x.errors().length > 0, 5000, 'an error event');
      if (n.messages().length || n.opens().length) fail(`got a stream without credentials: ${n.summary()}`);
      eq(await a.readyState(n), 2, 'readyState without credentials');
      await n.close();
    });
    return pendingWithoutCli(res, minted);
  },
});

cases.push({
  key: 'cors-resume',
  title: 'cross-origin page: reconnect with Last-Event-ID after a restart',
  clients: ['browser'],
  async run(ctx, agents) {
    const page = await ctx.page();
    const other = await ctx.page();
    const retryMs = 1500;
    const dir = tmpDir('cors-restart');
    const sections = {
      cors: { allowed_origins: [page.origin] },
      history: { data_dir: path.join(dir, 'data') },
      streams: { retry_base: `${retryMs}ms`, retry_jitter: '0s', shutdown_spread: '0s' },
    };
    let server = await Ssehub.start(BIN, sections, { dir });
    ctx.track(server);
    try {
      await requireCors(server, page.origin, other.origin);
    } catch (e) {
      return allResult(agents, e);
    }
    return perClient(agents, async (a) => {
      // The reconnect carries Last-Event-ID, which is not a CORS-safelisted header: the
      // browser may preflight it (OPTIONS), which the server must allow.
      const s = await openOn(a, server.base, 'topic=cors:resume', { pageUrl: `${page.origin}/` });
      await s.waitOpen();
      const before = await server.publish({ topic: 'cors:resume', data: 'before' });
      await s.waitMessages(1);
      const tStop = now();
      await server.stop('SIGTERM');
      server = await Ssehub.start(BIN, sections, { dir, listen: `127.0.0.1:${server.port}` });
      ctx.track(server);
      const missed = await server.publish({ topic: 'cors:resume', data: 'missed' });
      if (now() - tStop > retryMs * 0.9) fail('restart + publish too slow to be sure the client was away');
      await s.waitMessages(2, retryMs * 3);
      await sleep(200);
      eq(
        got(s),
        [
          { type: 'message', data: 'before', lastEventId: before },
          { type: 'message', data: 'missed', lastEventId: missed },
        ],
        'events across the restart',
      );
      await s.close();
    });
  },
});

cases.push({
  key: 'token',
  title: 'private topic with a token (cookie / Bearer); none: 401, CLOSED',
  clients: ALL,
  async run(ctx, agents) {
    const server = await ctx.server({ auth: AUTH });
    let minted;
    try {
      await requireAuth(server, 'private:probe');
      minted = mintToken(SECRET, ['private:*']);
    } catch (e) {
      return allResult(agents, e);
    }
    const token = minted.token;
    const res = await perClient(agents, async (a) => {
      const topic = `private:${a.name}`;
      const auth =
        a.name === 'browser'
          ? { cookies: [{ name: 'ssehub_token', value: token, url: server.base }] }
          : { headers: { Authorization: `Bearer ${token}` } };
      const s = await openOn(a, server.base, `topic=${topic}`, auth);
      await s.waitOpen();
      const id = await server.publish({ topic, data: 'secret' });
      await s.waitMessages(1);
      eq(got(s), [{ type: 'message', data: 'secret', lastEventId: id }], 'events');
      await s.close();
      const n = await openOn(a, server.base, `topic=${topic}`);
      await n.waitFor((x) => x.errors().some((e) => e.readyState === 2), 5000, 'CLOSED');
      if (n.messages().length || n.opens().length) fail(`got a stream without a token: ${n.summary()}`);
      await n.close();
    });
    return pendingWithoutCli(res, minted);
  },
});

cases.push({
  key: 'token-expiry',
  title: 'token expires: stream closed, reconnect refused (401), CLOSED',
  clients: ALL,
  async run(ctx, agents) {
    const server = await ctx.server({
      auth: { ...AUTH, leeway: '0s' },
      streams: { retry_base: '300ms', retry_jitter: '0s' },
    });
    let minted;
    try {
      await requireAuth(server, 'private:probe');
      minted = mintToken(SECRET, ['private:*'], '3s');
    } catch (e) {
      return allResult(agents, e);
    }
    const token = minted.token;
    const exp = JSON.parse(Buffer.from(token.split('.')[1], 'base64url').toString()).exp;
    const res = await perClient(agents, async (a) => {
      const topic = `private:expiry-${a.name}`;
      const auth =
        a.name === 'browser'
          ? { cookies: [{ name: 'ssehub_token', value: token, url: server.base }] }
          : { headers: { Authorization: `Bearer ${token}` } };
      const s = await openOn(a, server.base, `topic=${topic}`, auth);
      await s.waitOpen();
      const id = await server.publish({ topic, data: 'while valid' });
      await s.waitMessages(1);
      await s.waitFor((x) => x.errors().some((e) => e.readyState === 2), 8000, 'CLOSED after the token expired');
      eq(got(s), [{ type: 'message', data: 'while valid', lastEventId: id }], 'events');
      const errs = s.errors();
      // Wall-clock time of the stream's end (the first error), from the harness clock.
      const closedAt = (Date.now() - (now() - errs[0].at)) / 1000;
      if (closedAt < exp - 0.05) fail(`closed ${(exp - closedAt).toFixed(2)} s before the token expired`);
      if (closedAt > exp + 1.5) fail(`closed ${(closedAt - exp).toFixed(2)} s after the token expired`);
      const unanswered = errs.slice(1).filter((e) => e.readyState === 0).length;
      if (unanswered)
        fail(
          `after the stream ended at expiry, ${unanswered} reconnect(s) got no answer at all ` +
            `(connection closed without a status line) before the 401: ${s.summary()}`,
        );
      eq(errs.map((e) => e.readyState), [0, 2], `error readyStates (stream closed, reconnect refused); saw ${s.summary()}`);
      if (a.name !== 'browser' && errs[1].status !== 401) fail(`reconnect answered ${errs[1].status}, not 401`);
      if (a.name === 'browser' && !s.obs.some((o) => o.kind === 'http' && o.status === 401))
        fail(`no 401 seen: ${s.summary()}`);
      await s.close();
      return `closed ${(closedAt - exp).toFixed(1)} s after exp`;
    });
    return pendingWithoutCli(res, minted);
  },
});

// ---- runner ------------------------------------------------------------------------------
/** The revision the binary was built from (run.sh builds the work tree as it is). */
function gitRev() {
  if (opt('rev', '')) return opt('rev', '');
  try {
    const rev = execFileSync('git', ['-C', repo, 'rev-parse', '--short', 'HEAD']).toString().trim();
    const dirty = execFileSync('git', ['-C', repo, 'status', '--porcelain', '--', 'src', 'Cargo.toml', 'Cargo.lock'])
      .toString()
      .trim();
    return dirty ? `${rev} plus uncommitted changes` : rev;
  } catch {
    return 'unknown';
  }
}

async function main() {
  const started = now();
  if (!fs.existsSync(BIN)) throw new Error(`no ssehub binary at ${BIN}`);
  const certs = makeCerts();
  const agents = {};
  if (CLIENTS.includes('browser')) agents.browser = new BrowserAgent({ executablePath: CHROMIUM, spki: certs.spki });
  if (CLIENTS.includes('node'))
    agents.node = new ProcessAgent('node', process.execPath, [path.join(here, 'client_node.mjs')], {
      NODE_EXTRA_CA_CERTS: certs.ca,
    });
  if (CLIENTS.includes('python')) agents.python = new ProcessAgent('python', PYTHON, [path.join(here, 'client_python.py')]);
  await Promise.all(Object.values(agents).map((a) => a.start()));
  // `nginx -v` prints its version on stderr.
  const nginxVersion = spawnSync(NGINX, ['-v'], { encoding: 'utf8' }).stderr || 'nginx (version unknown)';
  const versions = Object.values(agents).map((a) => `${a.name}: ${a.version}`);
  console.log(`clients: ${versions.join('; ')}`);

  const results = [];
  for (const c of cases) {
    if (ONLY && !c.key.includes(ONLY)) continue;
    const cleanups = [];
    const ctx = {
      certs,
      track: (s) => cleanups.push(() => s.stop('SIGKILL')),
      onCleanup: (f) => cleanups.push(f),
      async server(sections = {}) {
        const s = await Ssehub.start(BIN, sections);
        cleanups.push(() => s.stop('SIGKILL'));
        return s;
      },
      async page() {
        const p = await staticServer();
        cleanups.push(() => p.close());
        return p;
      },
    };
    const use = Object.values(agents).filter((a) => c.clients.includes(a.name));
    const t0 = now();
    let res;
    try {
      res = await Promise.race([
        c.run(ctx, use),
        sleep(60000).then(() => {
          throw new Error('case timed out after 60 s');
        }),
      ]);
    } catch (e) {
      res = allResult(use, e);
    }
    // Streams a failed case left open are closed so they do not reconnect into later cases.
    for (const a of use) for (const s of [...a.streams.values()]) await s.close().catch(() => {});
    for (const f of cleanups.reverse()) await Promise.resolve(f()).catch(() => {});
    const secs = ((now() - t0) / 1000).toFixed(1);
    const cells = {};
    for (const name of ALL) {
      if (!c.clients.includes(name)) cells[name] = { status: 'n/a', detail: '' };
      else if (!agents[name]) cells[name] = { status: 'skipped', detail: 'client not selected' };
      else cells[name] = res[name] || { status: 'FAIL', detail: 'no result' };
    }
    results.push({ c, cells, secs });
    const line = ALL.map((n) => `${n}=${cells[n].status}`).join(' ');
    console.log(`[${secs}s] ${c.key}: ${line}`);
    for (const n of ALL) {
      const cell = cells[n];
      if (cell.status === 'FAIL' || (process.env.VERBOSE && cell.detail)) console.log(`    ${n}: ${cell.detail}`);
    }
  }
  await Promise.all(Object.values(agents).map((a) => a.stop()));

  // ---- table ----
  const titleW = Math.max(...results.map((r) => r.c.title.length), 4);
  const colW = 9;
  const header = `| ${'case'.padEnd(titleW)} | ${ALL.map((n) => n.padEnd(colW)).join(' | ')} |`;
  const rule = `|${'-'.repeat(titleW + 2)}|${ALL.map(() => '-'.repeat(colW + 2)).join('|')}|`;
  const rows = results.map((r) => `| ${r.c.title.padEnd(titleW)} | ${ALL.map((n) => r.cells[n].status.padEnd(colW)).join(' | ')} |`);
  const count = (st) => results.reduce((k, r) => k + ALL.filter((n) => r.cells[n].status === st).length, 0);
  const passed = count('pass');
  const failed = count('FAIL');
  const pending = count('pending');
  const pendingNotes = [];
  for (const r of results) {
    const reasons = [...new Set(ALL.filter((n) => r.cells[n].status === 'pending').map((n) => r.cells[n].detail))];
    for (const why of reasons) pendingNotes.push(`- ${r.c.key}: ${why}`);
  }
  const failNotes = [];
  for (const r of results)
    for (const n of ALL) if (r.cells[n].status === 'FAIL') failNotes.push(`- ${r.c.key} × ${n}: ${r.cells[n].detail}`);
  const table = [header, rule, ...rows].join('\n');
  const total = ((now() - started) / 1000).toFixed(0);
  console.log('\n' + table + '\n');
  for (const v of versions) console.log(`  ${v}`);
  console.log(`  nginx: ${nginxVersion.trim()}`);
  if (pendingNotes.length) {
    console.log('\nPENDING (the server does not have the feature yet; these run for real once it lands):');
    console.log(pendingNotes.join('\n'));
  }
  if (failNotes.length) {
    console.log('\nFAILURES:');
    console.log(failNotes.join('\n'));
  }
  if (OUT) {
    const md = [
      '# Conformance: real clients against ssehub',
      '',
      `Produced by \`bash tests/conformance/run.sh\` at git ${gitRev()} on ${new Date().toISOString().slice(0, 10)}` +
        ` (${total} s). Clients:`,
      '',
      ...versions.map((v) => `- ${v}`),
      `- proxy: ${nginxVersion.trim()} with [docs/nginx.conf](../../docs/nginx.conf)`,
      '',
      table,
      '',
      '`pending`: the feature has not landed in the server yet (detected by behaviour at run time; the case runs for real once it does). `n/a`: the case is about a browser-only behaviour.',
      '',
      ...(pendingNotes.length ? ['Pending:', '', ...pendingNotes, ''] : []),
      ...(failNotes.length ? ['Failures:', '', ...failNotes, ''] : []),
      `${passed} passed, ${failed} failed, ${pending} pending`,
      '',
    ].join('\n');
    fs.mkdirSync(path.dirname(OUT), { recursive: true });
    fs.writeFileSync(OUT, md);
  }
  console.log(`\nconformance (${total} s): ${pending} pending, counted as skipped`);
  console.log(`conformance: ${passed} passed, ${failed} failed, ${pending} skipped`);
  return failed === 0 && passed + pending > 0;
}

let code = 1;
try {
  code = (await main()) ? 0 : 1;
} catch (e) {
  console.error(`conformance: ${e.stack || e}`);
} finally {
  killAll();
  cleanupTmp();
}
process.exit(code);
