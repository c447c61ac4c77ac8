/**
 * IoT Hub MQTT topic grammar: classification of what a device/module publishes, the per-identity topic
 * ACL, MQTT topic-filter matching and the URI-encoded property bag.
 *
 * Spec: "Communicate with an IoT hub using the MQTT protocol"
 * (https://learn.microsoft.com/azure/iot-hub/iot-hub-mqtt-support):
 *   - D2C:      devices/{device_id}/messages/events/{property_bag}
 *               devices/{device_id}/modules/{module_id}/messages/events/{property_bag}
 *   - C2D:      subscribe devices/{device_id}/messages/devicebound/#
 *   - twin:     $iothub/twin/GET/?$rid={request id}, $iothub/twin/PATCH/properties/reported/?$rid={request id},
 *               responses on $iothub/twin/res/{status}/?$rid={request id}[&$version=N],
 *               desired notifications on $iothub/twin/PATCH/properties/desired/?$version={new version}
 *   - methods:  $iothub/methods/POST/{method name}/?$rid={request id}; replies $iothub/methods/res/{status}/?$rid=
 *   - "IoT Hub doesn't support QoS 2 messages. If a device app publishes a message with QoS 2, IoT Hub closes
 *      the network connection." / QoS 2 subscriptions are granted QoS 1.
 * Module inputs follow the IoT Edge hub convention used by azure-iot-device-mqtt:
 *   devices/{device_id}/modules/{module_id}/inputs/{input}/{property_bag}
 */
import { forbiddenKey, isForbiddenKey, nullProtoRecord } from "./safe-json";

/** The authenticated principal behind one MQTT connection. clientId is `deviceId` or `deviceId/moduleId`. */
export interface ClientIdentity {
  readonly deviceId: string;
  readonly moduleId?: string;
  readonly clientId: string;
  /** The IoT Plug and Play model ID announced in the CONNECT user name (`&model-id=`), "" when none. */
  readonly modelId?: string;
}

export function clientIdOf(deviceId: string, moduleId?: string): string {
  return moduleId ? `${deviceId}/${moduleId}` : deviceId;
}

export type InboundPublish =
  | { kind: "telemetry"; bag: string }
  | { kind: "twin-get"; rid: string }
  | { kind: "twin-patch-reported"; rid: string }
  | { kind: "method-response"; rid: string; status: number }
  /** An $iothub topic this identity may use, but malformed (no $rid, bad status...); `twinRid`: answerable on twin/res. */
  | { kind: "malformed"; twinRid?: string; reason: string }
  /** Outside this identity's namespace: IoT Hub closes the connection. */
  | { kind: "denied"; reason: string };

/** `devices/{d}/messages/events/` or `devices/{d}/modules/{m}/messages/events/`: the only D2C topic of an identity. */
export function telemetryPrefix(id: ClientIdentity): string {
  return id.moduleId
    ? `devices/${id.deviceId}/modules/${id.moduleId}/messages/events/`
    : `devices/${id.deviceId}/messages/events/`;
}

export function moduleInputTopic(deviceId: string, moduleId: string, input: string, bag: string): string {
  return `devices/${deviceId}/modules/${moduleId}/inputs/${input}/${bag}`;
}

/** Splits `a/b/?k=v&k2=v2` into path and decoded query parameters; undefined if the query is not decodable. */
export function splitTopicQuery(topic: string): { path: string; query: Map<string, string> } | undefined {
  const q = topic.indexOf("?");
  const path = q < 0 ? topic : topic.slice(0, q);
  const query = new Map<string, string>();
  if (q >= 0) {
    for (const part of topic.slice(q + 1).split("&")) {
      if (part === "") continue;
      const eq = part.indexOf("=");
      const k = eq < 0 ? part : part.slice(0, eq);
      const v = eq < 0 ? "" : part.slice(eq + 1);
      try {
        query.set(decodeURIComponent(k), decodeURIComponent(v));
      } catch {
        return undefined;
      }
    }
  }
  return { path, query };
}

/** Decides what a publish from `id` on `topic` is, applying the identity's publish ACL. */
export function classifyPublish(id: ClientIdentity, topic: string): InboundPublish {
  if (topic.startsWith("$iothub/")) return classifyIotHubRequest(topic);
  const prefix = telemetryPrefix(id);
  if (topic.startsWith(prefix)) {
    let bag = topic.slice(prefix.length);
    if (bag.endsWith("/")) bag = bag.slice(0, -1);
    if (bag.includes("/")) return { kind: "denied", reason: `malformed telemetry topic ${topic}` };
    return { kind: "telemetry", bag };
  }
  if (topic === prefix.slice(0, -1)) return { kind: "telemetry", bag: "" };
  return { kind: "denied", reason: `${id.clientId} may not publish to ${topic}` };
}

