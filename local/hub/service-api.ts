/**
 * The service-facing REST API (HTTPS, same certificate as MQTT) that azure-iothub's Registry and Client call.
 *
 * Spec: IoT Hub service REST API, api-version 2021-04-12 (https://learn.microsoft.com/rest/api/iothub/service/):
 *   PUT/GET/DELETE /devices/{id}                Devices - Create Or Update / Get / Delete Identity
 *   GET            /devices                     Devices - Get Identities (?top=)
 *   PUT/GET/DELETE /devices/{d}/modules/{m}     Modules - Create Or Update / Get / Delete Identity
 *   GET            /devices/{d}/modules         Modules - Get Modules On Device
 *   GET/PATCH/PUT  /twins/{id}                  Devices - Get / Update / Replace Twin (If-Match etag)
 *   GET/PATCH/PUT  /twins/{d}/modules/{m}       Modules - Get / Update / Replace Twin
 *   POST           /devices/query               Query - Get Twins (x-ms-max-item-count / x-ms-continuation)
 *   POST           /twins/{id}/methods          Devices - Invoke Method
 *   POST           /twins/{d}/modules/{m}/methods  Modules - Invoke Method
 *   GET            /statistics/devices          Statistics - Get Device Statistics
 *   PUT/GET/DELETE /configurations/{id}         Configuration - Create Or Update / Get / Delete (./configurations.ts)
 *   GET            /configurations              Configuration - Get Configurations (?top=)
 *   POST           /devices/{id}/applyConfigurationContent  Configuration - Apply On Edge Device (modulesContent)
 * Authorization: `SharedAccessSignature sr={hub}&sig=..&se=..&skn={policy}` signed with the policy key
 * ("Control access to IoT Hub by using shared access signatures"). Errors use IoT Hub's body
 * `{"Message":"ErrorCode:<Code>;<text>","ExceptionMessage":"Tracking ID:..."}` plus an `iothub-errorcode`
 * header (what azure-iothub's RestApiClient.translateError parses); direct-method failures use the nested form
 * `{"Message":"{\"errorCode\":404103,...}","ExceptionMessage":""}` seen from the live service (Azure/iotedge#98,
 * Azure/azure-iot-sdk-csharp#3442).
 */
import * as crypto from "node:crypto";
import * as http from "node:http";
import * as https from "node:https";
import type * as net from "node:net";
import { isFlotillaError } from "../../core/errors";
import type { ConfigurationStore } from "./configurations";
import { deviceJson, type IdentitySpec, type IdentityStore, moduleJson, twinJson } from "./identities";
import type { HubMetrics } from "./metrics";
import { type DirectMethods, parseInvocation } from "./methods";
import { runQuery } from "./query";
import { parseClientJson } from "./safe-json";
import { parseSas, verifySas } from "./sas";
import { clientIdOf } from "./topics";
import { isJsonObject, type Json, type JsonObject } from "./twin";

export const API_VERSION = "2021-04-12";
const MAX_BODY = 1024 * 1024;

export interface ServiceApiOptions {
  host: string;
  port: number;
  hubName: string;
  tls: { cert: string; key: string };
  identities: IdentityStore;
  configurations: ConfigurationStore;
  methods: DirectMethods;
  metrics: HubMetrics;
  log: (line: string) => void;
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly methodErrorCode?: number,
  ) {
    super(message);
  }
}

function trackingId(): string {
  return crypto.randomBytes(16).toString("hex");
}

function hubTimestamp(d = new Date()): string {
  const p = (n: number) => String(n).padStart(2, "0");
  return `${p(d.getUTCMonth() + 1)}/${p(d.getUTCDate())}/${d.getUTCFullYear()} ${p(d.getUTCHours())}:${p(d.getUTCMinutes())}:${p(d.getUTCSeconds())}`;
}

