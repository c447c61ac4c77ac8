import { resultFrame } from "./helpers";

/** The i-th update of the crash test: sizes cycle from 40 KB to ~1.2 MB so kills land inside big writes. */
export function crashFrame(i: number): ReturnType<typeof resultFrame> {
  return resultFrame({
    jobId: "crash",
    round: i,
    deviceId: "dev-crash",
    floats: 10_000 + (i % 4) * 100_000,
    seed: i,
  });
}
