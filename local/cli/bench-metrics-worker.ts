/**
 * One arm of `flotilla bench metrics` in a fresh process (./bench-metrics.ts): what the metrics set up (prom-client's
 * process metrics keep an event-loop-delay monitor and a GC observer running once started) cannot reach the
 * arms measured after it. Receives an ArmSpec over IPC, answers `{ ok, run }` or `{ ok: false, error }`.
 */
import { runArm, type ArmSpec } from "./bench-metrics";

if (require.main === module) {
  process.on("disconnect", () => process.exit(0));
  process.once("message", (a: ArmSpec) => {
    runArm(a).then(
      (run) => process.send?.({ ok: true, run }),
      (e: unknown) => process.send?.({ ok: false, error: e instanceof Error ? e.message : String(e) }),
    );
  });
}
