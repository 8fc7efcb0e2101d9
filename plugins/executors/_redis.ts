/**
 * Connections to the queue's Redis (ioredis, as BullMQ needs them).
 *
 * @module
 */

import { Redis } from "ioredis";

/**
 * A new connection to the queue (ioredis, as BullMQ needs it: no per-command retry limit, so
 * blocking commands survive a reconnect). TLS for `rediss://`.
 */
export function connect(url: string, options: { lazy?: boolean } = {}): Redis {
  const redis = new Redis(url, {
    maxRetriesPerRequest: null,
    lazyConnect: options.lazy ?? false,
    // Reconnect quickly while the server restarts, then back off to one try a second.
    retryStrategy: (times: number) => Math.min(50 * times, 1000),
  });
  // Connection errors surface as failed commands (the executor retries them, then reports
  // the queue unreachable); without a listener ioredis would print each with a stack trace.
  redis.on("error", () => {});
  return redis;
}
