import test from 'node:test';
import assert from 'node:assert/strict';
import { connect } from '../herald.js';
import { flush, fakeTimers, fakeFetch, connected } from './helpers.mjs';

const URL_ = 'https://h.test/api/events';

function setup(opts = {}, script) {
  const timers = fakeTimers();
  const fetch = fakeFetch(script);
  const statuses = [];
  const herald = connect({
    url: URL_,
    share: false,
    fetch,
    setTimeout: timers.setTimeout,
    clearTimeout: timers.clearTimeout,
    random: () => 0.5,
    ...opts,
  });
  herald.onStatus((s, r) => statuses.push(r ? `${s}:${r}` : s));
  return { herald, timers, fetch, statuses };
}

test('events reach on() with parsed data and onAny() with the raw event; status goes connecting → open', async () => {
  const { herald, fetch, statuses } = setup({ channels: ['news', 'a b'] });
  const got = [];
  const any = [];
  herald.on('update', (data, ev) => got.push([data, ev.id]));
  herald.on('note', (data) => got.push([data]));
  herald.onAny((ev) => any.push(ev.event));
  assert.equal(herald.status, 'connecting');
  await flush();
  assert.equal(fetch.calls.length, 1);
  const c = fetch.calls[0];
  assert.equal(c.url, URL_ + '?channels=news,a%20b');
  assert.equal(c.init.credentials, 'include');
  assert.equal(c.headers['Last-Event-ID'], undefined);
  c.push(connected());
  c.push('id: 1\nevent: update\ndata: {"x":1}\n\nevent: note\ndata: not json\n\n');
  await flush();
  assert.deepEqual(got, [[{ x: 1 }, '1'], ['not json']]);
  assert.deepEqual(any, ['connected', 'update', 'note']);
  assert.deepEqual(statuses, ['open']);
  herald.close();
  assert.equal(herald.status, 'closed');
  assert.deepEqual(statuses, ['open', 'closed:closed by client']);
  await flush();
  assert.equal(c.cancelled, true);
});

test('after the stream ends it waits the server retry with jitter and resumes with Last-Event-ID', async () => {
  for (const [rand, expected] of [[0, 800], [0.5, 1000], [0.999999, 1200]]) {
    const { herald, fetch, timers, statuses } = setup({ random: () => rand });
    await flush();
    fetch.calls[0].push(connected() + 'id: 10\ndata: a\n\nid: 11\ndata: b\n\n: hb\n\n');
    fetch.calls[0].end();
    await flush();
    assert.equal(statuses.at(-1), 'reconnecting');
    assert.equal(timers.pending.length, 1);
    const ms = timers.pending[0].ms;
    assert.ok(ms >= 800 && ms <= 1200, `delay ${ms}`);
    assert.equal(ms, expected);
    assert.equal(fetch.calls.length, 1, 'does not reconnect before the timer');
    await timers.runNext();
    assert.equal(fetch.calls.length, 2);
    assert.equal(fetch.calls[1].headers['Last-Event-ID'], '11');
    assert.ok(!fetch.calls[1].url.includes('last_event_id'));
    herald.close();
  }
});

test('repeated failures back off exponentially up to 60 s; the default retry is 5000 ms', async () => {
  const { herald, fetch, timers } = setup({}, () => ({ status: 503 }));
  await flush();
  const delays = [];
  for (let i = 0; i < 7; i++) delays.push(await timers.runNext());
  assert.deepEqual(delays, [5000, 10000, 20000, 40000, 60000, 60000, 60000]);
  assert.equal(fetch.calls.length, 8);
  herald.close();
  assert.equal(timers.pending.length, 0, 'close clears the pending timer');
});

test('a network error retries; 429 retries; 403 closes with a reason', async () => {
  let n = 0;
  const { herald, fetch, timers, statuses } = setup({}, () => {
    n++;
    if (n === 1) return new TypeError('offline');
    if (n === 2) return { status: 429 };
    return { status: 403 };
  });
  await flush();
  await timers.runNext();
  await timers.runNext();
  assert.equal(fetch.calls.length, 3);
  assert.equal(herald.status, 'closed');
  assert.equal(herald.closedReason, 'http 403');
  assert.equal(statuses.at(-1), 'closed:http 403');
  assert.equal(timers.pending.length, 0);
});

test('the token goes in the Authorization header, never in the URL', async () => {
  const { herald, fetch } = setup({ getToken: async () => 'tok-123', channels: ['x'] });
  await flush();
  const c = fetch.calls[0];
  assert.equal(c.headers.Authorization, 'Bearer tok-123');
  assert.ok(!c.url.includes('tok-123'));
  assert.ok(!c.url.includes('token'));
  herald.close();
});

test('401 with getToken: one more token and an immediate retry, then closed with a reason', async () => {
  let tokens = 0;
  const { herald, fetch, timers, statuses } = setup(
    { getToken: async () => `t${++tokens}` },
    () => ({ status: 401 }),
  );
  await flush(10);
  assert.equal(tokens, 2);
  assert.equal(fetch.calls.length, 2);
  assert.equal(fetch.calls[1].headers.Authorization, 'Bearer t2');
  assert.equal(timers.pending.length, 0, 'the retry after 401 is immediate and there is no third');
  assert.equal(herald.status, 'closed');
  assert.equal(herald.closedReason, 'unauthorized');
  assert.deepEqual(statuses, ['closed:unauthorized']);
});

