// The clients under test, behind one small interface: `agent.open(spec)` opens a stream
// with the client's own EventSource implementation and returns a `Stream` that records
// what the client reported (open, message, error with readyState) in order.
//
//   browser: Chromium's EventSource in a page, driven by playwright-core (Debian chromium)
//   node:    the npm `eventsource` package, in a child process (client_node.mjs)
//   python:  httpx-sse in a venv, in a child process (client_python.py)
import { spawn } from 'node:child_process';
import readline from 'node:readline';
import { now, sleep } from './harness.mjs';

let nextId = 1;

/** What one client reported on one stream, in order. */
export class Stream {
  constructor(agent, id) {
    this.agent = agent;
    this.id = id;
    this.obs = [];
    this.listeners = new Set();
  }

  push(o) {
    o.at = now();
    this.obs.push(o);
    for (const l of [...this.listeners]) l();
  }

  messages() {
    return this.obs.filter((o) => o.kind === 'message');
  }
  errors() {
    return this.obs.filter((o) => o.kind === 'error');
  }
  opens() {
    return this.obs.filter((o) => o.kind === 'open');
  }

  /** A short account of what was seen, for failure messages. */
  summary() {
    const parts = this.obs.map((o) => {
        if (o.kind === 'message') return `message(${o.type}, id=${o.lastEventId}, ${JSON.stringify(o.data).slice(0, 60)})`;
        if (o.kind === 'error') return `error(readyState=${o.readyState}${o.status ? `, status=${o.status}` : ''}${o.message ? `, ${o.message}` : ''})`;
        if (o.kind === 'http') return `http(${o.status})`;
        return o.kind;
      });
    // Long runs of messages are elided to their count.
    const out = [];
    let run = 0;
    for (let i = 0; i < parts.length; i++) {
      const isMsg = parts[i].startsWith('message(');
      if (isMsg && run >= 3 && parts[i + 1]?.startsWith('message(')) {
        run++;
        if (out.at(-1)?.startsWith('…')) out[out.length - 1] = `… ${run - 3} more messages …`;
        else out.push(`… ${run - 3} more messages …`);
        continue;
      }
      run = isMsg ? run + 1 : 0;
      out.push(parts[i]);
    }
    return out.join(', ');
  }

  /** Resolves when `pred(this)` holds; rejects after `ms` with what was seen. */
  waitFor(pred, ms, what) {
    if (pred(this)) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (pred(this)) {
          clearTimeout(timer);
          this.listeners.delete(check);
          resolve();
        }
      };
      const timer = setTimeout(() => {
        this.listeners.delete(check);
        reject(new Error(`${this.agent.name}: timed out after ${ms} ms waiting for ${what}; saw: ${this.summary() || 'nothing'}`));
      }, ms);
      this.listeners.add(check);
    });
  }

  waitOpen(ms = 5000) {
    return this.waitFor((s) => s.opens().length > 0, ms, 'open');
  }
  waitMessages(n, ms = 5000) {
    return this.waitFor((s) => s.messages().length >= n, ms, `${n} message(s)`);
  }

  close() {
    return this.agent.closeStream(this);
  }
}

/** A client in a child process speaking JSON lines (client_node.mjs, client_python.py). */
export class ProcessAgent {
  constructor(name, cmd, args, env = {}) {
    this.name = name;
    this.cmd = cmd;
    this.args = args;
    this.env = env;
    this.streams = new Map();
  }

