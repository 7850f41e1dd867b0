// Shared by the HTTP/2 test scripts: one TLS connection to Herald (trusting
// the test's CA), SSE streams on it read frame by frame, publishing on it,
// and reporting to the Rust test as one JSON object per stdout line.

import http2 from 'node:http2';

/** The test's input: the first argument, as JSON. */
export const input = JSON.parse(process.argv[2]);

/** One line for the Rust test to read. */
export function report(object) {
  process.stdout.write(JSON.stringify(object) + '\n');
}

/** Ends the script with a message for the test's failure output. */
export function fail(message) {
  process.stderr.write(`${message}\n`);
  process.exit(1);
}

/** Waits until `check()` is true, re-checked whenever a stream changes. */
export function until(what, check, ms = input.timeoutMs) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      waiters.delete(test);
      reject(new Error(`timed out after ${ms} ms waiting for ${what}`));
    }, ms);
    const test = () => {
      if (check()) {
        clearTimeout(timer);
        waiters.delete(test);
        resolve();
      }
    };
    waiters.add(test);
    test();
  });
}

const waiters = new Set();
function changed() {
  for (const test of [...waiters]) test();
}

/** One HTTP/2 connection over TLS; `options` go to `http2.connect`. */
export async function connect(options = {}) {
  const session = http2.connect(input.url, {
    ca: input.ca,
    // Herald advertises no stream limit; Node assumes 100 unless told.
    peerMaxConcurrentStreams: 1000,
    ...options,
  });
  await new Promise((resolve, reject) => {
    session.once('connect', resolve);
    session.once('error', reject);
  });
  session.on('error', (e) => fail(`the HTTP/2 session failed: ${e.message}`));
  return session;
}

/**
 * Opens `GET path` as an SSE stream on `session`. The returned object fills
 * in as frames arrive: `status`, `events` ({event, id, data}), `comments`
 * (heartbeats), `ended` (the server ended the stream) and `endedAt` (when,
 * in ms since the Unix epoch), `closed`, `error` (a reset or a failure).
 */
export function openStream(session, path, headers = {}) {
  const request = session.request({ ':path': path, ...headers });
  const stream = {
    request,
    status: null,
    events: [],
    comments: 0,
    ended: false,
    endedAt: null,
    closed: false,
  };
  let buffer = '';
  request.setEncoding('utf8');
  request.on('response', (head) => {
    stream.status = head[':status'];
    changed();
  });
  request.on('data', (chunk) => {
    buffer += chunk;
    let end;
    while ((end = buffer.indexOf('\n\n')) >= 0) {
      parseFrame(stream, buffer.slice(0, end));
      buffer = buffer.slice(end + 2);
    }
    changed();
  });
  request.on('end', () => {
    stream.ended = true;
    stream.endedAt = Date.now();
    changed();
  });
  request.on('close', () => {
    stream.closed = true;
    changed();
  });
  request.on('error', (e) => {
    stream.error = e.message;
    changed();
  });
  return stream;
}

function parseFrame(stream, block) {
  const frame = { event: 'message', id: null, data: [] };
  let isEvent = false;
  for (const line of block.split('\n')) {
    if (line.startsWith(':')) {
      stream.comments += 1;
      continue;
    }
    const colon = line.indexOf(':');
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
    if (field === 'event') frame.event = value;
    else if (field === 'id') frame.id = value;
    else if (field === 'data') {
      frame.data.push(value);
      isEvent = true;
    }
  }
  if (isEvent) stream.events.push({ event: frame.event, id: frame.id, data: frame.data.join('\n') });
}

/** The live events of `stream` named `name`, their data parsed. */
export function named(stream, name) {
  return stream.events.filter((e) => e.event === name).map((e) => ({ id: e.id, ...JSON.parse(e.data) }));
}

/** A request on `session` with `body` as JSON; resolves to {status, json}. */
export function request(session, method, path, token, body) {
  return new Promise((resolve, reject) => {
    const headers = { ':method': method, ':path': path, authorization: `Bearer ${token}` };
    if (body !== undefined) headers['content-type'] = 'application/json';
    const call = session.request(headers);
    let status = null;
    let text = '';
    call.setEncoding('utf8');
    call.on('response', (head) => {
      status = head[':status'];
    });
    call.on('data', (chunk) => {
      text += chunk;
    });
    call.on('end', () => {
      try {
        resolve({ status, json: text ? JSON.parse(text) : null });
      } catch (e) {
        reject(new Error(`${method} ${path}: ${status} ${text}`));
      }
    });
    call.on('error', reject);
    call.end(body === undefined ? undefined : JSON.stringify(body));
  });
}
