/**
 * Where an accepted D2C message goes: device telemetry to the built-in endpoint (onEvent); module output
 * messages through the device's edgeHub route table, to `$upstream` (onEvent) or to another module's input
 * on the same device, with IoT Edge hub-style store-and-forward for a module that is offline or not yet
 * subscribed to its inputs.
 *
 * Route table of a device: the `routes` in its `$edgeHub` module twin's desired properties when that module
 * identity exists and has them (that is how edgeHub itself is configured by a deployment manifest), otherwise
 * the hub-wide table given to startLocalHub, otherwise `FROM /messages/* INTO $upstream`.
 * Store-and-forward: "Deploy modules and establish routes in IoT Edge" (storeAndForwardConfiguration
 * .timeToLiveSecs, default 7200 s): messages wait for the endpoint up to that TTL, in order.
 * Forwarded messages carry the IoT Edge connection properties `$.cdid` / `$.cmid` (source device / module).
 */
import type { D2CDispatcher } from "./d2c";
import type { IdentityRecord, IdentityStore } from "./identities";
import type { HubMetrics } from "./metrics";
import { DEFAULT_ROUTES, matchRoutes, parseRoutes, type Route, type RoutableMessage } from "./routes";
import {
  type ClientIdentity,
  clientIdOf,
  encodePropertyBag,
  moduleInputTopic,
  type PropertyBag,
} from "./topics";
import { isJsonObject } from "./twin";

/** System properties an input message keeps from its source message (IoT Edge forwards these). */
const FORWARDED_SYSTEM = ["mid", "cid", "uid", "ct", "ce", "exp", "to"];

export interface MessageRouterOptions {
  identities: IdentityStore;
  dispatcher: D2CDispatcher;
  metrics: HubMetrics;
  log: (line: string) => void;
  send: (clientId: string, topic: string, payload: Buffer) => boolean;
  /** Hub-wide route table (manifest syntax). */
  routes?: Record<string, unknown> | readonly string[];
  /** Store-and-forward TTL for module inputs. */
  timeToLiveSecs?: number;
  /** Per-module bound of held input messages. */
  maxQueuedPerModule?: number;
}

interface Held {
  topic: string;
  payload: Buffer;
  expires: number;
}

export class MessageRouter {
  private hubRoutes: Route[];
  private readonly edgeHubRoutes = new Map<string, { version: number; routes: Route[] | undefined }>();
  private readonly held = new Map<string, Held[]>();
  private readonly ttlMs: number;
  private readonly maxHeld: number;

  constructor(private readonly o: MessageRouterOptions) {
    this.hubRoutes = parseRoutes(o.routes ?? DEFAULT_ROUTES);
    this.ttlMs = (o.timeToLiveSecs ?? 7200) * 1000;
    this.maxHeld = o.maxQueuedPerModule ?? 1000;
  }

  /** Replaces the hub-wide route table (throws E_HUB_ROUTE on a bad route and keeps the old table). */
  setRoutes(routes: Record<string, unknown> | readonly string[]): void {
    this.hubRoutes = parseRoutes(routes);
  }

  routesFor(deviceId: string): Route[] {
    const edgeHub = this.o.identities.get(deviceId, "$edgeHub");
    const desired = edgeHub?.twin.desired.routes;
    if (!edgeHub || !isJsonObject(desired)) return this.hubRoutes;
    const cached = this.edgeHubRoutes.get(deviceId);
    if (cached && cached.version === edgeHub.twin.desiredVersion) return cached.routes ?? this.hubRoutes;
    let routes: Route[] | undefined;
    try {
      routes = parseRoutes(desired);
    } catch (e) {
      this.o.log(`routes: ignoring the $edgeHub routes of ${deviceId}: ${(e as Error).message}`);
    }
    this.edgeHubRoutes.set(deviceId, { version: edgeHub.twin.desiredVersion, routes });
    return routes ?? this.hubRoutes;
  }

  onTelemetry(id: ClientIdentity, rec: IdentityRecord, bag: PropertyBag, body: Buffer): void {
    const { metrics, dispatcher } = this.o;
    metrics.d2cAccepted++;
    if (id.moduleId === undefined) {
      metrics.d2cUpstream++;
      dispatcher.enqueue({ deviceId: id.deviceId, generationId: rec.generationId }, bag, body);
      return;
    }
    const outputName = bag.system.on;
    const msg: RoutableMessage = {
      moduleId: id.moduleId,
      outputName,
      properties: bag.app,
      system: {
        connectionDeviceId: id.deviceId,
        connectionModuleId: id.moduleId,
        contentType: bag.system.ct,
        contentEncoding: bag.system.ce,
        messageId: bag.system.mid,
        correlationId: bag.system.cid,
        userId: bag.system.uid,
        outputName,
      },
      body,
    };
    const sinks = matchRoutes(this.routesFor(id.deviceId), msg);
    if (sinks.length === 0) {
      metrics.unrouted++;
      return;
    }
    for (const sink of sinks) {
      if (sink.kind === "upstream") {
        metrics.d2cUpstream++;
        dispatcher.enqueue(
          { deviceId: id.deviceId, moduleId: id.moduleId, generationId: rec.generationId },
          bag,
          body,
        );
      } else {
        this.deliverInput(id, sink.moduleId, sink.input, bag, body);
      }
    }
  }

  private deliverInput(
    from: ClientIdentity,
    moduleId: string,
    input: string,
    bag: PropertyBag,
    body: Buffer,
  ): void {
    const { identities, metrics, log } = this.o;
    if (!identities.get(from.deviceId, moduleId)) {
      metrics.moduleInputsDropped++;
      log(`routes: ${from.deviceId} has no module ${moduleId}; message for input ${input} dropped`);
      return;
    }
    const system: Record<string, string> = {};
    for (const k of FORWARDED_SYSTEM) if (bag.system[k] !== undefined) system[k] = bag.system[k];
    system.cdid = from.deviceId;
    if (from.moduleId) system.cmid = from.moduleId;
    const topic = moduleInputTopic(
      from.deviceId,
      moduleId,
      input,
      encodePropertyBag({ system, app: bag.app }),
    );
    const target = clientIdOf(from.deviceId, moduleId);
    const queue = this.held.get(target);
    if (!queue?.length && this.o.send(target, topic, body)) {
      metrics.moduleInputsDelivered++;
      return;
    }
    const q = queue ?? [];
    if (q.length >= this.maxHeld) {
      q.shift();
      metrics.moduleInputsDropped++;
      log(`routes: store-and-forward queue of ${target} is full; dropped the oldest message`);
    }
    q.push({ topic, payload: body, expires: Date.now() + this.ttlMs });
    this.held.set(target, q);
    metrics.moduleInputsQueued++;
    this.flush(target);
  }

  /** Sends held input messages in order while the module takes them; drops expired ones. */
  flush(clientId: string): void {
    const q = this.held.get(clientId);
    if (!q) return;
    const now = Date.now();
    while (q.length) {
      const m = q[0];
      if (m.expires <= now) {
        q.shift();
        this.o.metrics.moduleInputsDropped++;
        continue;
      }
      if (!this.o.send(clientId, m.topic, m.payload)) break;
      q.shift();
      this.o.metrics.moduleInputsDelivered++;
    }
    if (!q.length) this.held.delete(clientId);
  }

  heldCount(clientId: string): number {
    return this.held.get(clientId)?.length ?? 0;
  }
}
