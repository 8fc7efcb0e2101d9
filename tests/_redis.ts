/**
 * A throwaway `redis-server` for the queue tests: on 127.0.0.1, a free port, a temporary
 * folder, no persistence (`--save "" --appendonly no`), stopped (and restartable, losing its
 * data like a crashed server) by the test. Tests skip with a visible message when Debian's
 * `redis-server` is not installed.
 *
 * @module
 */

/** A running test server. */
export interface TestRedis {
  /** Its port on 127.0.0.1. */
  port: number;
  /** `redis://127.0.0.1:<port>/0`. */
  url: string;
  /** Stops the server (SIGKILL, like a crash). */
  stop(): Promise<void>;
  /** Starts it again on the same port, empty. */
  start(): Promise<void>;
  /** Stops it for good and removes its folder. */
  close(): Promise<void>;
}

/** Whether `redis-server` can be started here. */
export async function haveRedis(): Promise<boolean> {
  try {
    const out = await new Deno.Command("redis-server", { args: ["--version"] }).output();
    return out.success;
  } catch {
    return false;
  }
}

/** Says why a test is skipped, visibly, and returns true when it must be. */
export async function skipWithoutRedis(test: string): Promise<boolean> {
  if (await haveRedis()) return false;
  console.warn(`SKIPPED ${test}: redis-server is not installed (apt-get install redis-server)`);
  return true;
}

function freePort(): number {
  const listener = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const port = (listener.addr as Deno.NetAddr).port;
  listener.close();
  return port;
}

/** Starts a server; `options.password` sets `requirepass`. */
export async function startRedis(options: { password?: string } = {}): Promise<TestRedis> {
  const port = freePort();
  const dir = await Deno.makeTempDir({ prefix: "redis-test-" });
  let child: Deno.ChildProcess | undefined;
  const start = async () => {
    const args = [
      "--port",
      String(port),
      "--bind",
      "127.0.0.1",
      "--save",
      "",
      "--appendonly",
      "no",
      "--dir",
      dir,
      ...(options.password ? ["--requirepass", options.password] : []),
    ];
    child = new Deno.Command("redis-server", { args, stdout: "null", stderr: "null" }).spawn();
    for (let i = 0; i < 100; i++) {
      try {
        const conn = await Deno.connect({ hostname: "127.0.0.1", port });
        conn.close();
        return;
      } catch {
        await new Promise((done) => setTimeout(done, 50));
      }
    }
    throw new Error(`redis-server did not start on port ${port}`);
  };
  const stop = async () => {
    if (child === undefined) return;
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
    await child.status;
    child = undefined;
  };
  await start();
  return {
    port,
    url: `redis://127.0.0.1:${port}/0`,
    start,
    stop,
    close: async () => {
      await stop();
      await Deno.remove(dir, { recursive: true }).catch(() => {});
    },
  };
}
