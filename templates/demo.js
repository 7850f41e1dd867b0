// Herald's demo page, built on Herald's own browser client (/herald.js): one
// stream per browser, shared by its tabs, resumed from the last event after
// any break. An ES module, no build step. Everything received is written with
// textContent, never innerHTML, so event data can never become markup.
import { connect as connectToHerald } from '/herald.js';

const app = document.getElementById('app');
if (app) start(app); // Signed out: there is no stream to open.

function start(app) {
  /** Events the client handles itself; the list shows the rest. */
  const CONTROL_EVENTS = new Set(['connected', 'token-expiring', 'token-expired', 'revoked']);
  /** The contract's character sets for channel names. */
  const CHANNEL_NAME = /^[A-Za-z0-9_.:\/-]{1,128}$/;
  /** The list keeps the newest events only, so a busy page stays fast. */
  const MAX_EVENTS_SHOWN = 200;

  const $ = (id) => document.getElementById(id);
  const admin = app.dataset.admin === 'true';
  /** Whether this page can mint a fresh token itself (the demo sign-in). */
  const demoLogin = app.dataset.demoLogin === 'true';

  /** The open client, from herald.js. */
  let herald = null;
  /** The channels the stream is on, as the server confirmed them. */
  let channels = [];
  /** Where the next stream resumes from: the newest event seen. */
  let lastEventId = '';
  /** Ids already shown, so an event is never shown twice. */
  const seenIds = new Set();
  let received = 0;
  /** Times the stream's token was refreshed in place. */
  let refreshes = 0;

  function setState(state) {
    const badge = $('state');
    badge.textContent = state;
    badge.dataset.state = state;
    $('reconnect').hidden = state !== 'closed';
    $('tab-role').textContent = herald ? herald.role : '—';
  }

  /** Opens (or reopens) the stream with the current channels, resuming after lastEventId. */
  function connect() {
    if (herald) {
      lastEventId = herald.lastEventId || lastEventId;
      herald.close();
    }
    const client = connectToHerald({
      channels,
      lastEventId,
      // The token is in an HttpOnly cookie: the demo's sign-in sets a fresh
      // one, and the client then refreshes the open stream with it.
      renewCookie: demoLogin ? renewCookie : undefined,
    });
    herald = client;
    setState(client.status);
    $('expired').hidden = true;
    client.onStatus((status) => setState(status));
    client.on('connected', onConnected);
    client.on('token-expiring', onTokenExpiring);
    client.on('token-expired', () => {
      // Reconnecting with the same cookie would only be refused.
      client.close();
      $('expired').hidden = false;
      setState('closed');
    });
    client.onGap(() => {
      $('missed').hidden = false;
    });
    client.onRefresh(() => {
      refreshes += 1;
      $('token-refreshes').textContent = String(refreshes);
      $('token-expiry').textContent = 'refreshed';
    });
    client.onAny((event) => {
      if (!CONTROL_EVENTS.has(event.event)) onEvent(event);
    });
  }

  function onConnected(info) {
    channels = info.channels;
    $('stream-user').textContent = info.user;
    $('stream-client-id').textContent = info.client_id;
    $('stream-channels').textContent = info.channels.length > 0 ? info.channels.join(', ') : 'none';
    $('stream-replayed').textContent = String(info.replayed);
    $('tab-role').textContent = herald.role;
  }

  function onTokenExpiring({ expires_at: expiresAt }) {
    const until = new Date(expiresAt * 1000).toLocaleString();
    // Without the demo's sign-in, only the token's owner can get a fresh one.
    $('token-expiry').textContent = demoLogin ? `${until} (refreshing…)` : `${until} (expiring soon)`;
  }

  /** The demo's own way to mint a fresh token into the cookie: sign in again. */
  async function renewCookie() {
    const form = new URLSearchParams({ user: app.dataset.user });
    if (admin) form.set('admin', 'on');
    await fetch('/demo/login', {
      method: 'POST',
      credentials: 'same-origin',
      redirect: 'manual',
      body: form,
    });
  }

  /**
   * Shows the newest retained events (`GET /api/history`), then opens the
   * stream from the newest of them, so nothing is missed or shown twice.
   */
  async function loadRecent() {
    try {
      const response = await fetch('/api/history?limit=20', { credentials: 'same-origin' });
      if (!response.ok) return;
      const page = await response.json();
      // Oldest first: each is put on top, as live events are.
      for (const item of [...page.events].reverse()) {
        onEvent({
          event: item.event,
          id: item.id,
          data: JSON.stringify(item.data),
          time: new Date(item.published_at),
          fromHistory: true,
        });
        lastEventId = item.id;
      }
    } catch {
      // Without the list the page still works: the stream opens all the same.
    }
  }

  function onEvent(event) {
    if (event.id) {
      if (seenIds.has(event.id)) return;
      seenIds.add(event.id);
    }
    received += 1;
    $('event-count').textContent = String(received);
    $('no-events').hidden = true;

    const item = document.createElement('li');
    item.className = 'event';
    item.dataset.name = event.event;
    item.dataset.id = event.id;
    if (event.fromHistory) item.classList.add('event-earlier');
    const head = document.createElement('div');
    head.className = 'event-head';
    head.append(
      element('span', 'event-name', event.event),
      element('code', 'event-id', event.id || '(no id)'),
      element('time', 'event-time', clock(event.time || new Date())),
    );
    item.append(head, element('pre', 'event-data', pretty(event.data)));
    const list = $('events');
    list.prepend(item);
    while (list.children.length > MAX_EVENTS_SHOWN) list.lastElementChild.remove();
  }

  function element(tag, className, text) {
    const node = document.createElement(tag);
    node.className = className;
    node.textContent = text;
    return node;
  }

  function pretty(text) {
    try {
      return JSON.stringify(JSON.parse(text), null, 2);
    } catch {
      return text;
    }
  }

  function clock(date) {
    const two = (n) => String(n).padStart(2, '0');
    return `${two(date.getHours())}:${two(date.getMinutes())}:${two(date.getSeconds())}.` +
      String(date.getMilliseconds()).padStart(3, '0');
  }

  function showError(id, message) {
    $(id).textContent = message;
    $(id).hidden = !message;
  }

  /** Splits "a, b c" into names, or returns the first one that is not valid. */
  function names(text, pattern) {
    const list = text.split(/[\s,]+/).filter((name) => name !== '');
    const bad = list.find((name) => !pattern.test(name));
    return bad === undefined ? { list } : { bad };
  }

  $('join-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const { list, bad } = names($('join-channels').value, CHANNEL_NAME);
    if (bad !== undefined) {
      showError('join-error', `"${bad}" is not a channel name (1-128 of A-Z a-z 0-9 _ . : - /).`);
      return;
    }
    showError('join-error', '');
    const wanted = [...new Set([...channels, ...list])];
    $('join-channels').value = '';
    if (wanted.length === channels.length) return;
    channels = wanted;
    connect();
  });

  $('reconnect').addEventListener('click', connect);

  $('clear-events').addEventListener('click', () => {
    $('events').replaceChildren();
    received = 0;
    $('event-count').textContent = '0';
    $('no-events').hidden = false;
  });

  const expiresAt = Number(app.dataset.expiresAt);
  if (expiresAt > 0) $('token-expiry').textContent = new Date(expiresAt * 1000).toLocaleString();

  if (admin) {
    const kind = $('send-target-kind');
    const target = $('send-target');
    kind.addEventListener('change', () => {
      target.disabled = kind.value === 'everyone';
      target.placeholder = kind.value === 'channel' ? 'news' : '';
    });

    $('send-form').addEventListener('submit', async (event) => {
      event.preventDefault();
      const result = $('send-result');
      result.hidden = false;
      result.className = 'result';
      const name = $('send-event').value.trim();
      let data;
      try {
        data = JSON.parse($('send-data').value);
      } catch (error) {
        result.classList.add('result-error');
        result.textContent = `The data is not valid JSON: ${error.message}`;
        return;
      }
      const body = { event: name, data };
      if (kind.value === 'user') body.user = target.value.trim();
      if (kind.value === 'channel') body.channel = target.value.trim();
      result.textContent = 'Sending…';
      try {
        // Same origin: the HttpOnly cookie goes along, and the server checks
        // the Origin header before it trusts a cookie on a write.
        const response = await fetch('/api/send', {
          method: 'POST',
          credentials: 'same-origin',
          headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify(body),
        });
        const answer = await response.text();
        result.classList.toggle('result-error', !response.ok);
        result.textContent = `${response.status} ${response.statusText}\n${pretty(answer)}`;
      } catch (error) {
        result.classList.add('result-error');
        result.textContent = `The request failed: ${error.message}`;
      }
    });
  }

  loadRecent().then(connect);
}
