import type { Counter, Gauge } from "prom-client";
import type { ModuleMetrics } from "./metrics";

/**
 * The link metrics every module shares, kept by the module host (modules/shared/host.ts) in the module's registry
 * (so they carry the module's prefix: `flotilla_trainer_link_up`, `flotilla_update_queue_link_up`, ...).
 * docs/metrics.md lists them.
 */
export interface LinkMetrics {
  /** 1 while the module's link to edgeHub / the hub is up (twin read), else 0. */
  readonly linkUp: Gauge;
  /** Times the link came back after it had been up (the SDK's own reconnects and the host's alike). */
  readonly reconnects: Counter;
  /** Reported-property patches that went out (state and Plug and Play acknowledgements). */
  readonly reportedPatches: Counter;
  /** Direct method calls answered, by method and HTTP-like status. */
  readonly methodCalls: Counter<"method" | "status">;
}

export function linkMetrics(m: ModuleMetrics): LinkMetrics {
  return {
    linkUp: m.gauge("link_up", "1 while the module's link to edgeHub (or the hub) is up, else 0"),
    reconnects: m.counter("reconnects_total", "Times the module's link came back after it had been up"),
    reportedPatches: m.counter(
      "reported_patches_total",
      "Reported-property patches sent (state and Plug and Play acknowledgements)",
    ),
    methodCalls: m.counter("method_calls_total", "Direct method calls answered, by method and status", [
      "method",
      "status",
    ]),
  };
}
