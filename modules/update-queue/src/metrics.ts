import { statfsSync } from "node:fs";
import type { Counter } from "prom-client";
import { ModuleMetrics, moduleMetricLabels } from "../../shared/metrics";
import type { CounterName, Outbox, OutboxStats } from "./outbox";

/**
 * The update-queue's Prometheus metrics (docs/metrics.md), created once per queue instance in its ModuleMetrics
 * (names `flotilla_update_queue_<name>`; the link metrics are the module host's, modules/shared/link-metrics.ts).
 *
 * The queue's state lives in its outbox (SQLite, ./outbox.ts), which keeps its own counters across restarts: the
 * gauges and counters here are computed from it when scraped (`collect`), one outbox read per scrape. Counters count
 * from this process's start (a restart is a new `instance_number`); a fresh queue after a quarantine starts the
 * outbox's counters again, which these counters absorb (they never go down).
 */
export interface UpdateQueueMetricsSource {
  readonly outbox: Outbox;
  /** The queue directory (its file system's free space). */
  readonly dir: string;
  /** Valid updates the disk refused, held in memory, and updates lost (refused and not held), invalid inputs. */
  unstored(): number;
  lostInputs(): number;
  invalidInputs(): number;
  /** Updates a metered link defers (larger than meteredMaxUploadBytes while meteredLink is true); default 0. */
  deferred?(): number;
}

export interface UpdateQueueMetrics {
  /** A damaged queue file was moved aside (./queue-file.ts). */
  readonly quarantines: Counter;
}

/** drops_total's reasons and where each is counted. */
export const DROP_REASONS = {
  closed_round: "dropped_closed",
  overflow: "dropped_overflow",
  corrupt: "dropped_corrupt",
  expired: "dropped_expired",
  stale_chunks: "dropped_staged",
} as const satisfies Record<string, CounterName>;

export function updateQueueMetrics(m: ModuleMetrics, src: UpdateQueueMetricsSource): UpdateQueueMetrics {
  // One outbox read per scrape: every collect below reads the same snapshot (taken by the first one of a scrape).
  let snap: { at: number; stats: OutboxStats; oldest: number | undefined } | undefined;
  const snapshot = (): { stats: OutboxStats; oldest: number | undefined } => {
    const now = Date.now();
    if (snap && now - snap.at < 50) return snap;
    const stats = src.outbox.stats();
    const oldest = stats.depth > 0 ? src.outbox.pending()[0]?.enqueuedAt : undefined;
    snap = { at: now, stats, oldest };
    return snap;
  };
  const base = src.outbox.stats().counters;
  const last: Record<string, number> = { ...base };
  /** Increments `counter` by how much the outbox's counter `name` grew since the last scrape. */
  const grow = (counter: Counter<string>, name: CounterName, labels?: Record<string, string>): void => {
    const now = snapshot().stats.counters[name];
    const by = now - (last[name] ?? 0);
    last[name] = now; // a fresh queue (quarantine) starts again at 0: nothing is added, the counter stays
    if (by > 0) {
      if (labels) counter.inc(labels, by);
      else counter.inc(by);
    }
  };

  m.gauge(
    "queue_depth",
    "Updates not yet acknowledged by the cloud (pending + awaiting an ack)",
    [],
    function () {
      this.set(snapshot().stats.depth);
    },
  );
  m.gauge("awaiting_ack", "Updates sent completely, awaiting the cloud's ack", [], function () {
    this.set(snapshot().stats.awaitingAck);
  });
  m.gauge("bytes_pending", "Bytes of the updates not yet acknowledged", [], function () {
    this.set(snapshot().stats.bytesPending);
  });
  m.gauge(
    "oldest_update_age_seconds",
    "Age of the oldest update not yet acknowledged (0 when the queue is empty)",
    [],
    function () {
      const oldest = snapshot().oldest;
      this.set(oldest === undefined ? 0 : Math.max(0, (Date.now() - oldest) / 1000));
    },
  );
  m.gauge("unstored_updates", "Valid updates the disk refused, held in memory until stored", [], function () {
    this.set(src.unstored());
  });
  m.gauge(
    "deferred_updates",
    "Updates larger than meteredMaxUploadBytes kept, not sent, while the link is metered",
    [],
    function () {
      try {
        this.set(src.deferred?.() ?? 0);
      } catch {
        // the queue file cannot be read now: no value this time
      }
    },
  );
  m.gauge(
    "disk_free_bytes",
    "Free bytes (for an unprivileged process) on the queue directory's file system",
    [],
    function () {
      try {
        const s = statfsSync(src.dir);
        this.set(Number(s.bavail) * Number(s.bsize));
      } catch {
        // the directory vanished: no value this time
      }
    },
  );
  /** A counter brought up to date from the outbox when scraped. */
  const fromOutbox = (
    name: string,
    help: string,
    update: (c: Counter<string>) => void,
    labelNames: readonly string[] = [],
  ): Counter<string> =>
    m.counter(name, help, labelNames, function () {
      update(this);
    });
  fromOutbox("sends_total", "Updates sent completely (every chunk out; resends included)", (c) =>
    grow(c, "sent_updates"),
  );
  fromOutbox("resends_total", "Updates sent again (no ack within resendAfterMs, or after a reconnect)", (c) =>
    grow(c, "resent"),
  );
  fromOutbox("acks_total", "Updates acknowledged by the cloud", (c) => grow(c, "acked"));
  fromOutbox("sent_chunks_total", "Chunks (device-to-cloud messages) sent", (c) => grow(c, "sent_chunks"));
  fromOutbox("enqueued_total", "Updates stored in the outbox", (c) => grow(c, "enqueued"));
  const drops = fromOutbox(
    "drops_total",
    "Updates dropped from the outbox, by reason",
    (c) => {
      for (const [reason, name] of Object.entries(DROP_REASONS)) grow(c, name, { reason });
    },
    ["reason"],
  );
  for (const reason of Object.keys(DROP_REASONS)) drops.inc({ reason }, 0);
  let lost = 0;
  let invalid = 0;
  const inputs = fromOutbox(
    "rejected_inputs_total",
    "Input messages not stored, by reason (invalid: not an update; lost: refused by the disk and not held)",
    (c) => {
      const l = src.lostInputs();
      if (l > lost) c.inc({ reason: "lost" }, l - lost);
      lost = l;
      const i = src.invalidInputs();
      if (i > invalid) c.inc({ reason: "invalid" }, i - invalid);
      invalid = i;
    },
    ["reason"],
  );
  for (const reason of ["invalid", "lost"]) inputs.inc({ reason }, 0);
  return {
    quarantines: m.counter(
      "quarantines_total",
      "Damaged queue files moved aside (a fresh queue was started)",
    ),
  };
}

/** The queue's own ModuleMetrics when none is given: IoT Edge's labels from `env`, the device id when known. */
export function defaultUpdateQueueModuleMetrics(
  deviceId: string | undefined,
  env: NodeJS.ProcessEnv = process.env,
): ModuleMetrics {
  return new ModuleMetrics({
    module: "update-queue",
    labels: moduleMetricLabels("update-queue", env, deviceId ? { edge_device: deviceId } : {}),
  });
}