function classifyIotHubRequest(topic: string): InboundPublish {
  const split = splitTopicQuery(topic);
  if (!split) return { kind: "malformed", reason: `undecodable query in ${topic}` };
  const { path, query } = split;
  const rid = query.get("$rid");
  const p = path.endsWith("/") ? path.slice(0, -1) : path;
  if (p === "$iothub/twin/GET" || p === "$iothub/twin/PATCH/properties/reported") {
    if (!rid) return { kind: "malformed", reason: `missing $rid in ${topic}` };
    return p === "$iothub/twin/GET" ? { kind: "twin-get", rid } : { kind: "twin-patch-reported", rid };
  }
  const m = /^\$iothub\/methods\/res\/([^/]*)$/.exec(p);
  if (m) {
    const status = Number(m[1]);
    if (!rid) return { kind: "malformed", reason: `missing $rid in ${topic}` };
    if (!/^\d{1,3}$/.test(m[1]) || !Number.isInteger(status)) {
      return { kind: "malformed", reason: `bad method status in ${topic}` };
    }
    return { kind: "method-response", rid, status };
  }
  if (p.startsWith("$iothub/twin/"))
    return { kind: "malformed", twinRid: rid, reason: `unknown twin request ${topic}` };
  if (p.startsWith("$iothub/methods/"))
    return { kind: "malformed", reason: `unknown methods topic ${topic}` };
  return { kind: "denied", reason: `unknown $iothub topic ${topic}` };
}

/** Topic-filter roots an identity may subscribe under (filters must stay inside one of these subtrees). */
export function subscribeRoots(id: ClientIdentity): string[] {
  const own = id.moduleId
    ? `devices/${id.deviceId}/modules/${id.moduleId}/inputs/`
    : `devices/${id.deviceId}/messages/devicebound/`;
  return [own, "$iothub/twin/res/", "$iothub/twin/PATCH/properties/desired/", "$iothub/methods/POST/"];
}

export function isSubscribeAllowed(id: ClientIdentity, filter: string): boolean {
  return subscribeRoots(id).some((root) => filter.startsWith(root) || filter === root.slice(0, -1));
}

/** MQTT 3.1.1 section 4.7 topic-filter matching ('+' one level, '#' the rest, including the parent level). */
export function topicMatches(filter: string, topic: string): boolean {
  if (topic.startsWith("$") && (filter.startsWith("#") || filter.startsWith("+"))) return false;
  const f = filter.split("/");
  const t = topic.split("/");
  for (let i = 0; i < f.length; i++) {
    if (f[i] === "#") return i === f.length - 1;
    if (i >= t.length) return false;
    if (f[i] !== "+" && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}

export interface PropertyBag {
  /** `$.`-prefixed system properties, keyed without the `$.` (mid, cid, ct, ce, exp, uid, to, on, ifid, sub...). */
  system: Record<string, string>;
  /** Application properties. */
  app: Record<string, string>;
}

/**
 * Parses `k=v&k2=v2`. System properties are URL-encoded by the SDK with querystring.stringify (`$.` becomes
 * `%24.`), application properties with encodeURIComponent. Throws on malformed percent-encoding and on the
 * names `__proto__`, `constructor`, `prototype` (E_HUB_FORBIDDEN_KEY, ./safe-json).
 */
export function parsePropertyBag(bag: string): PropertyBag {
  // Property names are chosen by the device: null-prototype maps, and no __proto__/constructor/prototype.
  const out: PropertyBag = { system: nullProtoRecord(), app: nullProtoRecord() };
  if (!bag) return out;
  for (const part of bag.split("&")) {
    if (part === "") continue;
    const eq = part.indexOf("=");
    const k = decodeURIComponent(eq < 0 ? part : part.slice(0, eq));
    const v = eq < 0 ? "" : decodeURIComponent(part.slice(eq + 1));
    const name = k.startsWith("$.") ? k.slice(2) : k;
    if (isForbiddenKey(name)) forbiddenKey(name, "a message property name");
    if (k.startsWith("$.")) out.system[name] = v;
    else out.app[name] = v;
  }
  return out;
}

export function encodePropertyBag(bag: PropertyBag): string {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(bag.system))
    parts.push(`%24.${encodeURIComponent(k)}=${encodeURIComponent(v)}`);
  for (const [k, v] of Object.entries(bag.app))
    parts.push(`${encodeURIComponent(k)}=${encodeURIComponent(v)}`);
  return parts.join("&");
}
