// Fakes for the stream tests: a fetch whose responses the test drives, and timers.
export const flush = async (n = 5) => {
  for (let i = 0; i < n; i++) await new Promise((r) => setImmediate(r));
};

export function fakeTimers() {
  const pending = [];
  let nextId = 1;
  return {
    pending,
    setTimeout(fn, ms) {
      const t = { id: nextId++, fn, ms };
      pending.push(t);
      return t.id;
    },
    clearTimeout(id) {
      const i = pending.findIndex((t) => t.id === id);
      if (i >= 0) pending.splice(i, 1);
    },
    async runNext() {
      const t = pending.shift();
      if (!t) throw new Error('no timer pending');
      t.fn();
      await flush();
      return t.ms;
    },
  };
}

// fetch fake: each call gets a controllable response. `script` is a function
// (call) => {status} | undefined (200 with a controllable body) | Error (rejects).
export function fakeFetch(script = () => undefined) {
  const calls = [];
  const enc = new TextEncoder();
  async function fetch(url, init = {}) {
    const call = { url: String(url), init, headers: init.headers || {} };
    calls.push(call);
    const plan = script(call, calls.length - 1);
    if (plan instanceof Error) throw plan;
    if (plan && plan.status && plan.status !== 200) {
      return new Response(plan.body ?? null, { status: plan.status });
    }
    let ctrl;
    const body = new ReadableStream({
      start(c) {
        ctrl = c;
      },
    });
    call.push = (text) => ctrl.enqueue(enc.encode(text));
    call.end = () => ctrl.close();
    call.fail = () => ctrl.error(new Error('network'));
    call.cancelled = false;
    init.signal?.addEventListener('abort', () => {
      call.cancelled = true;
      try {
        ctrl.error(new DOMException('aborted', 'AbortError'));
      } catch {}
    });
    return new Response(body, { status: 200, headers: { 'content-type': 'text/event-stream' } });
  }
  fetch.calls = calls;
  return fetch;
}

export const connected = (extra = {}) =>
  `retry: 1000\nevent: connected\ndata: ${JSON.stringify({
    client_id: 'c1',
    user: 'u',
    channels: [],
    replayed: 0,
    recovered: true,
    ...extra,
  })}\n\n`;
