/**
 * The experiment folder's layout: the names of the files and folders the framework writes
 * in `<out>/<experiment>/` besides the run folders, so that the manifest's validation can
 * refuse a run whose folder would collide with one of them before anything trains.
 *
 * @module
 */

import { REPORT_FILES, SPLITS_FILE } from "./report/mod.ts";

export { SPLITS_FILE };

/** The shared tokenizer, trained once per experiment. */
export const TOKENIZER_FILE = "tokenizer.json";

/** Folder of what runs share: the BC policies (`bc/`, `bc_seed<k>/`) and trained rewards. */
export const SHARED_FOLDER = "shared";

/**
 * Where the time went (core/profile.ts): in each run folder for that run, and in the
 * experiment folder for the runs of the last `deno task exp` summed.
 */
export const PROFILE_FILE = "profile.json";

/** The experiment's lock file (taken by `acquireLock` in core/run.ts). */
export const LOCK_FILE = ".lock";

/**
 * Every name the framework gives an entry of the experiment folder: the tokenizer, the
 * shared folder, the lock, the record of the splits ({@link SPLITS_FILE}), the profile and the report's
 * tables and figures (core/report/). Files are
 * written atomically through a temporary sibling `<name>.tmp-<pid>-<id>`.
 */
export const EXPERIMENT_FOLDER_ENTRIES: readonly string[] = [
  TOKENIZER_FILE,
  SHARED_FOLDER,
  LOCK_FILE,
  SPLITS_FILE,
  PROFILE_FILE,
  ...Object.values(REPORT_FILES),
];

/** Most bytes (UTF-8) of one file or folder name on common file systems (ext4, APFS, NTFS). */
export const MAX_NAME_BYTES = 255;

/**
 * What is wrong with `name` as the name of a folder (an experiment or a run), or undefined:
 * empty, `.` or `..`, a path separator or NUL inside, or more than {@link MAX_NAME_BYTES}
 * bytes in UTF-8.
 */
export function folderNameProblem(name: string): string | undefined {
  if (name === "" || name === "." || name === "..") {
    return `${JSON.stringify(name)} cannot name a folder`;
  }
  if (/[/\\\0]/.test(name)) {
    return `must not contain "/", "\\" or NUL (it names a folder)`;
  }
  const bytes = new TextEncoder().encode(name).length;
  if (bytes > MAX_NAME_BYTES) {
    return `is ${bytes} bytes long as a folder name, more than the ${MAX_NAME_BYTES} a file ` +
      `system allows`;
  }
  return undefined;
}

/**
 * The entry of the experiment folder that a run folder called `name` would collide with
 * (letter case ignored, as on macOS and Windows), or undefined.
 */
export function reservedEntry(name: string): string | undefined {
  const lower = name.toLowerCase();
  return EXPERIMENT_FOLDER_ENTRIES.find((entry) => {
    const reserved = entry.toLowerCase();
    return lower === reserved || lower.startsWith(`${reserved}.tmp-`);
  });
}
