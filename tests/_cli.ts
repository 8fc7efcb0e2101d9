/**
 * Runs a deno task's command in a subprocess, with exactly the permissions the
 * task declares in deno.json, so tests exercise what users run.
 *
 * @module
 */

const ROOT = new URL("../", import.meta.url);

/** The project root folder. */
export const ROOT_DIR = decodeURIComponent(ROOT.pathname).replace(/\/$/, "");

/** What a finished command printed and returned. */
export interface CliResult {
  /** Exit code. */
  code: number;
  /** Standard output. */
  stdout: string;
  /** Standard error. */
  stderr: string;
}

/** The argument list of a deno.json task (without the leading `deno`). */
export async function taskArgs(task: string): Promise<string[]> {
  const config = JSON.parse(await Deno.readTextFile(new URL("deno.json", ROOT)));
  const command: string | undefined = config.tasks?.[task];
  if (command === undefined) throw new Error(`no task "${task}" in deno.json`);
  const parts = command.split(/\s+/);
  if (parts[0] !== "deno") throw new Error(`task "${task}" does not start with deno`);
  return parts.slice(1);
}

/** Options of {@link runTask} and {@link spawnTask}. */
export interface TaskOptions {
  /** Working folder (default the project root). */
  cwd?: string;
  /** Extra environment variables. */
  env?: Record<string, string>;
}

/** The `deno` arguments that run a task's command with `args` appended. */
async function commandArgs(task: string, args: string[]): Promise<string[]> {
  const base = await taskArgs(task);
  // Script paths in tasks are relative to the project root.
  const resolved = base.map((a) => /^(cli|bench)\/.*\.ts$/.test(a) ? `${ROOT_DIR}/${a}` : a);
  return [...resolved, ...args];
}

/** Starts `deno task <task> ...args` as a subprocess with piped output, without waiting. */
export async function spawnTask(
  task: string,
  args: string[],
  options: TaskOptions = {},
): Promise<Deno.ChildProcess> {
  return new Deno.Command(Deno.execPath(), {
    args: await commandArgs(task, args),
    cwd: options.cwd ?? ROOT_DIR,
    env: { NO_COLOR: "1", ...(options.env ?? {}) },
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
}

/** Runs `deno task <task> ...args` as a subprocess (from `cwd`, default the project root). */
export async function runTask(
  task: string,
  args: string[],
  options: TaskOptions = {},
): Promise<CliResult> {
  const output = await (await spawnTask(task, args, options)).output();
  const decoder = new TextDecoder();
  return {
    code: output.code,
    stdout: decoder.decode(output.stdout),
    stderr: decoder.decode(output.stderr),
  };
}

/** True when the text looks like a JavaScript stack trace. */
export function hasStackTrace(text: string): boolean {
  return /^\s+at .+[:(].*\d+:\d+\)?$/m.test(text);
}