/** Maps our error codes to IoT Hub's HTTP status and error code names. */
function toHttpError(e: unknown, moduleScoped: boolean): HttpError {
  if (e instanceof HttpError) return e;
  if (isFlotillaError(e)) {
    switch (e.code) {
      case "E_HUB_DEVICE_NOT_FOUND":
        return new HttpError(404, "DeviceNotFound", e.message);
      case "E_HUB_MODULE_NOT_FOUND":
        return new HttpError(404, "ModuleNotFound", e.message);
      case "E_HUB_CONFLICT":
        return new HttpError(
          409,
          moduleScoped ? "ModuleAlreadyExistsOnDevice" : "DeviceAlreadyExists",
          e.message,
        );
      case "E_HUB_PRECONDITION":
        return new HttpError(412, "PreconditionFailed", e.message);
      case "E_HUB_BAD_REQUEST":
      case "E_HUB_TWIN_INVALID":
      case "E_HUB_QUERY":
        return new HttpError(400, "ArgumentInvalid", e.message);
      case "E_HUB_DEVICE_NOT_ONLINE":
        return new HttpError(
          404,
          "DeviceNotOnline",
          "The operation failed because the requested device isn't online or hasn't registered the direct method callback.",
          404103,
        );
      case "E_HUB_METHOD_TIMEOUT":
        return new HttpError(
          504,
          "GatewayTimeout",
          "Timed out waiting for the response from device.",
          504101,
        );
      case "E_HUB_CONFIGURATION":
        return new HttpError(400, "ArgumentInvalid", e.message);
      case "E_HUB_CONFIGURATION_NOT_FOUND":
        return new HttpError(404, "ConfigurationNotFound", e.message);
      case "E_HUB_CLOSED":
        return new HttpError(503, "ServiceUnavailable", e.message);
    }
  }
  return new HttpError(500, "ServerError", (e as Error)?.message ?? String(e));
}

/** Longest request target accepted (IoT Hub paths are short: ids are at most 128 characters). */
export const MAX_URL_LENGTH = 4096;

function parseRequestUrl(raw: string | undefined): URL {
  const target = raw ?? "/";
  if (target.length > MAX_URL_LENGTH)
    throw new HttpError(
      414,
      "ArgumentInvalid",
      `E_HUB_BAD_URI: request target longer than ${MAX_URL_LENGTH}`,
    );
  if (!target.startsWith("/"))
    throw new HttpError(400, "ArgumentInvalid", "E_HUB_BAD_URI: request target must be an absolute path");
  try {
    return new URL(target, "https://hub");
  } catch {
    throw new HttpError(400, "ArgumentInvalid", "E_HUB_BAD_URI: request target is not a valid URI");
  }
}

function segments(pathname: string): string[] {
  return pathname
    .split("/")
    .filter((s) => s !== "")
    .map((s) => {
      try {
        return decodeURIComponent(s);
      } catch {
        throw new HttpError(
          400,
          "ArgumentInvalid",
          "E_HUB_BAD_URI: malformed percent-encoding in the request path",
        );
      }
    });
}

/** How long the service API keeps an idle keep-alive connection open. */
export const SERVICE_KEEP_ALIVE_MS = 120_000;

export class ServiceApi {
  private readonly sockets = new Set<net.Socket>();

  private constructor(
    private readonly o: ServiceApiOptions,
    private readonly server: https.Server,
  ) {}

  static async start(o: ServiceApiOptions): Promise<ServiceApi> {
    const server = https.createServer({ cert: o.tls.cert, key: o.tls.key, minVersion: "TLSv1.2" });
    // The service SDKs keep their connections alive and reuse an idle one without warning: with Node's default 5 s
    // keep-alive timeout a request sent as the server closed its idle socket failed (ECONNRESET), e.g. a round
    // order after a few seconds without hub calls. Idle connections now stay open two minutes.
    server.keepAliveTimeout = SERVICE_KEEP_ALIVE_MS;
    const api = new ServiceApi(o, server);
    server.on("request", (req, res) => void api.handle(req, res));
    server.on("connection", (s: net.Socket) => {
      api.sockets.add(s);
      s.once("close", () => api.sockets.delete(s));
    });
    server.on("tlsClientError", () => o.metrics.tlsErrors++);
    await new Promise<void>((resolve, reject) => {
      server.once("error", reject);
      server.listen(o.port, o.host, () => {
        server.off("error", reject);
        resolve();
      });
    });
    return api;
  }

  get port(): number {
    return (this.server.address() as net.AddressInfo).port;
  }

