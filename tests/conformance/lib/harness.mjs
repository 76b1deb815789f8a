// Test fixtures for the conformance suite: the real `ssehub` binary started with a config
// written for the case, a producer on its ingest socket, raw HTTP probes, nginx in the
// foreground with docs/nginx.conf, a static page server, and certificates made with the
// openssl CLI. Everything listens on loopback only; every process started here is stopped
// by its own pid.
import { spawn, execFileSync } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export const now = () => performance.now();

/** A temp dir removed at exit (the runner may keep it with KEEP_TMP=1). */
const tmpRoot = fs.mkdtempSync(path.join(os.tmpdir(), 'ssehub-conformance-'));
export function tmpDir(name) {
  const d = fs.mkdtempSync(path.join(tmpRoot, `${name}-`));
  return d;
}
export function cleanupTmp() {
  if (process.env.KEEP_TMP) {
    console.log(`(temp files kept in ${tmpRoot})`);
    return;
  }
  fs.rmSync(tmpRoot, { recursive: true, force: true });
}

const children = new Set();
/** Kills (SIGKILL, by pid) every process this harness started that is still running. */
export function killAll() {
  for (const c of children) {
    try {
      process.kill(c.pid, 'SIGKILL');
    } catch {}
  }
  children.clear();
}
function track(child) {
  children.add(child);
  child.on('exit', () => children.delete(child));
  return child;
}

/** TOML for a case: {section: {key: value}}; strings are quoted, arrays/bools/numbers as is. */
function toml(sections) {
  let out = '';
  for (const [name, keys] of Object.entries(sections)) {
    out += `[${name}]\n`;
    for (const [k, v] of Object.entries(keys)) out += `${k} = ${JSON.stringify(v)}\n`;
    out += '\n';
  }
  return out;
}

/** A running ssehub. */
export class Ssehub {
  /**
   * Starts the binary with `sections` (TOML, see `toml`). `listen` defaults to port 0 (the
   * actual address is read from the "listening http=" log line). Rejects with the log when
   * the process exits before listening (e.g. it refused the configuration).
   */
  static async start(bin, sections = {}, { dir, listen = '127.0.0.1:0' } = {}) {
    dir = dir || tmpDir('ssehub');
    const socket = path.join(dir, 'ingest.sock');
    const all = {
      ...sections,
      http: { listen, ...(sections.http || {}) },
      ingest: { socket, ...(sections.ingest || {}) },
    };
    const config = path.join(dir, `ssehub-${Date.now()}-${Math.random().toString(36).slice(2)}.toml`);
    fs.writeFileSync(config, toml(all));
    const child = track(
      spawn(bin, ['serve', '--config', config, '--log-level', 'debug'], {
        stdio: ['ignore', 'ignore', 'pipe'],
      }),
    );
    const s = new Ssehub();
    s.bin = bin;
    s.dir = dir;
    s.socket = socket;
    s.child = child;
    s.log = [];
    s.config = config;
    s.exited = new Promise((resolve) => child.on('exit', (code, sig) => resolve({ code, sig })));
    const listening = new Promise((resolve, reject) => {
      readline.createInterface({ input: child.stderr }).on('line', (line) => {
        s.log.push(line);
        const m = line.match(/listening https?=(\S+)/);
        if (m) resolve(m[1]);
      });
      s.exited.then(({ code, sig }) =>
        reject(new Error(`ssehub exited (code ${code}, signal ${sig}) before listening:\n${s.log.join('\n')}`)),
      );
    });
    const timeout = sleep(10000).then(() => {
      throw new Error(`ssehub did not start within 10 s:\n${s.log.join('\n')}`);
    });
    s.addr = await Promise.race([listening, timeout]);
    s.port = Number(s.addr.split(':').pop());
    s.base = `http://127.0.0.1:${s.port}`;
    s.tlsBase = `https://127.0.0.1:${s.port}`;
    return s;
  }

  /** Graceful stop (SIGTERM by pid); resolves with the exit status. */
  async stop(signal = 'SIGTERM', timeoutMs = 10000) {
    if (this.producerConn) this.producerConn.close();
    try {
      process.kill(this.child.pid, signal);
    } catch {}
    const r = await Promise.race([this.exited, sleep(timeoutMs).then(() => null)]);
    if (!r) {
      try {
        process.kill(this.child.pid, 'SIGKILL');
      } catch {}
      return this.exited;
    }
    return r;
  }

  /** The ingest connection (one per server, opened lazily). */
  async producer() {
    if (!this.producerConn) this.producerConn = await Producer.connect(this.socket);
    return this.producerConn;
  }

