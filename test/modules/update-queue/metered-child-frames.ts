import { resultFrame } from "./helpers";

/** meteredMaxUploadBytes of the metered SIGKILL test (properties.test.ts, metered-child.ts). */
export const METERED_CHILD_LIMIT = 100_000;

/** Its two updates: one larger than the limit (~400 KB, deferred), one smaller (~4 KB, sent). */
export function meteredChildFrames(): {
  big: ReturnType<typeof resultFrame>;
  small: ReturnType<typeof resultFrame>;
} {
  return {
    big: resultFrame({ floats: 100_000, round: 1, seed: 7 }),
    small: resultFrame({ floats: 1000, round: 2, seed: 8 }),
  };
}