  async close(): Promise<void> {
    const closed = new Promise<void>((resolve) => this.server.close(() => resolve()));
    this.server.closeAllConnections();
    for (const s of this.sockets) s.destroy();
    await closed;
  }

  private authorized(header: string | undefined): boolean {
    if (!header) return false;
    try {
      const sas = parseSas(header);
      const policy = sas.skn ? this.o.identities.policies.get(sas.skn) : undefined;
      if (!policy) return false;
      const hub = this.o.hubName.toLowerCase();
      const check = verifySas(sas, [policy.primaryKey, policy.secondaryKey], (r) => {
        const x = r.toLowerCase();
        return x === hub || x.startsWith(hub + "/");
      });
      return check.ok;
    } catch {
      return false;
    }
  }

  private async handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const { metrics, log } = this.o;
    metrics.restRequests++;
    let url: URL | undefined;
    let parts: string[] = [];
    try {
      // Authenticate before looking at anything else the caller sent (path, query, body).
      if (!this.authorized(req.headers.authorization)) {
        metrics.restUnauthorized++;
        throw new HttpError(401, "IotHubUnauthorizedAccess", "Unauthorized");
      }
      url = parseRequestUrl(req.url);
      parts = segments(url.pathname);
      if (!url.searchParams.get("api-version"))
        throw new HttpError(400, "InvalidProtocolVersion", "api-version is required");
      const body = await readJson(req);
      const out = await this.route(req, url, parts, body);
      send(res, out.status, out.body, out.headers);
    } catch (e) {
      const err = toHttpError(e, parts.includes("modules"));
      const tid = trackingId();
      if (err.status >= 500 && err.status !== 503 && err.status !== 504) {
        // The stack goes to the hub's log only; the caller gets a one-line message and the tracking id.
        metrics.internalErrors++;
        log(
          `rest: ${req.method} ${url?.pathname ?? "?"} failed (tracking id ${tid}): ${(e as Error)?.stack ?? String(e)}`,
        );
        err.message = `internal error (tracking id ${tid})`;
      }
      const message =
        err.methodErrorCode !== undefined
          ? JSON.stringify({
              errorCode: err.methodErrorCode,
              trackingId: `${tid}-TimeStamp:${hubTimestamp()}`,
              message: err.message,
              info: { timeout: "00:00:00" },
              timestampUtc: new Date().toISOString(),
            })
          : `ErrorCode:${err.code};${err.message}`;
      send(
        res,
        err.status,
        {
          Message: message,
          ExceptionMessage:
            err.methodErrorCode !== undefined ? "" : `Tracking ID:${tid}-G:0-TimeStamp:${hubTimestamp()}`,
        },
        { "iothub-errorcode": err.code },
      );
    }
  }

  private async route(
    req: http.IncomingMessage,
    url: URL,
    p: string[],
    body: Json | undefined,
  ): Promise<{ status: number; body?: Json; headers?: Record<string, string> }> {
    const { identities } = this.o;
    const m = req.method ?? "GET";
    const ifMatch = req.headers["if-match"];
    const withEtag = (doc: JsonObject) => ({
      status: 200,
      body: doc,
      headers: { ETag: `"${String(doc.etag)}"` },
    });

    if (p[0] === "devices") {
      if (p.length === 1 && m === "GET") {
        const top = Math.min(Number(url.searchParams.get("top") ?? 1000) || 1000, 1000);
        return { status: 200, body: identities.listDevices().slice(0, top).map(deviceJson) };
      }
      if (p.length === 2 && p[1] === "query" && m === "POST") return this.query(req, body);
      if (p.length === 2) {
        const id = p[1];
        if (m === "GET") return withEtag(deviceJson(identities.require(id)));
        if (m === "DELETE") {
          identities.delete(id, undefined, ifMatch);
          return { status: 204 };
        }
        if (m === "PUT") {
          const spec = identitySpec(body, id, undefined);
          const { record } = identities.put(id, undefined, spec, ifMatch);
          return withEtag(deviceJson(record));
        }
      }
      if (p.length === 3 && p[2] === "modules" && m === "GET") {
        identities.require(p[1]);
        return { status: 200, body: identities.listModules(p[1]).map(moduleJson) };
      }
      if (p.length === 4 && p[2] === "modules") {
        const [, d, , mod] = p;
        if (m === "GET") return withEtag(moduleJson(identities.require(d, mod)));
        if (m === "DELETE") {
          identities.delete(d, mod, ifMatch);
          return { status: 204 };
        }
        if (m === "PUT") {
          const { record } = identities.put(d, mod, identitySpec(body, d, mod), ifMatch);
          return withEtag(moduleJson(record));
        }
      }
    }

    if (p[0] === "twins" && p.length >= 2) {
      const d = p[1];
      const isModule = p[2] === "modules" && p.length >= 4;
      const mod = isModule ? p[3] : undefined;
      const rest = p.slice(isModule ? 4 : 2);
      if (rest.length === 0) {
        if (m === "GET") return withEtag(twinJson(identities.require(d, mod)));
        if (m === "PATCH") return withEtag(twinJson(identities.patchTwin(d, mod, body, ifMatch).record));
        if (m === "PUT") return withEtag(twinJson(identities.replaceTwin(d, mod, body, ifMatch).record));
      }
      if (rest.length === 1 && rest[0] === "methods" && m === "POST") {
        identities.require(d, mod);
        const inv = parseInvocation(body);
        const result = await this.o.methods.invoke(clientIdOf(d, mod), inv);
        return { status: 200, body: { status: result.status, payload: result.payload } };
      }
    }

    if (p[0] === "configurations") {
      const { configurations } = this.o;
      if (p.length === 1 && m === "GET") {
        const top = Math.min(Number(url.searchParams.get("top") ?? 100) || 100, 100);
        return { status: 200, body: configurations.list(top) };
      }
      if (p.length === 2) {
        const id = p[1];
        if (m === "GET") return withEtag(configurations.get(id));
        if (m === "DELETE") {
          configurations.delete(id, ifMatch);
          return { status: 204 };
        }
        if (m === "PUT") {
          try {
            return withEtag(configurations.put(id, body, ifMatch).doc);
          } catch (e) {
            if (isFlotillaError(e) && e.code === "E_HUB_CONFLICT")
              throw new HttpError(409, "ConfigurationAlreadyExists", e.message);
            throw e;
          }
        }
      }
    }

    if (p.length === 3 && p[0] === "devices" && p[2] === "applyConfigurationContent" && m === "POST") {
      this.applyOnEdgeDevice(p[1], body);
      return { status: 200, body: {} };
    }

    if (p.length === 2 && p[0] === "statistics" && p[1] === "devices" && m === "GET") {
      const all = identities.listDevices();
      const enabled = all.filter((r) => r.status === "enabled").length;
      return {
        status: 200,
        body: {
          totalDeviceCount: all.length,
          enabledDeviceCount: enabled,
          disabledDeviceCount: all.length - enabled,
        },
      };
    }

    throw new HttpError(404, "NotFound", `no route for ${m} /${p.map(encodeURIComponent).join("/")}`);
  }

  /**
   * Configuration - Apply On Edge Device: content.modulesContent {<module>: {"properties.desired": {...}}} replaces
   * each named module twin's desired properties (the modules must exist; $edgeAgent/$edgeHub are skipped when the
   * device has no such module identity, as the local hub runs no IoT Edge runtime).
   */
  private applyOnEdgeDevice(deviceId: string, body: Json | undefined): void {
    const { identities } = this.o;
    identities.require(deviceId);
    const content = isJsonObject(body) && isJsonObject(body.content) ? body.content : body;
    const modules = isJsonObject(content) ? content.modulesContent : undefined;
    if (!isJsonObject(modules))
      throw new HttpError(400, "ArgumentInvalid", "content.modulesContent must be an object of module twins");
    const writes: [string, JsonObject][] = [];
    for (const [moduleId, twin] of Object.entries(modules)) {
      const desired = isJsonObject(twin) ? twin["properties.desired"] : undefined;
      if (!isJsonObject(desired))
        throw new HttpError(400, "ArgumentInvalid", `modulesContent.${moduleId} needs "properties.desired"`);
      if (!identities.get(deviceId, moduleId)) {
        if (moduleId.startsWith("$")) continue;
        identities.require(deviceId, moduleId);
      }
      writes.push([moduleId, desired]);
    }
    for (const [moduleId, desired] of writes)
      identities.replaceTwin(deviceId, moduleId, { properties: { desired } });
  }

  private query(req: http.IncomingMessage, body: Json | undefined) {
    if (!isJsonObject(body) || typeof body.query !== "string")
      throw new HttpError(400, "ArgumentInvalid", "body must be {query: string}");
    const pageHeader = req.headers["x-ms-max-item-count"];
    const pageSize = pageHeader === undefined ? undefined : Number(pageHeader);
    if (pageSize !== undefined && (!Number.isInteger(pageSize) || pageSize < 1)) {
      throw new HttpError(400, "ArgumentInvalid", "x-ms-max-item-count must be a positive integer");
    }
    const continuation = req.headers["x-ms-continuation"];
    const { identities } = this.o;
    const page = runQuery(
      body.query,
      (source) => (source === "devices" ? identities.listDevices() : identities.listModules()).map(twinJson),
      { pageSize, continuation: typeof continuation === "string" ? continuation : undefined },
    );
    const headers: Record<string, string> = { "x-ms-item-type": page.itemType };
    if (page.continuation) headers["x-ms-continuation"] = page.continuation;
    return { status: 200, body: page.items, headers };
  }
}

