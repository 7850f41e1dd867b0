// Herald's demo page: one EventSource, opened and reopened by the browser
// itself. Plain script, no build step. Everything received is written with
// textContent, never innerHTML, so event data can never become markup.
'use strict';

(() => {
  const app = document.getElementById('app');
  if (!app) return; // Signed out: there is no stream to open.

  /** Names listened to from the start; the person can add more. */
  const DEFAULT_EVENT_NAMES = ['message', 'update', 'notification', 'alert', 'news'];
  /** The contract's character sets for channel and event names. */
  const CHANNEL_NAME = /^[A-Za-z0-9_.:\/-]{1,128}$/;
  const EVENT_NAME = /^[A-Za-z0-9_.:-]{1,64}$/;
  /** The list keeps the newest events only, so a busy page stays fast. */
  const MAX_EVENTS_SHOWN = 200;

  const $ = (id) => document.getElementById(id);
  const admin = app.dataset.admin === 'true';
  /** Whether this page can mint a fresh token itself (the demo sign-in). */
  const demoLogin = app.dataset.demoLogin === 'true';

  let source = null;
  /** The channels the stream is on, as the server confirmed them. */
  let channels = [];
  /** The id of the newest event received: where a reconnect resumes from. */
  let lastEventId = '';
  /** Ids already shown, so a replay after joining never shows one twice. */
  const seenIds = new Set();
  const watched = new Set();
  let received = 0;
  /** The open stream's id, for refreshing its token in place. */
  let clientId = '';
  /** Times the stream's token was refreshed in place. */
  let refreshes = 0;

  function setState(state) {
    const badge = $('state');
    badge.textContent = state;
    badge.dataset.state = state;
    $('reconnect').hidden = state !== 'closed';
  }

  /** Opens (or reopens) the stream with the current channels, resuming after lastEventId. */
  function connect() {
    if (source) source.close();
    const params = new URLSearchParams();
    if (channels.length > 0) params.set('channels', channels.join(','));
    // A new EventSource starts without a Last-Event-ID; the query parameter
    // carries the resume point across the switch instead.
    if (lastEventId) params.set('last_event_id', lastEventId);
    const query = params.toString();
    const stream = new EventSource('/api/events' + (query ? '?' + query : ''), {
      withCredentials: true,
    });
    source = stream;
    setState('connecting');
    $('expired').hidden = true;

    // A closed stream fires nothing, but guard anyway: only the current one may update the page.
    const current = (handler) => (event) => {
      if (stream === source) handler(event);
    };
    stream.addEventListener('open', current(() => setState('open')));
    stream.addEventListener('error', current(() => {
      // CONNECTING means the browser is retrying by itself (after `retry:`);
      // CLOSED means it gave up, as it does on an error status such as 401.
      setState(stream.readyState === EventSource.CLOSED ? 'closed' : 'reconnecting');
    }));
    stream.addEventListener('connected', current(onConnected));
    stream.addEventListener('token-expired', current(onTokenExpired));
    stream.addEventListener('token-expiring', current(onTokenExpiring));
    for (const name of watched) stream.addEventListener(name, current(onEvent));
  }

  function onConnected(event) {
    const info = JSON.parse(event.data);
    channels = info.channels;
    clientId = info.client_id;
    $('stream-user').textContent = info.user;
    $('stream-client-id').textContent = info.client_id;
    $('stream-channels').textContent = info.channels.length > 0 ? info.channels.join(', ') : 'none';
    $('stream-replayed').textContent = String(info.replayed);
    $('missed').hidden = info.recovered;
    setState('open');
  }

  /**
   * The token expires soon: sign in again in the background (the demo's own
   * way to mint a fresh token into the cookie), then hand the fresh token to
   * the open stream, which carries on without reconnecting.
   */
  async function onTokenExpiring(event) {
    const { expires_at: expiresAt } = JSON.parse(event.data);
    const until = new Date(expiresAt * 1000).toLocaleString();
    if (!demoLogin) {
      // The token came from elsewhere: only its owner can get a fresh one.
      $('token-expiry').textContent = `${until} (expiring soon)`;
      return;
    }
    $('token-expiry').textContent = `${until} (refreshing…)`;
    try {
      const form = new URLSearchParams({ user: app.dataset.user });
      if (admin) form.set('admin', 'on');
      await fetch('/demo/login', {
        method: 'POST',
        credentials: 'same-origin',
        redirect: 'manual',
        body: form,
      });
      const response = await fetch(`/api/streams/${encodeURIComponent(clientId)}/token`, {
        method: 'POST',
        credentials: 'same-origin',
      });
      if (!response.ok) throw new Error(`${response.status} ${response.statusText}`);
      refreshes += 1;
      $('token-refreshes').textContent = String(refreshes);
      $('token-expiry').textContent = 'refreshed';
    } catch (error) {
      $('token-expiry').textContent = `${new Date(expiresAt * 1000).toLocaleString()} (refresh failed: ${error.message})`;
    }
  }

  function onTokenExpired() {
    // Reconnecting with the same cookie would only be refused.
    source.close();
    setState('closed');
    $('expired').hidden = false;
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
          type: item.event,
          lastEventId: item.id,
          data: JSON.stringify(item.data),
          time: new Date(item.published_at),
          fromHistory: true,
        });
      }
    } catch {
      // Without the list the page still works: the stream opens all the same.
    }
  }

  function onEvent(event) {
    if (event.lastEventId) {
      if (seenIds.has(event.lastEventId)) return;
      seenIds.add(event.lastEventId);
      lastEventId = event.lastEventId;
    }
    received += 1;
    $('event-count').textContent = String(received);
    $('no-events').hidden = true;

    const item = document.createElement('li');
    item.className = 'event';
    item.dataset.name = event.type;
    item.dataset.id = event.lastEventId;
    if (event.fromHistory) item.classList.add('event-earlier');
    const head = document.createElement('div');
    head.className = 'event-head';
    head.append(
      element('span', 'event-name', event.type),
      element('code', 'event-id', event.lastEventId || '(no id)'),
      element('time', 'event-time', clock(event.time || new Date())),
    );
    item.append(head, element('pre', 'event-data', pretty(event.data)));
    const list = $('events');
    list.prepend(item);
    while (list.children.length > MAX_EVENTS_SHOWN) list.lastElementChild.remove();
  }

  /** Listens for `name` on the current stream and every later one. */
  function watch(name) {
    if (watched.has(name)) return;
    watched.add(name);
    if (source) {
      const stream = source;
      stream.addEventListener(name, (event) => {
        if (stream === source) onEvent(event);
      });
    }
    $('watched').append(element('li', 'chip', name));
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

  $('watch-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const { list, bad } = names($('watch-name').value, EVENT_NAME);
    if (bad !== undefined) {
      showError('watch-error', `"${bad}" is not an event name (1-64 of A-Z a-z 0-9 _ . : -).`);
      return;
    }
    showError('watch-error', '');
    list.forEach(watch);
    $('watch-name').value = '';
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
      // Otherwise the event would arrive unseen: EventSource needs a listener per name.
      if (EVENT_NAME.test(name)) watch(name);
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

  DEFAULT_EVENT_NAMES.forEach(watch);
  loadRecent().then(connect);
})();
