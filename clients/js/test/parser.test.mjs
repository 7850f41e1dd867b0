import test from 'node:test';
import assert from 'node:assert/strict';
import { createParser } from '../herald.js';

function parse(chunks, opts = {}) {
  const events = [];
  const retries = [];
  const p = createParser((e, own) => events.push({ ...e, own }), {
    onRetry: (ms) => retries.push(ms),
    ...opts,
  });
  for (const c of chunks) p.feed(c);
  return { events, retries, lastEventId: p.lastEventId };
}
const strip = (evs) => evs.map(({ id, event, data }) => ({ id, event, data }));

test('a leading BOM is stripped once, even split from the rest', () => {
  assert.deepEqual(strip(parse(['\uFEFFdata: a\n\n']).events), [{ id: '', event: 'message', data: 'a' }]);
  assert.deepEqual(strip(parse(['\uFEFF', 'data: a\n\n']).events), [{ id: '', event: 'message', data: 'a' }]);
  // a second BOM is part of the first field name, so the line is an unknown field
  assert.deepEqual(parse(['\uFEFF\uFEFFdata: a\n\n']).events, []);
  // a BOM later in the stream is not stripped
  assert.deepEqual(parse(['data: a\n\n\uFEFFdata: b\n\n']).events.map((e) => e.data), ['a']);
});

test('CRLF, CR and LF all end lines', () => {
  for (const nl of ['\r\n', '\r', '\n']) {
    const { events } = parse([`event: x${nl}data: 1${nl}data: 2${nl}${nl}data: 3${nl}${nl}`]);
    assert.deepEqual(strip(events), [
      { id: '', event: 'x', data: '1\n2' },
      { id: '', event: 'message', data: '3' },
    ], JSON.stringify(nl));
  }
});

test('a CR at the end of a chunk and an LF at the start of the next are one line end', () => {
  const { events } = parse(['data: a\r', '\ndata: b\r', '\n\r', '\n']);
  assert.deepEqual(strip(events), [{ id: '', event: 'message', data: 'a\nb' }]);
  // CR then CR across chunks is two line ends: dispatches
  assert.equal(parse(['data: a\r', '\r']).events.length, 1);
  // a lone CR followed by a chunk not starting with LF
  assert.deepEqual(parse(['data: a\r', 'data: b\r\r']).events.map((e) => e.data), ['a\nb']);
});

test('comments are ignored, including heartbeats between fields', () => {
  const { events } = parse([': hi\ndata: a\n:heartbeat\ndata: b\n\n:\n\n']);
  assert.deepEqual(events.map((e) => e.data), ['a\nb']);
});

test('retry accepts ASCII digits only', () => {
  const { retries } = parse(['retry: 1500\nretry: 12a\nretry: -5\nretry:\nretry: 1.5\nretry: 0300\n\n']);
  assert.deepEqual(retries, [1500, 300]);
});

test('id containing NUL is ignored; id without data updates the last event id', () => {
  const r = parse(['id: 1\ndata: a\n\nid: 2\u00003\ndata: b\n\nid: 7\n\n']);
  assert.deepEqual(strip(r.events), [
    { id: '1', event: 'message', data: 'a' },
    { id: '1', event: 'message', data: 'b' },
  ]);
  assert.equal(r.events[1].own, false);
  assert.equal(r.lastEventId, '7');
});

test('the last event id persists across events and can be reset to empty', () => {
  const r = parse(['id: 5\ndata: a\n\ndata: b\n\nid\ndata: c\n\n']);
  assert.deepEqual(r.events.map((e) => [e.id, e.own]), [['5', true], ['5', false], ['', true]]);
  assert.equal(r.lastEventId, '');
  assert.equal(parse(['data: x\n\n'], { lastEventId: 'start' }).events[0].id, 'start');
});

test('a field without a colon is a field with an empty value', () => {
  const { events } = parse(['data\ndata\ndata: x\n\ndata\n\n']);
  assert.deepEqual(events.map((e) => e.data), ['\n\nx', '']);
  // "data" alone gives an empty data line, which is non-empty buffer: dispatches ''
  assert.equal(events.length, 2);
});

test('only one leading space after the colon is removed', () => {
  const { events } = parse(['data:  two\ndata:none\nevent:   e\n\n']);
  assert.deepEqual(strip(events), [{ id: '', event: '  e', data: ' two\nnone' }]);
});

test('event type defaults to message and resets after each event', () => {
  const { events } = parse(['event: update\ndata: 1\n\ndata: 2\n\n']);
  assert.deepEqual(events.map((e) => e.event), ['update', 'message']);
});

test('no dispatch without data; the pending event type is dropped', () => {
  const { events } = parse(['event: x\n\nid: 3\n\ndata: y\n\n']);
  assert.deepEqual(strip(events), [{ id: '3', event: 'message', data: 'y' }]);
});

test('an unfinished event at the end of input is not dispatched', () => {
  assert.deepEqual(parse(['data: a\n']).events, []);
  assert.deepEqual(parse(['data: a']).events, []);
});

test('chunk boundaries anywhere give the same result', () => {
  const stream =
    '\uFEFFretry: 3000\r\nevent: connected\r\ndata: {"client_id":"c1"}\r\n\r\n' +
    ': heartbeat\n\nid: 41\nevent: update\ndata: {"a":1}\n\n' +
    'id: 42\revent: update\rdata: line1\rdata: line2\r\r' +
    'data\r\ndata:  spaced\nid: bad\u0000\n\n' +
    'event: token-expiring\ndata: {"expires_at": 1700000000}\r\n\r\n';
  const whole = parse([stream]);
  assert.equal(whole.events.length, 5);
  assert.deepEqual(whole.retries, [3000]);
  assert.equal(whole.lastEventId, '42');
  const bytes = parse([...stream]);
  assert.deepEqual(bytes, whole);
  for (let cut = 0; cut <= stream.length; cut++) {
    assert.deepEqual(parse([stream.slice(0, cut), stream.slice(cut)]), whole, `cut at ${cut}`);
  }
  // and through a streaming TextDecoder fed one byte at a time
  const enc = new TextEncoder().encode(stream + 'data: é€😀\n\n');
  const dec = new TextDecoder('utf-8', { ignoreBOM: true });
  const chunks = [...enc].map((b) => dec.decode(new Uint8Array([b]), { stream: true }));
  const viaBytes = parse(chunks);
  assert.deepEqual(viaBytes.events.slice(0, 5), whole.events);
  assert.equal(viaBytes.events[5].data, 'é€😀');
});
