// React binding for herald-client. React is a peer dependency.
import { useEffect, useRef, useState } from 'react';
import { connect } from './herald.js';

/**
 * useHerald({url, channels, getToken, share, types, limit}) →
 * {status, closedReason, events, last}
 * events: the newest `limit` events (default 50), oldest first; `types`
 * restricts them to those event names. Reconnects when url/channels change,
 * closes on unmount.
 */
export function useHerald(options = {}) {
  const { url, channels = [], share, types, limit = 50 } = options;
  const [state, setState] = useState({ status: 'connecting', closedReason: null, events: [], last: null });
  const getTokenRef = useRef(options.getToken);
  getTokenRef.current = options.getToken;
  const channelKey = channels.join(',');
  const typeKey = types ? types.join(',') : '';

  useEffect(() => {
    const getToken = getTokenRef.current ? () => getTokenRef.current() : undefined;
    const herald = connect({ url, channels: channelKey ? channelKey.split(',') : [], share, getToken });
    const wanted = typeKey ? new Set(typeKey.split(',')) : null;
    setState({ status: herald.status, closedReason: null, events: [], last: null });
    herald.onStatus((status, reason) =>
      setState((s) => ({ ...s, status, closedReason: reason ?? s.closedReason })),
    );
    herald.onAny((event) => {
      if (wanted && !wanted.has(event.event)) return;
      let data = event.data;
      try {
        data = JSON.parse(data);
      } catch {}
      const item = { ...event, parsed: data };
      setState((s) => ({ ...s, events: [...s.events, item].slice(-limit), last: item }));
    });
    return () => herald.close();
  }, [url, channelKey, share, typeKey, limit, Boolean(options.getToken)]);

  return state;
}
