// Many SSE streams on ONE HTTP/2 connection: every stream gets every event
// once and in order, heartbeats arrive, a resume replays what it missed, and
// the server's shutdown drain ends every stream. Publishing goes over the
// same connection.
//
// Input: {url, ca, admin, tokens: [one per stream], channel, events, resumeToken, timeoutMs}
// Prints {"ready": ...} once everything but the drain is checked, then waits
// for the test to stop the server, then prints {"summary": ...}.

import { input, report, fail, until, connect, openStream, named, request } from './h2.mjs';

try {
  const session = await connect();
  const path = `/api/events?channel=${input.channel}`;
  const bearer = (token) => ({ authorization: `Bearer ${token}` });
  const opened = Date.now();
  const streams = input.tokens.map((token) => openStream(session, path, bearer(token)));
  await until('every stream to be connected', () =>
    streams.every((s) => s.events.some((e) => e.event === 'connected')),
  );
  const connectedMs = Date.now() - opened;

  // One request per event, each awaited, so their order is the publish order.
  const published = [];
  for (let n = 0; n < input.events; n += 1) {
    const answer = await request(session, 'POST', '/api/send', input.admin, {
      channel: input.channel,
      event: 'tick',
      data: { n },
    });
    published.push({ status: answer.status, id: answer.json && answer.json.id });
  }
  await until('every stream to receive every event', () =>
    streams.every((s) => named(s, 'tick').length >= input.events),
  );

  // Resume after the middle event: the rest is replayed.
  const middle = Math.floor(input.events / 2);
  const resumed = openStream(session, path, {
    ...bearer(input.resumeToken),
    'last-event-id': published[middle].id,
  });
  await until('the resumed stream to catch up', () => named(resumed, 'tick').length >= input.events - middle - 1);

  const all = [...streams, resumed];
  await until('a heartbeat on every stream', () => all.every((s) => s.comments >= 1));
  report({ ready: { connectedMs, streams: streams.length } });

  // The test now stops the server: the drain must end every stream.
  await until('the drain to end every stream', () => all.every((s) => s.ended || s.closed));
  const inOrderOnce = streams.filter((s) => {
    const ticks = named(s, 'tick');
    return ticks.length === input.events && ticks.every((t, i) => t.n === i && t.id === published[i].id);
  }).length;
  report({
    summary: {
      alpn: session.alpnProtocol,
      streams: streams.length,
      connected: streams.filter((s) => s.status === 200).length,
      connectedMs,
      publishStatuses: [...new Set(published.map((p) => p.status))],
      inOrderOnce,
      resumed: named(resumed, 'tick').map((t) => t.n),
      heartbeatsMin: Math.min(...all.map((s) => s.comments)),
      endedCleanly: all.filter((s) => s.ended).length,
      // When each stream ended (ms since the Unix epoch; null if it did not
      // end cleanly), and how the others failed.
      endedAt: all.map((s) => s.endedAt),
      errors: all.filter((s) => s.error).map((s) => s.error),
    },
  });
  session.close();
} catch (e) {
  fail(e.stack || String(e));
}
