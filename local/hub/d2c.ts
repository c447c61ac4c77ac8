/**
 * Device-to-cloud events as the built-in endpoint delivers them, and the in-order batch dispatcher that
 * stands in for the Event Hub trigger of an Azure Function.
 *
 * Shapes: "Create and read IoT Hub messages" (https://learn.microsoft.com/azure/iot-hub/iot-hub-devguide-messages-construct)
 * system properties: message-id, correlation-id, user-id, content-type, content-encoding, absolute-expiry-time,
 * iothub-connection-device-id, iothub-connection-module-id, iothub-connection-auth-method,
 * iothub-connection-auth-generation-id, iothub-enqueuedtime, iothub-message-source, dt-subject,
 * iothub-interface-name; plus the Event Hubs annotations x-opt-sequence-number, x-opt-offset,
 * x-opt-enqueued-time that the Event Hub-compatible endpoint adds (@azure/event-hubs ReceivedEventData:
 * body, properties, systemProperties, enqueuedTimeUtc, sequenceNumber, offset).
 */
import type { PropertyBag } from "./topics";

export interface D2CSystemProperties {
  "iothub-connection-device-id": string;
  "iothub-connection-module-id"?: string;
  "iothub-connection-auth-method": string;
  "iothub-connection-auth-generation-id": string;
  "iothub-enqueuedtime": string;
  "iothub-message-source": "Telemetry";
  "message-id"?: string;
  "correlation-id"?: string;
  "user-id"?: string;
  "content-type"?: string;
  "content-encoding"?: string;
  "absolute-expiry-time"?: string;
  "dt-subject"?: string;
  "iothub-interface-name"?: string;
  "x-opt-sequence-number": number;
  "x-opt-offset": string;
  "x-opt-enqueued-time": string;
}

export interface D2CEvent {
  body: Buffer;
  /** Application properties. */
  properties: Record<string, string>;
  systemProperties: D2CSystemProperties;
  enqueuedTimeUtc: Date;
  sequenceNumber: number;
  offset: string;
}

/**
 * Maps the MQTT property-bag system keys ($.mid ...) to their system property names. A Map, never an object
 * lookup: a device-chosen key must not find an inherited property (a polluted Object.prototype could otherwise
 * map `$.x` onto iothub-connection-device-id).
 */
const SYSTEM_NAMES: ReadonlyMap<string, keyof D2CSystemProperties> = new Map([
  ["mid", "message-id"],
  ["cid", "correlation-id"],
  ["uid", "user-id"],
  ["ct", "content-type"],
  ["ce", "content-encoding"],
  ["exp", "absolute-expiry-time"],
  ["sub", "dt-subject"],
  ["ifid", "iothub-interface-name"],
] as const);

export interface D2CSource {
  deviceId: string;
  moduleId?: string;
  generationId: string;
}

export function makeD2CEvent(
  src: D2CSource,
  bag: PropertyBag,
  body: Buffer,
  sequenceNumber: number,
  offset: number,
): D2CEvent {
  const now = new Date();
  const iso = now.toISOString();
  const fromDevice: Partial<Record<keyof D2CSystemProperties, string>> = {};
  for (const [k, v] of Object.entries(bag.system)) {
    const name = SYSTEM_NAMES.get(k);
    if (name) fromDevice[name] = v;
  }
  // The connection properties come last and only from the authenticated connection (src).
  const sys: D2CSystemProperties = {
    ...fromDevice,
    "iothub-connection-device-id": src.deviceId,
    "iothub-connection-auth-method": JSON.stringify({
      scope: src.moduleId ? "module" : "device",
      type: "sas",
      issuer: "iothub",
      acceptingIpFilterRule: null,
    }),
    "iothub-connection-auth-generation-id": src.generationId,
    "iothub-enqueuedtime": iso,
    "iothub-message-source": "Telemetry",
    "x-opt-sequence-number": sequenceNumber,
    "x-opt-offset": String(offset),
    "x-opt-enqueued-time": iso,
  };
  if (src.moduleId) sys["iothub-connection-module-id"] = src.moduleId;
  return {
    body,
    properties: { ...bag.app },
    systemProperties: sys,
    enqueuedTimeUtc: now,
    sequenceNumber,
    offset: String(offset),
  };
}

export type OnEvent = (batch: D2CEvent[]) => void | Promise<void>;

export interface DispatcherStats {
  delivered: number;
  dropped: number;
  errors: number;
}

/**
 * Queues events and hands them to `onEvent` in order, one batch at a time (like an Event Hub trigger with
 * cardinality "many" on one partition). A failing handler is logged and counted; its batch is not retried
 * (the trigger's default checkpointing moves on). The queue is bounded: beyond `maxQueued` the oldest
 * events are dropped and counted.
 */
export class D2CDispatcher {
  private queue: D2CEvent[] = [];
  private running = false;
  private idleWaiters: (() => void)[] = [];
  private seq = 0;
  private offset = 0;
  readonly stats: DispatcherStats = { delivered: 0, dropped: 0, errors: 0 };

  constructor(
    private readonly onEvent: OnEvent | undefined,
    private readonly log: (line: string) => void,
    private readonly maxBatch = 100,
    private readonly maxQueued = 100_000,
  ) {}

  /** Assigns sequence number and offset (per hub, monotonic) and queues the event. */
  enqueue(src: D2CSource, bag: PropertyBag, body: Buffer): D2CEvent {
    const ev = makeD2CEvent(src, bag, body, ++this.seq, this.offset);
    this.offset += body.length;
    if (!this.onEvent) return ev;
    this.queue.push(ev);
    if (this.queue.length > this.maxQueued) {
      const n = this.queue.length - this.maxQueued;
      this.queue.splice(0, n);
      this.stats.dropped += n;
      this.log(`d2c queue full: dropped ${n} oldest event(s)`);
    }
    if (!this.running) {
      // Start on the next turn so events arriving in the same socket read share a batch.
      this.running = true;
      setImmediate(() => void this.pump());
    }
    return ev;
  }

  private async pump(): Promise<void> {
    try {
      while (this.queue.length) {
        const batch = this.queue.splice(0, this.maxBatch);
        try {
          await (this.onEvent as OnEvent)(batch);
          this.stats.delivered += batch.length;
        } catch (e) {
          this.stats.errors++;
          this.log(`onEvent failed for a batch of ${batch.length}: ${(e as Error)?.message ?? String(e)}`);
        }
      }
    } finally {
      this.running = false;
      const w = this.idleWaiters;
      this.idleWaiters = [];
      for (const fn of w) fn();
    }
  }

  /** Resolves when every queued event has been handed to onEvent (and the handler settled). */
  drain(): Promise<void> {
    if (!this.running && this.queue.length === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }
}
