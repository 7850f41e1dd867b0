// Per-stream rules on ONE HTTP/2 connection: the per-user limit counts
// streams, and a stream that stops reading is ended by the slow-client rule
// alone while its neighbour on the same connection keeps receiving.
//
// Input: {url, ca, admin, token (one user's), windowBytes, eventBytes, maxEvents, timeoutMs}
// The server runs with MAX_CONNECTIONS_PER_USER=2 and a small CLIENT_BUFFER.
// Prints {"summary": ...}.

import { input, report, fail, until, connect, openStream, named, request } from './h2.mjs';

const bearer = { authorization: `Bearer ${input.token}` };
const connected = (s) => s.events.some((e) => e.event === 'connected');

try {
  // A small per-stream window, so a stream that stops reading stalls soon.
  const session = await connect({ settings: { initialWindowSize: input.windowBytes } });
  const reader = openStream(session, '/api/events', bearer);
  const stalled = openStream(session, '/api/events', bearer);
  await until('both streams to be connected', () => connected(reader) && connected(stalled));
  // From here on nothing reads this stream: its window fills and stays full.
  stalled.request.pause();
  const third = openStream(session, '/api/events', bearer);
  await until('the third stream to be answered', () => third.status !== null);

  const padding = 'x'.repeat(input.eventBytes);
  const stats = async () => (await request(session, 'GET', '/api/stats', input.admin)).json;
  let published = 0;
  let cut = false;
  while (!cut && published < input.maxEvents) {
    const answer = await request(session, 'POST', '/api/send', input.admin, {
      user: 'alice',
      event: 'tick',
      data: { n: published, padding },
    });
    if (answer.status !== 202) throw new Error(`publish answered ${answer.status}`);
    published += 1;
    // One at a time: the reading stream never falls behind.
    await until(`the reader to get event ${published - 1}`, () => named(reader, 'tick').length >= published);
    cut = (await stats()).slow_client_disconnects >= 1;
  }
  const afterCut = await stats();

  // The stalled stream no longer counts against the user's limit.
  const replacement = openStream(session, '/api/events', bearer);
  await until('the replacement stream to be answered', () => replacement.status !== null);
  await until('the replacement stream to be connected', () => connected(replacement));

  // Reading again, the stalled stream gets what was in flight, then its end.
  stalled.request.resume();
  await until('the stalled stream to end', () => stalled.ended || stalled.closed);

  const last = await request(session, 'POST', '/api/send', input.admin, {
    user: 'alice',
    event: 'tick',
    data: { n: published, padding: '' },
  });
  await until('the reader and the replacement to get the last event', () =>
    named(reader, 'tick').length > published && named(replacement, 'tick').length >= 1,
  );
  const ticks = (s) => named(s, 'tick').map((t) => t.n);
  report({
    summary: {
      alpn: session.alpnProtocol,
      thirdStatus: third.status,
      published,
      afterCut: {
        connections: afterCut.connections,
        slowClientDisconnects: afterCut.slow_client_disconnects,
      },
      replacementStatus: replacement.status,
      lastStatus: last.status,
      reader: { ticks: ticks(reader), ended: reader.ended || reader.closed },
      stalled: { ticks: ticks(stalled), ended: stalled.ended, closed: stalled.closed, error: stalled.error ?? null },
      replacement: { ticks: ticks(replacement) },
    },
  });
  session.close();
} catch (e) {
  fail(e.stack || String(e));
}