test('401 without getToken closes at once', async () => {
  const { herald, fetch, statuses } = setup({}, () => ({ status: 401 }));
  await flush();
  assert.equal(fetch.calls.length, 1);
  assert.equal(herald.closedReason, 'unauthorized');
  assert.deepEqual(statuses, ['closed:unauthorized']);
});

test('a resume answered with recovered: false calls onGap; a first connect does not', async () => {
  const { herald, fetch, timers } = setup();
  let gaps = 0;
  herald.onGap(() => gaps++);
  await flush();
  fetch.calls[0].push(connected({ recovered: false }) + 'id: 5\ndata: x\n\n');
  await flush();
  assert.equal(gaps, 0, 'not a resume');
  fetch.calls[0].fail();
  await flush();
  await timers.runNext();
  assert.equal(fetch.calls[1].headers['Last-Event-ID'], '5');
  fetch.calls[1].push(connected({ recovered: true }));
  fetch.calls[1].end();
  await flush();
  assert.equal(gaps, 0, 'recovered resume');
  await timers.runNext();
  fetch.calls[2].push(connected({ recovered: false }));
  await flush();
  assert.equal(gaps, 1);
  herald.close();
});

test('token-expiring refreshes in place with a POST to /api/streams/<client_id>/token', async () => {
  let tokens = 0;
  const { herald, fetch } = setup({ getToken: async () => `t${++tokens}` }, (call) =>
    call.init.method === 'POST' ? { status: 204 } : undefined,
  );
  await flush();
  fetch.calls[0].push(connected({ client_id: 'abc/1' }) + 'event: token-expiring\ndata: {"expires_at": 1}\n\n');
  await flush();
  assert.equal(fetch.calls.length, 2);
  const post = fetch.calls[1];
  assert.equal(post.url, 'https://h.test/api/streams/abc%2F1/token');
  assert.equal(post.init.method, 'POST');
  assert.equal(post.headers.Authorization, 'Bearer t2');
  assert.equal(fetch.calls[0].cancelled, false, 'the stream stays open');
  assert.equal(herald.status, 'open');
  herald.close();
});

test('a failed refresh reconnects at once with the new token from the last id', async () => {
  let tokens = 0;
  const { herald, fetch, timers } = setup({ getToken: async () => `t${++tokens}` }, (call) =>
    call.init.method === 'POST' ? { status: 404 } : undefined,
  );
  await flush();
  fetch.calls[0].push(connected() + 'id: 9\ndata: x\n\nevent: token-expiring\ndata: {}\n\n');
  await flush(10);
  assert.equal(fetch.calls[0].cancelled, true);
  assert.equal(fetch.calls.length, 3);
  assert.equal(timers.pending.length, 0);
  assert.equal(fetch.calls[2].headers.Authorization, 'Bearer t2');
  assert.equal(fetch.calls[2].headers['Last-Event-ID'], '9');
  assert.equal(tokens, 2);
  herald.close();
});

test('with renewCookie, token-expiring renews the cookie and refreshes in place with it', async () => {
  let renewals = 0;
  let refreshes = 0;
  const { herald, fetch } = setup({ renewCookie: async () => renewals++ }, (call) =>
    call.init.method === 'POST' ? { status: 204 } : undefined,
  );
  herald.onRefresh(() => refreshes++);
  await flush();
  fetch.calls[0].push(connected({ client_id: 'c1' }) + 'event: token-expiring\ndata: {}\n\n');
  await flush();
  assert.equal(renewals, 1);
  assert.equal(fetch.calls.length, 2);
  const post = fetch.calls[1];
  assert.equal(post.url, 'https://h.test/api/streams/c1/token');
  assert.equal(post.init.credentials, 'include', 'the renewed cookie goes along');
  assert.equal(post.headers.Authorization, undefined, 'no token in cookie mode');
  assert.equal(fetch.calls[0].cancelled, false, 'the stream stays open');
  assert.equal(refreshes, 1, 'onRefresh heard of it');
  herald.close();
});

test('without getToken or renewCookie, token-expiring does nothing', async () => {
  const { herald, fetch } = setup();
  await flush();
  fetch.calls[0].push(connected() + 'event: token-expiring\ndata: {}\n\n');
  await flush();
  assert.equal(fetch.calls.length, 1);
  assert.equal(herald.status, 'open');
  herald.close();
});

test('token-expired reconnects with a fresh token; revoked closes with reason revoked', async () => {
  let tokens = 0;
  const { herald, fetch, statuses } = setup({ getToken: async () => `t${++tokens}` });
  await flush();
  fetch.calls[0].push(connected() + 'id: 3\ndata: a\n\nevent: token-expired\ndata: {}\n\n');
  await flush(10);
  assert.equal(fetch.calls.length, 2);
  assert.equal(fetch.calls[1].headers.Authorization, 'Bearer t2');
  assert.equal(fetch.calls[1].headers['Last-Event-ID'], '3');
  const after = [];
  herald.onAny((e) => after.push(e.event));
  fetch.calls[1].push(connected() + 'event: revoked\ndata: {}\n\nid: 4\ndata: late\n\n');
  await flush();
  assert.equal(herald.status, 'closed');
  assert.equal(herald.closedReason, 'revoked');
  assert.equal(statuses.at(-1), 'closed:revoked');
  assert.deepEqual(after, ['connected', 'revoked'], 'nothing after revoked');
  assert.equal(fetch.calls[1].cancelled, true);
  assert.equal(fetch.calls.length, 2);
});
