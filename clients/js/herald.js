// Herald browser client: a Server-Sent Events reader built on fetch, with
// token refresh, resume by Last-Event-ID and one shared stream per browser.
// ES module, no dependencies. Works in modern browsers and Node 20.

const DEFAULT_RETRY = 5000;
const MAX_DELAY = 60000;
const JITTER = 0.2;
const SEEN_IDS = 1000;

/**
 * An event-stream parser following the WHATWG rules.
 * feed(text) takes decoded text in chunks of any size; onEvent(event, hasOwnId)
 * gets {id, event, data} where id is the last event ID at dispatch (as
 * MessageEvent.lastEventId) and hasOwnId tells whether this event's block had
 * an `id` field of its own.
 */
export function createParser(onEvent, { onRetry, lastEventId = '' } = {}) {
  let started = false; // BOM check done
  let pending = ''; // text of an unfinished line
  let afterCR = false; // the last chunk ended with CR: a leading LF is part of it
  let data = '';
  let type = '';
  let idBuffer = lastEventId;
  let ownId = false;

  const parser = {
    lastEventId,
    feed(text) {
      if (!text) return;
      if (afterCR) {
        afterCR = false;
        if (text[0] === '\n') text = text.slice(1);
      }
      if (!started && (pending + text).length > 0) {
        started = true;
        if (pending === '' && text[0] === '\uFEFF') text = text.slice(1);
      }
      let buf = pending + text;
      let start = 0;
      const re = /\r\n|\r|\n/g;
      let m;
      while ((m = re.exec(buf)) !== null) {
        line(buf.slice(start, m.index));
        start = re.lastIndex;
        if (m[0] === '\r' && start === buf.length) afterCR = true;
      }
      pending = buf.slice(start);
    },
  };

  function line(l) {
    if (l === '') return dispatch();
    if (l[0] === ':') return;
    const colon = l.indexOf(':');
    let field, value;
    if (colon === -1) {
      field = l;
      value = '';
    } else {
      field = l.slice(0, colon);
      value = l.slice(colon + 1);
      if (value[0] === ' ') value = value.slice(1);
    }
    switch (field) {
      case 'event':
        type = value;
        break;
      case 'data':
        data += value + '\n';
        break;
      case 'id':
        if (!value.includes('\0')) {
          idBuffer = value;
          ownId = true;
        }
        break;
      case 'retry':
        if (/^[0-9]+$/.test(value) && onRetry) onRetry(parseInt(value, 10));
        break;
      default:
        break;
    }
  }

  function dispatch() {
    parser.lastEventId = idBuffer;
    const hadId = ownId;
    ownId = false;
    if (data === '') {
      type = '';
      return;
    }
    const event = { id: idBuffer, event: type || 'message', data: data.slice(0, -1) };
    data = '';
    type = '';
    onEvent(event, hadId);
  }

  return parser;
}

function parseData(raw) {
  try {
    return JSON.parse(raw);
  } catch {
    return raw;
  }
}

function originOf(url, base) {
  try {
    return new URL(url, base).origin;
  } catch {
    return ''; // relative url without a base: same origin as the page
  }
}

/**
 * The core: one stream with reconnection. Everything it touches is injectable.
 * options: url, channels, getToken, lastEventId, fetch, setTimeout,
 * clearTimeout, random, base, renewCookie, onEvent(event, hasOwnId, lastEventId),
 * onStatus(status, reason), onGap(), onRefresh().
 */
