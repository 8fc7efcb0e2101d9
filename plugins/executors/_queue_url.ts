/**
 * The queue's address: parsing and checking a `redis://` / `rediss://` URL, and the one form
 * in which it is ever printed (user and password replaced by `***`). Used by the `queue`
 * executor, the worker (`deno task worker`) and the launchers' sandboxes (which grant network
 * access to exactly the URL's host and port); it imports no Redis client, so the launchers
 * need no permission beyond their own.
 *
 * @module
 */

import { UserError } from "../../core/errors.ts";

/** A parsed queue URL. */
export interface QueueAddress {
  /** Host name or address. */
  host: string;
  /** TCP port (default 6379). */
  port: number;
  /** Redis database number (default 0). */
  db: number;
  /** `rediss://`: TLS. */
  tls: boolean;
  /** The URL with its user and password replaced by `***`: the only form ever printed. */
  redacted: string;
  /** The secrets in the URL (user, password), for {@link redact}. */
  secrets: string[];
}

/**
 * Parses and checks a queue URL, `redis://[user:password@]host[:port][/db]` or
 * `rediss://...` (TLS).
 *
 * @throws {UserError} naming what is wrong (never repeating the password).
 */
export function parseQueueUrl(url: string, where: string): QueueAddress {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new UserError(
      `${where}: not a URL; expected redis://[user:password@]host:port/db or rediss://...`,
    );
  }
  const secrets = [parsed.username, parsed.password]
    .filter((s) => s !== "")
    .flatMap((s) => [s, decodeURIComponent(s)]);
  const redacted = `${parsed.protocol}//${secrets.length > 0 ? "***@" : ""}${parsed.host}` +
    parsed.pathname;
  if (parsed.protocol !== "redis:" && parsed.protocol !== "rediss:") {
    throw new UserError(`${where}: ${redacted} must start with redis:// or rediss:// (TLS)`);
  }
  if (parsed.hostname === "") throw new UserError(`${where}: ${redacted} names no host`);
  const path = parsed.pathname.replace(/^\//, "");
  if (!/^\d{0,2}$/.test(path)) {
    throw new UserError(`${where}: ${redacted}: the path must be a database number (0-15)`);
  }
  if (parsed.search !== "" || parsed.hash !== "") {
    throw new UserError(`${where}: ${redacted}: query strings and fragments are not supported`);
  }
  return {
    host: parsed.hostname.replace(/^\[(.*)\]$/, "$1"),
    port: parsed.port === "" ? 6379 : Number(parsed.port),
    db: path === "" ? 0 : Number(path),
    tls: parsed.protocol === "rediss:",
    redacted,
    secrets,
  };
}

/** `host:port` of a queue URL, as Deno's `--allow-net` names it. */
export function netPermission(address: QueueAddress): string {
  const host = address.host.includes(":") ? `[${address.host}]` : address.host;
  return `${host}:${address.port}`;
}

/** `text` with every secret of `address` replaced by `***` (for any message that may hold one). */
export function redact(text: string, address: Pick<QueueAddress, "secrets">): string {
  let out = text;
  for (const secret of address.secrets) if (secret !== "") out = out.split(secret).join("***");
  return out;
}
