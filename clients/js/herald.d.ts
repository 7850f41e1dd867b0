// Types for herald-client.

export type HeraldStatus = 'connecting' | 'open' | 'reconnecting' | 'closed';

/** One server-sent event. `id` is the last event ID at dispatch (as MessageEvent.lastEventId). */
export interface HeraldEvent {
  id: string;
  event: string;
  data: string;
}

/** Data of the `connected` event that opens every stream. */
export interface HeraldConnected {
  client_id: string;
  user: string;
  channels: string[];
  replayed: number;
  recovered: boolean;
}

export interface HeraldOptions {
  /** Stream endpoint. Default `/api/events`. */
  url?: string;
  /** Channels to subscribe to, sent as `channels=a,b`. Default `[]`. */
  channels?: string[];
  /** Returns a bearer token. Without it the cookie is used (credentials: 'include'). */
  getToken?: () => string | Promise<string>;
  /**
   * Cookie mode only: has the app's back end set a fresh token cookie (for
   * example by calling its own session endpoint). On `token-expiring` the
   * client calls it, then refreshes the open stream in place with the new cookie.
   */
  renewCookie?: () => unknown | Promise<unknown>;
  /** One stream per browser, shared by its tabs (needs Web Locks and BroadcastChannel). Default true. */
  share?: boolean;
  /** Resume from this id on the first connection. */
  lastEventId?: string;
}

export type Unsubscribe = () => void;

export interface Herald {
  /** Listen to events of one type; `data` is the parsed JSON, or the raw string when it does not parse. */
  on<T = unknown>(type: string, listener: (data: T, event: HeraldEvent) => void): Unsubscribe;
  onAny(listener: (event: HeraldEvent) => void): Unsubscribe;
  /** `reason` is given with 'closed'. */
  onStatus(listener: (status: HeraldStatus, reason?: string) => void): Unsubscribe;
  /** A resume was answered with `recovered: false`: some events were missed. */
  onGap(listener: () => void): Unsubscribe;
  /** The stream's token was refreshed in place (after `token-expiring`). */
  onRefresh(listener: () => void): Unsubscribe;
  /** 'leader': this tab holds the shared stream; 'follower': another tab does; 'alone': no sharing. */
  readonly role: 'leader' | 'follower' | 'alone';
  close(): void;
  readonly status: HeraldStatus;
  /** Why the client closed for good: 'unauthorized', 'revoked', 'http 403', 'closed by client', ... */
  readonly closedReason: string | null;
  readonly lastEventId: string;
}

export function connect(options?: HeraldOptions): Herald;

export interface HeraldParser {
  feed(text: string): void;
  readonly lastEventId: string;
}

/** The event-stream parser (exported for tests). `hasOwnId` tells whether the event's block had an `id` field. */
export function createParser(
  onEvent: (event: HeraldEvent, hasOwnId: boolean) => void,
  options?: { onRetry?: (ms: number) => void; lastEventId?: string },
): HeraldParser;