  /** Publishes one JSON object; resolves with the id (a string); rejects on an error answer. */
  async publish(obj) {
    const p = await this.producer();
    return p.publish(obj);
  }
}

/** A producer on the ingest socket: newline-delimited JSON, one answer line per line. */
export class Producer {
  static connect(socketPath) {
    return new Promise((resolve, reject) => {
      const sock = net.createConnection({ path: socketPath });
      const p = new Producer();
      p.sock = sock;
      p.waiting = [];
      let buf = '';
      sock.setEncoding('utf8');
      sock.on('data', (chunk) => {
        buf += chunk;
        let i;
        while ((i = buf.indexOf('\n')) >= 0) {
          const line = buf.slice(0, i);
          buf = buf.slice(i + 1);
          const w = p.waiting.shift();
          if (w) w.resolve(line);
        }
      });
      const fail = (e) => {
        for (const w of p.waiting.splice(0)) w.reject(e || new Error('ingest connection closed'));
      };
      sock.on('error', (e) => {
        fail(e);
        reject(e);
      });
      sock.on('close', () => fail());
      sock.on('connect', () => resolve(p));
    });
  }

  request(line) {
    return new Promise((resolve, reject) => {
      this.waiting.push({ resolve, reject });
      this.sock.write(line + '\n');
    });
  }

  async publish(obj) {
    const answer = await this.request(JSON.stringify(obj));
    const a = JSON.parse(answer);
    if (!a.ok) throw new Error(`publish refused: ${answer} (for ${JSON.stringify(obj)})`);
    return a.id;
  }

  close() {
    this.sock.destroy();
  }
}

/**
 * One HTTP(S) request; resolves once the head has arrived and then `bodyMs` more ms (or the
 * end of the body): {status, headers, body, ended}. For probes only.
 */
export function probe(url, { headers = {}, method = 'GET', bodyMs = 0, ca } = {}) {
  return new Promise((resolve, reject) => {
    const u = new URL(url);
    const mod = u.protocol === 'https:' ? https : http;
    const req = mod.request(
      u,
      { method, headers: { Connection: 'close', ...headers }, agent: false, ca, timeout: 5000 },
      (res) => {
        let body = '';
        let ended = false;
        res.setEncoding('utf8');
        res.on('data', (c) => (body += c));
        const done = () => {
          clearTimeout(timer);
          req.destroy();
          resolve({ status: res.statusCode, headers: res.headers, body, ended });
        };
        res.on('end', () => {
          ended = true;
          done();
        });
        res.on('error', () => done());
        const timer = setTimeout(done, bodyMs);
      },
    );
    req.on('timeout', () => req.destroy(new Error('probe timed out')));
    req.on('error', reject);
    req.end();
  });
}

/**
 * A raw stream reader (our own, not a client under test): counts what arrives on one
 * stream, for checks on the wire itself (keepalive comments sent, proxy closing).
 */
export function rawStream(url, { headers = {} } = {}) {
  const u = new URL(url);
  const r = { body: '', ended: false, status: null, error: null };
  r.done = new Promise((resolve) => {
    const req = http.request(u, { headers, agent: false }, (res) => {
      r.status = res.statusCode;
      res.setEncoding('utf8');
      res.on('data', (c) => (r.body += c));
      res.on('end', () => {
        r.ended = true;
        resolve();
      });
      res.on('error', (e) => {
        r.error = e;
        r.ended = true;
        resolve();
      });
      res.on('close', () => {
        r.ended = true;
        resolve();
      });
    });
    req.on('error', (e) => {
      r.error = e;
      r.ended = true;
      resolve();
    });
    req.end();
    r.close = () => req.destroy();
  });
  return r;
}

/** A free TCP port on 127.0.0.1 (bound and released; the caller binds it right away). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** A tiny static server: every path answers one blank HTML page (the page scripts run in). */
export async function staticServer() {
  const srv = http.createServer((req, res) => {
    res.writeHead(200, { 'Content-Type': 'text/html; charset=utf-8', 'Cache-Control': 'no-store' });
    res.end('<!doctype html><meta charset="utf-8"><title>conformance page</title><p>page');
  });
  await new Promise((resolve) => srv.listen(0, '127.0.0.1', resolve));
  const port = srv.address().port;
  return { port, origin: `http://127.0.0.1:${port}`, close: () => new Promise((r) => srv.close(r)) };
}

/**
 * nginx in the foreground (daemon off) with docs/nginx.conf included into a minimal main
 * config under a temp prefix. `subst` lists [from, to, times = 1] replacements of the
 * example (each must match exactly `times` times, so the tested file and the test cannot
 * drift apart).
 */
