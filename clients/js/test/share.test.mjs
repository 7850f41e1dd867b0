import test from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '../herald.js';
import { flush, fakeTimers, fakeFetch, connected } from './helpers.mjs';

// A minimal navigator.locks: exclusive locks granted in request order.
function fakeLocks() {
  const queues = new Map();
  const held = new Set();
  function pump(name) {
    const q = queues.get(name) || [];
    if (held.has(name) || !q.length) return;
    const e = q.shift();
    held.add(name);
    Promise.resolve()
      .then(() => e.cb({ name }))
      .then(e.resolve, e.reject)
      .finally(() => {
        held.delete(name);
        pump(name);
      });
  }
  return {
    request(name, opts, cb) {
      return new Promise((resolve, reject) => {
        const e = { cb, resolve, reject };
        if (!queues.has(name)) queues.set(name, []);
        queues.get(name).push(e);
        opts.signal?.addEventListener('abort', () => {
          const q = queues.get(name);
          const i = q.indexOf(e);
          if (i >= 0) {
            q.splice(i, 1);
            reject(new DOMException('aborted', 'AbortError'));
          }
        });
        pump(name);
      });
    },
  };
}

function tab(locks, name) {
  const timers = fakeTimers();
  const fetch = fakeFetch();
  const herald = connect({
    url: 'https://h.test/api/events',
    channels: ['news'],
    locks,
    BroadcastChannel,
    fetch,
    setTimeout: timers.setTimeout,
    clearTimeout: timers.clearTimeout,
    random: () => 0.5,
  });
  const seen = [];
  const statuses = [];
  herald.onAny((e) => seen.push(e.event === 'message' ? e.data : e.event));
  herald.onStatus((s) => statuses.push(s));
  return { name, herald, fetch, seen, statuses };
}

test('tabs share one stream; a follower takes over from the last id and never delivers an id twice', async () => {
  const locks = fakeLocks();
  const a = tab(locks, 'a');
  const b = tab(locks, 'b');
  await flush(10);
  assert.equal(a.fetch.calls.length, 1, 'the first tab leads');
  assert.equal(b.fetch.calls.length, 0, 'the second tab follows');
  assert.deepEqual([a.herald.role, b.herald.role], ['leader', 'follower']);
  a.fetch.calls[0].push(connected() + 'id: 1\ndata: one\n\nid: 2\ndata: two\n\n');
  await flush(10);
  assert.deepEqual(a.seen, ['connected', 'one', 'two']);
  assert.deepEqual(b.seen, ['connected', 'one', 'two']);
  assert.equal(b.herald.status, 'open');
  assert.equal(b.herald.lastEventId, '2');

  // a third tab joining late learns the status from the leader
  const c = tab(locks, 'c');
  await flush(10);
  assert.equal(c.herald.status, 'open');
  assert.equal(c.fetch.calls.length, 0);

  // the leader's tab goes away: b is next in line
  a.herald.close();
  await flush(10);
  assert.equal(b.fetch.calls.length, 1);
  assert.equal(c.fetch.calls.length, 0);
  assert.equal(b.fetch.calls[0].headers['Last-Event-ID'], '2');
  assert.deepEqual([b.herald.role, c.herald.role], ['leader', 'follower']);
  // the server replays id 2 (say): no tab delivers it twice
  b.fetch.calls[0].push(connected() + 'id: 2\ndata: two\n\nid: 3\ndata: three\n\n');
  await flush(10);
  assert.deepEqual(b.seen, ['connected', 'one', 'two', 'connected', 'three']);
  assert.deepEqual(c.seen, ['connected', 'two', 'three'], 'c joined after id 2 and had not delivered it');
  assert.deepEqual(a.seen, ['connected', 'one', 'two'], 'a closed tab hears nothing');
  b.herald.close();
  c.herald.close();
  await flush(10);
});

test('a terminal close of the leader closes the followers with its reason', async () => {
  const locks = fakeLocks();
  const a = tab(locks, 'a');
  const b = tab(locks, 'b');
  await flush(10);
  a.fetch.calls[0].push(connected() + 'event: revoked\ndata: {}\n\n');
  await flush(10);
  await new Promise((r) => setTimeout(r, 120));
  await flush(10);
  assert.equal(a.herald.closedReason, 'revoked');
  assert.equal(b.herald.status, 'closed');
  assert.equal(b.herald.closedReason, 'revoked');
  assert.equal(b.fetch.calls.length, 0, 'the follower does not take over after a terminal close');
});

test('without Web Locks or BroadcastChannel each tab holds its own stream', async () => {
  const locks = fakeLocks();
  const mk = (env) => {
    const fetch = fakeFetch();
    const herald = connect({ url: 'https://h.test/e', fetch, setTimeout, clearTimeout, ...env });
    return { herald, fetch };
  };
  // navigator.locks is absent in Node 20
  const tabs = [mk({}), mk({}), mk({ locks, BroadcastChannel: undefined }), mk({ locks, BroadcastChannel: undefined }), mk({ locks, BroadcastChannel, share: false })];
  await flush(10);
  assert.deepEqual(tabs.map((t) => t.fetch.calls.length), [1, 1, 1, 1, 1]);
  assert.ok(tabs.every((t) => t.herald.role === 'alone'));
  for (const t of tabs) t.herald.close();
});