export function createStream(options) {
  const {
    url = '/api/events',
    channels = [],
    getToken,
    renewCookie,
    onEvent = () => {},
    onStatus = () => {},
    onGap = () => {},
    onRefresh = () => {},
  } = options;
  const doFetch = options.fetch || ((...a) => globalThis.fetch(...a));
  const setT = options.setTimeout || ((...a) => globalThis.setTimeout(...a));
  const clearT = options.clearTimeout || ((...a) => globalThis.clearTimeout(...a));
  const random = options.random || Math.random;
  const base = options.base ?? globalThis.location?.href;

  let lastEventId = options.lastEventId || '';
  let retryMs = DEFAULT_RETRY;
  let failures = 0;
  let closed = false;
  let status = null;
  let clientId = null;
  let nextToken = null; // a token already fetched for the next connection
  let abort = null; // AbortController of the current fetch
  let reader = null;
  let restartNow = false;
  let wake = null; // resolves the current wait
  let timer = null;

  const stream = {
    closedReason: null,
    get status() {
      return status;
    },
    get lastEventId() {
      return lastEventId;
    },
    close() {
      finish('closed by client');
    },
  };

  function setStatus(s, reason) {
    if (s === status && s !== 'closed') return;
    status = s;
    onStatus(s, reason);
  }

  function cancelCurrent() {
    try {
      abort?.abort();
    } catch {}
    reader?.cancel().catch(() => {});
  }

  function finish(reason) {
    if (closed) return;
    closed = true;
    stream.closedReason = reason;
    cancelCurrent();
    if (timer !== null) clearT(timer);
    wake?.();
    setStatus('closed', reason);
  }

  function restart() {
    restartNow = true;
    cancelCurrent();
  }

  function sleep(ms) {
    return new Promise((resolve) => {
      wake = resolve;
      timer = setT(() => {
        timer = null;
        resolve();
      }, ms);
    }).then(() => {
      wake = null;
    });
  }

  function delay() {
    const n = Math.max(1, failures);
    const d = retryMs * 2 ** (n - 1) * (1 - JITTER + 2 * JITTER * random());
    return Math.min(MAX_DELAY, Math.round(d));
  }

  async function backOff() {
    failures++;
    setStatus('reconnecting');
    await sleep(delay());
  }

  function streamUrl() {
    if (!channels.length) return url;
    return (
      url + (url.includes('?') ? '&' : '?') + 'channels=' + channels.map(encodeURIComponent).join(',')
    );
  }

  /**
   * Hands the stream a fresh token in place (POST /api/streams/{id}/token):
   * from getToken in the Authorization header, or, in cookie mode, the cookie
   * that renewCookie() had the app's back end set. If that fails, reconnects
   * with the fresh credentials from the last id, so nothing is missed.
   */
  async function refreshToken() {
    let token = null;
    try {
      const init = { method: 'POST', credentials: getToken ? 'same-origin' : 'include' };
      if (getToken) {
        token = await getToken();
        init.headers = { Authorization: 'Bearer ' + token };
      } else {
        await renewCookie();
      }
      if (closed) return;
      const res = await doFetch(
        originOf(url, base) + '/api/streams/' + encodeURIComponent(clientId) + '/token',
        init,
      );
      if (res.ok) {
        onRefresh();
        return;
      }
    } catch {}
    if (closed) return;
    if (token) nextToken = token;
    restart();
  }

  function handle(event, hasOwnId) {
    if (closed) return;
    lastEventId = parser.lastEventId;
    if (event.event === 'connected') {
      const info = parseData(event.data);
      clientId = info && info.client_id;
      failures = 0;
      authRetried = false;
      setStatus('open');
      if (resuming && info && info.recovered === false) onGap();
    }
    onEvent(event, hasOwnId, lastEventId);
    if (closed) return;
    if (event.event === 'token-expiring') {
      if ((getToken || renewCookie) && clientId) refreshToken();
    } else if (event.event === 'token-expired') {
      if (getToken || renewCookie) restart();
    } else if (event.event === 'revoked') {
      finish('revoked');
    }
  }

  let authRetried = false;
  let resuming = false;
  let parser = null;

  async function run() {
    setStatus('connecting');
    while (!closed) {
      restartNow = false;
      let token = null;
      if (getToken) {
        try {
          token = nextToken || (await getToken());
          nextToken = null;
        } catch {
          if (closed) return;
          await backOff();
          continue;
        }
        if (closed) return;
      }
      resuming = lastEventId !== '';
      const headers = { Accept: 'text/event-stream' };
      if (token) headers.Authorization = 'Bearer ' + token;
      if (resuming) headers['Last-Event-ID'] = lastEventId;
      abort = typeof AbortController === 'function' ? new AbortController() : null;
      let res;
      try {
        res = await doFetch(streamUrl(), {
          headers,
          credentials: getToken ? 'same-origin' : 'include',
          cache: 'no-store',
          signal: abort?.signal,
        });
      } catch {
        if (closed) return;
        if (restartNow) continue;
        await backOff();
        continue;
      }
      if (closed) {
        res.body?.cancel?.().catch(() => {});
        return;
      }
      if (!res.ok) {
        res.body?.cancel?.().catch(() => {});
        if (res.status === 401) {
          if (getToken && !authRetried) {
            authRetried = true;
            continue;
          }
          return finish('unauthorized');
        }
        if (res.status === 429 || res.status === 408 || res.status >= 500) {
          await backOff();
          continue;
        }
        return finish('http ' + res.status);
      }

      parser = createParser(handle, {
        lastEventId,
        onRetry: (ms) => {
          retryMs = ms;
        },
      });
      const decoder = new TextDecoder('utf-8', { ignoreBOM: true });
      reader = res.body.getReader();
      try {
        for (;;) {
          const { done, value } = await reader.read();
          if (done || closed) break;
          parser.feed(decoder.decode(value, { stream: true }));
          lastEventId = parser.lastEventId;
        }
      } catch {
        // network error or abort: handled below
      }
      reader = null;
      if (closed) return;
      if (restartNow) {
        setStatus('reconnecting');
        continue;
      }
      await backOff();
    }
  }

  Promise.resolve().then(run);
  return stream;
}

/**
 * Connects to Herald. See herald.d.ts for the options and the returned object.
 * Besides the documented options, fetch, setTimeout, clearTimeout, random,
 * locks and BroadcastChannel can be injected (for tests).
 */
