import type { HeraldEvent, HeraldOptions, HeraldStatus } from './herald.js';

export interface HeraldItem extends HeraldEvent {
  /** `data` parsed as JSON, or the raw string. */
  parsed: unknown;
}

export interface UseHeraldOptions extends HeraldOptions {
  /** Keep only events with these names. */
  types?: string[];
  /** How many events to keep (newest). Default 50. */
  limit?: number;
}

export interface UseHeraldState {
  status: HeraldStatus;
  closedReason: string | null;
  events: HeraldItem[];
  last: HeraldItem | null;
}

export function useHerald(options?: UseHeraldOptions): UseHeraldState;
