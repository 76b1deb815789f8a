// Node client under test: the npm `eventsource` package (WHATWG EventSource on fetch).
// Reads JSON commands on stdin, reports what each EventSource does as JSON lines on stdout.
// TLS trust comes from NODE_EXTRA_CA_CERTS, set by the runner for this process only.
//
//   {"cmd":"open","id":"s1","url":"...","types":["message","x"],"headers":{...}}
//   {"cmd":"close","id":"s1"}     {"cmd":"exit"}
//   -> {"id":"s1","kind":"open"|"message"|"error", ...}
import { EventSource } from 'eventsource';
import fs from 'node:fs';
import readline from 'node:readline';

const streams = new Map();
const emit = (o) => process.stdout.write(JSON.stringify({ ...o, t: performance.now() }) + '\n');

function open({ id, url, types, headers }) {
  const init = {};
  if (headers && Object.keys(headers).length) {
    // The package's documented way to add request headers (e.g. Authorization).
    init.fetch = (input, opts) => fetch(input, { ...opts, headers: { ...opts.headers, ...headers } });
  }
  const es = new EventSource(url, init);
  streams.set(id, es);
  es.addEventListener('open', () => emit({ id, kind: 'open', readyState: es.readyState }));
  es.addEventListener('error', (e) =>
    emit({ id, kind: 'error', readyState: es.readyState, status: e.code, message: e.message }),
  );
  for (const type of types) {
    es.addEventListener(type, (e) =>
      emit({ id, kind: 'message', type: e.type, data: e.data, lastEventId: e.lastEventId, origin: e.origin }),
    );
  }
}

readline.createInterface({ input: process.stdin }).on('line', (line) => {
  const cmd = JSON.parse(line);
  if (cmd.cmd === 'open') open(cmd);
  else if (cmd.cmd === 'close') {
    streams.get(cmd.id)?.close();
    streams.delete(cmd.id);
  } else if (cmd.cmd === 'exit') {
    for (const es of streams.values()) es.close();
    process.exit(0);
  }
});

const pkg = JSON.parse(fs.readFileSync(new URL('./node_modules/eventsource/package.json', import.meta.url)));
emit({ kind: 'ready', version: `eventsource ${pkg.version} (Node ${process.versions.node})` });