export function connect(options = {}) {
  const url = options.url || '/api/events';
  const channels = options.channels || [];
  const share = options.share !== false;
  const locks = 'locks' in options ? options.locks : globalThis.navigator?.locks;
  const BC = 'BroadcastChannel' in options ? options.BroadcastChannel : globalThis.BroadcastChannel;
  const key = 'herald:' + url + '?' + channels.join(',');

  const byType = new Map();
  const anyListeners = new Set();
  const statusListeners = new Set();
  const gapListeners = new Set();
  const refreshListeners = new Set();
  const seen = new Set();
  const seenOrder = [];
  let lastEventId = options.lastEventId || '';
  let status = 'connecting';
  let closed = false;
  let stream = null;
  let channel = null;
  let releaseLock = null;
  let lockAbort = null;
  let role = 'alone';

  const herald = {
    closedReason: null,
    get status() {
      return status;
    },
    get lastEventId() {
      return lastEventId;
    },
    /** 'leader' (holds the shared stream), 'follower' (hears it from the leader) or 'alone'. */
    get role() {
      return role;
    },
    on(type, fn) {
      if (!byType.has(type)) byType.set(type, new Set());
      byType.get(type).add(fn);
      return () => byType.get(type).delete(fn);
    },
    onAny(fn) {
      anyListeners.add(fn);
      return () => anyListeners.delete(fn);
    },
    onStatus(fn) {
      statusListeners.add(fn);
      return () => statusListeners.delete(fn);
    },
    onGap(fn) {
      gapListeners.add(fn);
      return () => gapListeners.delete(fn);
    },
    onRefresh(fn) {
      refreshListeners.add(fn);
      return () => refreshListeners.delete(fn);
    },
    close() {
      if (closed) return;
      shutdown('closed by client');
    },
  };

  function call(fn, ...args) {
    try {
      fn(...args);
    } catch (e) {
      setTimeout(() => {
        throw e;
      });
    }
  }

  function setStatus(s, reason) {
    if (closed) return;
    if (s === status && s !== 'closed') return;
    status = s;
    if (s === 'closed') herald.closedReason = reason;
    for (const fn of [...statusListeners]) call(fn, s, reason);
  }

  function deliver(event, hasOwnId, lastId) {
    if (closed) return;
    if (lastId !== undefined) lastEventId = lastId;
    if (hasOwnId && event.id !== '') {
      if (seen.has(event.id)) return;
      seen.add(event.id);
      seenOrder.push(event.id);
      if (seenOrder.length > SEEN_IDS) seen.delete(seenOrder.shift());
    }
    const data = parseData(event.data);
    for (const fn of [...(byType.get(event.event) || [])]) call(fn, data, event);
    for (const fn of [...anyListeners]) call(fn, event);
  }

  function gap() {
    if (closed) return;
    for (const fn of [...gapListeners]) call(fn);
  }

  function refreshed() {
    if (closed) return;
    for (const fn of [...refreshListeners]) call(fn);
  }

  function shutdown(reason) {
    setStatus('closed', reason);
    closed = true;
    stream?.close();
    stream = null;
    lockAbort?.abort();
    // Let messages already posted (such as the final status) go out first.
    // After a terminal close (revoked, unauthorized) the leader also keeps the
    // lock until then, so no follower takes over before it has heard of it.
    const ch = channel;
    const release = releaseLock;
    if (reason === 'closed by client') release?.();
    if (ch)
      globalThis.setTimeout(() => {
        release?.();
        try {
          ch.close();
        } catch {}
      }, 50);
    else release?.();
  }

  function open(relay) {
    stream = createStream({
      ...options,
      url,
      channels,
      lastEventId,
      onEvent(event, hasOwnId, lastId) {
        relay?.({ type: 'event', event, hasOwnId, lastEventId: lastId });
        deliver(event, hasOwnId, lastId);
      },
      onStatus(s, reason) {
        if (closed) return;
        relay?.({ type: 'status', status: s, reason, lastEventId });
        if (s === 'closed') shutdown(reason);
        else setStatus(s, reason);
      },
      onGap() {
        relay?.({ type: 'gap' });
        gap();
      },
      onRefresh() {
        relay?.({ type: 'refresh' });
        refreshed();
      },
    });
  }

  if (share && locks && typeof locks.request === 'function' && typeof BC === 'function') {
    channel = new BC(key);
    role = 'follower';
    let leader = false;
    const post = (m) => {
      try {
        channel.postMessage(m);
      } catch {}
    };
    channel.onmessage = ({ data: m }) => {
      if (closed || !m) return;
      if (m.type === 'hello') {
        if (leader && stream) post({ type: 'status', status, lastEventId });
        return;
      }
      if (leader) return;
      if (m.lastEventId !== undefined) lastEventId = m.lastEventId;
      if (m.type === 'event') deliver(m.event, m.hasOwnId, m.lastEventId);
      else if (m.type === 'gap') gap();
      else if (m.type === 'refresh') refreshed();
      else if (m.type === 'status') {
        if (m.status === 'closed') shutdown(m.reason);
        else setStatus(m.status, m.reason);
      }
    };
    lockAbort = typeof AbortController === 'function' ? new AbortController() : null;
    locks
      .request(key, lockAbort ? { signal: lockAbort.signal } : {}, () => {
        if (closed) return;
        leader = true;
        role = 'leader';
        open(post);
        return new Promise((resolve) => {
          releaseLock = resolve;
        });
      })
      .catch(() => {});
    post({ type: 'hello' });
  } else {
    open(null);
  }

  return herald;
}