function identitySpec(body: Json | undefined, deviceId: string, moduleId: string | undefined): IdentitySpec {
  if (!isJsonObject(body)) throw new HttpError(400, "ArgumentInvalid", "identity body must be a JSON object");
  if (body.deviceId !== undefined && body.deviceId !== deviceId)
    throw new HttpError(400, "ArgumentInvalid", "deviceId in body does not match the URL");
  if (moduleId !== undefined && body.moduleId !== undefined && body.moduleId !== moduleId) {
    throw new HttpError(400, "ArgumentInvalid", "moduleId in body does not match the URL");
  }
  const auth = body.authentication;
  const spec: IdentitySpec = {};
  if (isJsonObject(auth)) {
    if (auth.type !== undefined && auth.type !== "sas") {
      throw new HttpError(
        400,
        "ArgumentInvalid",
        `authentication type ${String(auth.type)} is not supported by the local hub`,
      );
    }
    const sk = auth.symmetricKey;
    if (isJsonObject(sk)) {
      if (typeof sk.primaryKey === "string") spec.primaryKey = sk.primaryKey;
      if (typeof sk.secondaryKey === "string") spec.secondaryKey = sk.secondaryKey;
    }
  }
  if (body.status === "enabled" || body.status === "disabled") spec.status = body.status;
  else if (body.status !== undefined)
    throw new HttpError(400, "ArgumentInvalid", "status must be enabled or disabled");
  if (typeof body.statusReason === "string") spec.statusReason = body.statusReason;
  if (isJsonObject(body.capabilities) && typeof body.capabilities.iotEdge === "boolean")
    spec.iotEdge = body.capabilities.iotEdge;
  if (typeof body.managedBy === "string") spec.managedBy = body.managedBy;
  return spec;
}

async function readJson(req: http.IncomingMessage): Promise<Json | undefined> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > MAX_BODY)
      throw new HttpError(413, "RequestEntityTooLarge", "request body is larger than 1 MB");
    chunks.push(chunk as Buffer);
  }
  if (size === 0) return undefined;
  try {
    return parseClientJson(Buffer.concat(chunks).toString("utf8"), "a request body") as Json;
  } catch (e) {
    if (isFlotillaError(e)) throw new HttpError(400, "ArgumentInvalid", `${e.code}: ${e.message}`);
    throw new HttpError(400, "ArgumentInvalid", "request body is not valid JSON");
  }
}

function send(
  res: http.ServerResponse,
  status: number,
  body?: Json,
  headers: Record<string, string> = {},
): void {
  if (res.headersSent) return;
  const text = body === undefined ? "" : JSON.stringify(body);
  res.writeHead(status, {
    ...headers,
    ...(text ? { "Content-Type": "application/json; charset=utf-8" } : {}),
    "Content-Length": Buffer.byteLength(text),
  });
  res.end(text);
}