  async start() {
    this.child = spawn(this.cmd, this.args, {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, ...this.env },
    });
    this.stderr = '';
    this.child.stderr.on('data', (c) => {
      this.stderr += c;
      if (process.env.VERBOSE) process.stderr.write(`[${this.name}] ${c}`);
    });
    const ready = new Promise((resolve, reject) => {
      this.child.on('exit', (code) => reject(new Error(`${this.name} client exited (${code}): ${this.stderr}`)));
      readline.createInterface({ input: this.child.stdout }).on('line', (line) => {
        let o;
        try {
          o = JSON.parse(line);
        } catch {
          return;
        }
        if (o.kind === 'ready') {
          this.version = o.version;
          resolve();
          return;
        }
        const s = this.streams.get(o.id);
        if (s) s.push(o);
      });
    });
    await Promise.race([ready, sleep(20000).then(() => Promise.reject(new Error(`${this.name} client did not start`)))]);
  }

  send(cmd) {
    this.child.stdin.write(JSON.stringify(cmd) + '\n');
  }

  /**
   * spec: {url, types: [event types to listen for], headers?: {}, ca?: path}
   * (pageUrl / withCredentials / cookies are browser-only and ignored here).
   */
  async open(spec) {
    const id = `${this.name}-${nextId++}`;
    const s = new Stream(this, id);
    this.streams.set(id, s);
    this.send({ cmd: 'open', id, url: spec.url, types: spec.types || ['message'], headers: spec.headers || {}, ca: spec.ca || null });
    return s;
  }

  async closeStream(s) {
    this.send({ cmd: 'close', id: s.id });
    this.streams.delete(s.id);
  }

  async stop() {
    try {
      this.send({ cmd: 'exit' });
    } catch {}
    await Promise.race([new Promise((r) => this.child.on('exit', r)), sleep(2000)]);
    try {
      process.kill(this.child.pid, 'SIGKILL');
    } catch {}
  }
}

/** Chromium's own EventSource, one browser context (own cookies) and page per stream. */
export class BrowserAgent {
  constructor({ executablePath, spki }) {
    this.name = 'browser';
    this.executablePath = executablePath;
    this.spki = spki;
    this.streams = new Map();
  }

  async start() {
    const { chromium } = await import('playwright-core');
    const args = [
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ];
    // Trust the test's own leaf certificate by its public key only (no global switch-off).
    if (this.spki) args.push(`--ignore-certificate-errors-spki-list=${this.spki}`);
    this.browser = await chromium.launch({
      executablePath: this.executablePath,
      headless: true,
      chromiumSandbox: false, // root in CI: --no-sandbox
      args,
      timeout: 30000,
    });
    this.version = `Chromium ${this.browser.version()}`;
  }

  /**
   * spec: {url, types, pageUrl (the document the script runs in; its origin matters),
   *        withCredentials?, cookies?: playwright cookies for the context}
   */
  async open(spec) {
    const id = `browser-${nextId++}`;
    const s = new Stream(this, id);
    this.streams.set(id, s);
    const context = await this.browser.newContext();
    s.context = context;
    if (spec.cookies) await context.addCookies(spec.cookies);
    const page = await context.newPage();
    s.page = page;
    let seq = 0;
    await page.exposeBinding('__report', (_src, batch) => {
      for (const o of batch) {
        if (o.seq !== seq++) s.push({ kind: 'harness-error', message: `report out of order: ${o.seq}` });
        s.push(o);
      }
    });
    page.on('response', (r) => {
      if (r.request().resourceType() === 'eventsource') s.push({ kind: 'http', status: r.status() });
    });
    page.on('console', (m) => {
      if (process.env.VERBOSE) console.log(`[browser console] ${m.text()}`);
      s.console = (s.console || []).concat(m.text());
    });
    await page.goto(spec.pageUrl, { timeout: 10000 });
    await page.evaluate(
      ({ url, types, withCredentials }) => {
        // Reports go out in batches (one binding call per task), in order; each carries
        // the page's own time of the event.
        let seq = 0;
        let batch = [];
        const report = (o) => {
          batch.push({ ...o, seq: seq++, t: performance.now() });
          if (batch.length === 1)
            setTimeout(() => {
              const b = batch;
              batch = [];
              window.__report(b);
            }, 0);
        };
        const es = new EventSource(url, { withCredentials: !!withCredentials });
        window.__es = es;
        es.onopen = () => report({ kind: 'open', readyState: es.readyState });
        es.onerror = () => report({ kind: 'error', readyState: es.readyState });
        for (const type of types) {
          es.addEventListener(type, (e) =>
            report({ kind: 'message', type: e.type, data: e.data, lastEventId: e.lastEventId, origin: e.origin }),
          );
        }
      },
      { url: spec.url, types: spec.types || ['message'], withCredentials: spec.withCredentials },
    );
    return s;
  }

  /** The EventSource's readyState now (browser only). */
  async readyState(s) {
    return s.page.evaluate(() => window.__es.readyState);
  }

  async closeStream(s) {
    this.streams.delete(s.id);
    try {
      await s.page.evaluate(() => window.__es.close());
    } catch {}
    try {
      await s.context.close();
    } catch {}
  }

  async stop() {
    try {
      await this.browser.close();
    } catch {}
  }
}