export async function startNginx(nginxBin, exampleConf, subst) {
  const prefix = tmpDir('nginx');
  let site = fs.readFileSync(exampleConf, 'utf8');
  for (const [from, to, times = 1] of subst) {
    const count = site.split(from).length - 1;
    if (count !== times) throw new Error(`docs/nginx.conf: expected "${from}" ${times} time(s), found ${count}`);
    site = site.split(from).join(to);
  }
  fs.writeFileSync(path.join(prefix, 'ssehub.conf'), site);
  for (const d of ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi', 'logs']) fs.mkdirSync(path.join(prefix, d));
  const main = `
worker_processes 1;
daemon off;
user root;
pid ${prefix}/nginx.pid;
error_log ${prefix}/logs/error.log info;
events { worker_connections 256; }
http {
    access_log ${prefix}/logs/access.log;
    client_body_temp_path ${prefix}/client_body;
    proxy_temp_path ${prefix}/proxy;
    fastcgi_temp_path ${prefix}/fastcgi;
    uwsgi_temp_path ${prefix}/uwsgi;
    scgi_temp_path ${prefix}/scgi;
    include ${prefix}/ssehub.conf;
}
`;
  fs.writeFileSync(path.join(prefix, 'nginx.conf'), main);
  const child = track(
    spawn(nginxBin, ['-p', prefix, '-c', path.join(prefix, 'nginx.conf'), '-e', path.join(prefix, 'logs/error.log')], {
      stdio: ['ignore', 'ignore', 'pipe'],
    }),
  );
  let stderr = '';
  child.stderr.on('data', (c) => (stderr += c));
  const exited = new Promise((resolve) => child.on('exit', (code) => resolve(code)));
  return {
    child,
    prefix,
    exited,
    stderr: () => stderr,
    errorLog: () => {
      try {
        return fs.readFileSync(path.join(prefix, 'logs/error.log'), 'utf8');
      } catch {
        return '';
      }
    },
    async stop() {
      try {
        process.kill(child.pid, 'SIGTERM'); // fast shutdown: open streams are cut
      } catch {}
      const r = await Promise.race([exited, sleep(5000).then(() => 'timeout')]);
      if (r === 'timeout') {
        try {
          process.kill(child.pid, 'SIGKILL');
        } catch {}
      }
    },
  };
}

/** Waits until `url` answers (any status) or throws after `ms`. */
export async function waitHttp(url, ms = 5000) {
  const deadline = now() + ms;
  let last;
  while (now() < deadline) {
    try {
      return await probe(url);
    } catch (e) {
      last = e;
      await sleep(50);
    }
  }
  throw new Error(`${url} did not answer within ${ms} ms: ${last}`);
}

/**
 * A CA and a leaf for 127.0.0.1 and localhost, made with the openssl CLI. Returns paths
 * and the base64 SHA-256 of the leaf's SubjectPublicKeyInfo (what Chromium's
 * --ignore-certificate-errors-spki-list takes).
 */
export function makeCerts() {
  const d = tmpDir('pki');
  const f = (n) => path.join(d, n);
  const ossl = (args) => execFileSync('openssl', args, { stdio: ['ignore', 'pipe', 'pipe'] });
  ossl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', f('ca.key')]);
  ossl([
    'req', '-x509', '-new', '-key', f('ca.key'), '-out', f('ca.pem'), '-days', '2',
    '-subj', '/CN=ssehub conformance test CA',
    '-addext', 'basicConstraints=critical,CA:TRUE',
    '-addext', 'keyUsage=critical,keyCertSign,cRLSign',
  ]);
  ossl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256', '-out', f('leaf.key')]);
  ossl(['req', '-new', '-key', f('leaf.key'), '-out', f('leaf.csr'), '-subj', '/CN=localhost']);
  fs.writeFileSync(
    f('leaf.ext'),
    [
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
      'basicConstraints=critical,CA:FALSE',
      'keyUsage=critical,digitalSignature',
      'extendedKeyUsage=serverAuth',
    ].join('\n') + '\n',
  );
  ossl([
    'x509', '-req', '-in', f('leaf.csr'), '-CA', f('ca.pem'), '-CAkey', f('ca.key'), '-CAcreateserial',
    '-out', f('leaf.pem'), '-days', '2', '-extfile', f('leaf.ext'),
  ]);
  const pub = ossl(['x509', '-in', f('leaf.pem'), '-pubkey', '-noout']);
  const der = execFileSync('openssl', ['pkey', '-pubin', '-outform', 'der'], { input: pub });
  const digest = execFileSync('openssl', ['dgst', '-sha256', '-binary'], { input: der });
  return {
    dir: d,
    ca: f('ca.pem'),
    cert: f('leaf.pem'),
    key: f('leaf.key'),
    spki: digest.toString('base64'),
  };
}
