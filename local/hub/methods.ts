/**
 * Direct methods: the service call waits for the device's reply on the device's own MQTT connection.
 *
 * Spec: "Understand and invoke direct methods from IoT Hub"
 * (https://learn.microsoft.com/azure/iot-hub/iot-hub-devguide-direct-methods):
 *   - request {methodName, responseTimeoutInSeconds (default 30, at most 300), connectTimeoutInSeconds
 *     (default 0: the device must already be connected), payload}; payload at most 128 KB.
 *   - the device receives $iothub/methods/POST/{method name}/?$rid={request id} and answers
 *     $iothub/methods/res/{status}/?$rid={request id}; the service gets HTTP 200 {status, payload}.
 *   - device not connected (or not subscribed to methods) within connectTimeout -> 404 (errorCode 404103,
 *     DeviceNotOnline); no answer within responseTimeout -> 504 (errorCode 504101, GatewayTimeout).
 * IoT Hub documents a 5 s minimum response timeout; this stand-in accepts 1-4 s too so tests stay fast.
 */
import { FlotillaError } from "../../core/errors";
import { isJsonObject, type Json } from "./twin";

export const METHOD_PAYLOAD_LIMIT = 128 * 1024;

export interface MethodInvocation {
  methodName: string;
  payload: Json;
  responseTimeoutInSeconds: number;
  connectTimeoutInSeconds: number;
}

export interface MethodResult {
  status: number;
  payload: Json;
}

/** What the MQTT side offers the invoker. */
export interface MethodTransport {
  /** Online and subscribed to `$iothub/methods/POST/#`. */
  methodsReady(clientId: string): boolean;
  /** Resolves true as soon as methodsReady(clientId) holds, false after `ms`. */
  waitMethodsReady(clientId: string, ms: number): Promise<boolean>;
  /** Sends to that one client's connection; false if it could not be sent. */
  send(clientId: string, topic: string, payload: Buffer): boolean;
}

interface Pending {
  clientId: string;
  resolve: (r: MethodResult) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

function bad(message: string): never {
  throw new FlotillaError("E_HUB_BAD_REQUEST", message);
}

/** Validates and defaults the REST body of POST /twins/{id}/methods. */
export function parseInvocation(body: unknown): MethodInvocation {
  if (!isJsonObject(body)) bad("method invocation body must be a JSON object");
  const { methodName, payload } = body;
  if (typeof methodName !== "string" || !/^[^/+#?\s]{1,128}$/.test(methodName)) bad("invalid methodName");
  const rt = body.responseTimeoutInSeconds ?? 30;
  const ct = body.connectTimeoutInSeconds ?? 0;
  if (typeof rt !== "number" || !Number.isInteger(rt) || rt < 1 || rt > 300)
    bad("responseTimeoutInSeconds must be 1-300");
  if (typeof ct !== "number" || !Number.isInteger(ct) || ct < 0 || ct > 300)
    bad("connectTimeoutInSeconds must be 0-300");
  const p = payload === undefined ? null : payload;
  if (Buffer.byteLength(JSON.stringify(p)) > METHOD_PAYLOAD_LIMIT)
    bad("method payload is larger than 128 KB");
  return { methodName, payload: p, responseTimeoutInSeconds: rt, connectTimeoutInSeconds: ct };
}

export class DirectMethods {
  private readonly pending = new Map<string, Pending>();
  private nextRid = 1;
  readonly stats = { invoked: 0, completed: 0, timedOut: 0, offline: 0, strayResponses: 0 };

  constructor(private readonly transport: MethodTransport) {}

  async invoke(clientId: string, inv: MethodInvocation): Promise<MethodResult> {
    this.stats.invoked++;
    if (!this.transport.methodsReady(clientId)) {
      const ok =
        inv.connectTimeoutInSeconds > 0 &&
        (await this.transport.waitMethodsReady(clientId, inv.connectTimeoutInSeconds * 1000));
      if (!ok) {
        this.stats.offline++;
        throw new FlotillaError(
          "E_HUB_DEVICE_NOT_ONLINE",
          `${clientId} is not online or has not subscribed to direct methods`,
        );
      }
    }
    const rid = (this.nextRid++).toString(16);
    return new Promise<MethodResult>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(rid);
        this.stats.timedOut++;
        reject(
          new FlotillaError(
            "E_HUB_METHOD_TIMEOUT",
            `${clientId} did not answer ${inv.methodName} within ${inv.responseTimeoutInSeconds} s`,
          ),
        );
      }, inv.responseTimeoutInSeconds * 1000);
      this.pending.set(rid, { clientId, resolve, reject, timer });
      const topic = `$iothub/methods/POST/${inv.methodName}/?$rid=${rid}`;
      if (!this.transport.send(clientId, topic, Buffer.from(JSON.stringify(inv.payload)))) {
        clearTimeout(timer);
        this.pending.delete(rid);
        this.stats.offline++;
        reject(new FlotillaError("E_HUB_DEVICE_NOT_ONLINE", `${clientId} went offline`));
      }
    });
  }

  /** A `$iothub/methods/res/{status}/?$rid=` publish. Only the client the request went to may answer it. */
  onResponse(fromClientId: string, rid: string, status: number, body: Buffer): boolean {
    const p = this.pending.get(rid);
    if (!p || p.clientId !== fromClientId) {
      this.stats.strayResponses++;
      return false;
    }
    this.pending.delete(rid);
    clearTimeout(p.timer);
    let payload: Json = null;
    const text = body.toString("utf8");
    if (text.trim() !== "") {
      try {
        payload = JSON.parse(text) as Json;
      } catch {
        payload = text;
      }
    }
    this.stats.completed++;
    p.resolve({ status, payload });
    return true;
  }

  /** Fails every pending call (hub shutdown). */
  close(): void {
    for (const [rid, p] of this.pending) {
      clearTimeout(p.timer);
      p.reject(new FlotillaError("E_HUB_CLOSED", "hub closed"));
      this.pending.delete(rid);
    }
  }
}
