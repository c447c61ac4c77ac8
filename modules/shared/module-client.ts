import { MAX_THREADS } from "../../core/engine/threads";
import { readFileSync } from "node:fs";
import { ModuleClient } from "azure-iot-device";
import { Mqtt } from "azure-iot-device-mqtt";
import { FlotillaError, fail, isFlotillaError } from "../../core/errors";

/**
 * What every Flotilla edge module shares: how it finds its hub (IoT Edge runtime variables, or a connection
 * string + CA when run locally), start-up validation that names every missing or invalid setting, and small
 * helpers around the azure-iot-device twin/method API (azure-iot-device 1.18).
 *
 *   FLOTILLA_CONNECTION_STRING   module connection string, when not on IoT Edge
 *   FLOTILLA_CA_CERT             PEM file of the gateway's CA, when not on IoT Edge (optional)
 *   FLOTILLA_LOG_LEVEL           debug | info | warn | error (default info; core/log.ts)
 *   FLOTILLA_LOG_FORMAT          json | text (default json: one object per line)
 *
 * The link, the twin, methods and stopping are the module host's (./host.ts). On IoT Edge (any IOTEDGE_* variable, or EdgeHubConnectionString) the edge runtime's variables are used instead.
 */
export type Env = Readonly<Record<string, string | undefined>>;

/** What ModuleClient.fromEnvironment needs when EdgeHubConnectionString is not set (azure-iot-device 1.18). */
export const IOTEDGE_VARIABLES = [
  "IOTEDGE_WORKLOADURI",
  "IOTEDGE_DEVICEID",
  "IOTEDGE_MODULEID",
  "IOTEDGE_IOTHUBHOSTNAME",
  "IOTEDGE_AUTHSCHEME",
  "IOTEDGE_MODULEGENERATIONID",
] as const;

export type ConnectionConfig =
  | { readonly mode: "edge"; readonly deviceId?: string }
  | {
      readonly mode: "connectionString";
      readonly connectionString: string;
      readonly caCertPath?: string;
      readonly deviceId?: string;
    };

/** Collects configuration problems, then throws one error naming all of them. */
export class ConfigProblems {
  readonly missing: string[] = [];
  readonly invalid: string[] = [];
  constructor(
    private readonly moduleName: string,
    private readonly env: Env,
  ) {}

  /** A trimmed, non-empty value, or undefined. */
  value(name: string): string | undefined {
    const v = this.env[name];
    return v === undefined || v.trim() === "" ? undefined : v.trim();
  }

  /** A number from `min` to `max` (integers only when `integer`), or the fallback (noting an invalid value). */
  number(name: string, fallback: number, min: number, max: number, integer = true): number {
    const raw = this.value(name);
    if (raw === undefined) return fallback;
    const n = Number(raw);
    const ok = integer ? /^\d+$/.test(raw) && Number.isSafeInteger(n) : Number.isFinite(n);
    if (!ok || n < min || n > max) {
      this.invalid.push(`${name}=${raw} (${integer ? "an integer" : "a number"} from ${min} to ${max})`);
      return fallback;
    }
    return n;
  }

  /**
   * FLOTILLA_THREADS, the training threads of the device's wasm backend (docs/threads.md): 1 to MAX_THREADS or
   * "auto"; undefined (unset or "auto") = the device's cores, at most DEFAULT_MAX_THREADS.
   */
  threads(name = "FLOTILLA_THREADS"): number | undefined {
    const raw = this.value(name);
    if (raw === undefined || raw === "auto") return undefined;
    return this.number(name, 1, 1, MAX_THREADS);
  }

  /** Throws E_CONFIG_MISSING / E_CONFIG_INVALID naming every problem found. */
  check(): void {
    const m = this.moduleName;
    if (this.missing.length > 0) {
      const s = this.missing.length > 1 ? "s" : "";
      fail("E_CONFIG_MISSING", `${m}: missing setting${s}: ${this.missing.join(", ")}`);
    }
    if (this.invalid.length > 0) {
      const s = this.invalid.length > 1 ? "s" : "";
      fail("E_CONFIG_INVALID", `${m}: invalid setting${s}: ${this.invalid.join(", ")}`);
    }
  }
}

/** Reads how to connect: the IoT Edge runtime's variables, or FLOTILLA_CONNECTION_STRING (+ FLOTILLA_CA_CERT). */
export function readConnection(p: ConfigProblems): ConnectionConfig {
  const onEdge =
    p.value("EdgeHubConnectionString") !== undefined ||
    IOTEDGE_VARIABLES.some((name) => p.value(name) !== undefined);
  if (onEdge) {
    const edgeCs = p.value("EdgeHubConnectionString");
    if (edgeCs === undefined) {
      for (const name of IOTEDGE_VARIABLES) if (p.value(name) === undefined) p.missing.push(name);
      const scheme = p.value("IOTEDGE_AUTHSCHEME");
      if (scheme !== undefined && scheme !== "sasToken")
        p.invalid.push(`IOTEDGE_AUTHSCHEME=${scheme} (only sasToken)`);
    }
    const deviceId = p.value("IOTEDGE_DEVICEID") ?? (edgeCs ? csField(edgeCs, "DeviceId") : undefined);
    return { mode: "edge", deviceId };
  }
  const connectionString = p.value("FLOTILLA_CONNECTION_STRING");
  if (connectionString === undefined) {
    p.missing.push("FLOTILLA_CONNECTION_STRING (or run on IoT Edge, which sets IOTEDGE_*)");
  } else if (
    csField(connectionString, "HostName") === undefined ||
    csField(connectionString, "DeviceId") === undefined ||
    csField(connectionString, "ModuleId") === undefined ||
    csField(connectionString, "SharedAccessKey") === undefined
  ) {
    p.invalid.push("FLOTILLA_CONNECTION_STRING (needs HostName=…;DeviceId=…;ModuleId=…;SharedAccessKey=…)");
  }
  return {
    mode: "connectionString",
    connectionString: connectionString ?? "",
    caCertPath: p.value("FLOTILLA_CA_CERT"),
    deviceId: connectionString ? csField(connectionString, "DeviceId") : undefined,
  };
}

/** One `Key=value` field of a connection string. */
export function csField(cs: string, key: string): string | undefined {
  for (const part of cs.split(";")) {
    const i = part.indexOf("=");
    if (i > 0 && part.slice(0, i).trim() === key) {
      const v = part.slice(i + 1).trim();
      return v === "" ? undefined : v;
    }
  }
  return undefined;
}

/**
 * Creates the module client: from the IoT Edge environment, or from a connection string (+ CA) when local. It
 * announces the module's IoT Plug and Play model ID (`modelId`, the module's model.ts MODEL_ID) when it connects.
 */
export async function createModuleClient(
  connection: ConnectionConfig,
  modelId: string,
): Promise<ModuleClient> {
  if (connection.mode === "edge") {
    // The callback form: the promise form skipped the EdgeHubConnectionString branch in a version we read.
    const client = await new Promise<ModuleClient>((resolve, reject) =>
      ModuleClient.fromEnvironment(Mqtt, (err, client) => (err || !client ? reject(err) : resolve(client))),
    );
    await announceModel(client, modelId);
    return client;
  }
  const client = ModuleClient.fromConnectionString(connection.connectionString, Mqtt);
  await announceModel(client, modelId);
  if (connection.caCertPath) {
    let ca: string;
    try {
      ca = readFileSync(connection.caCertPath, "utf8");
    } catch (e) {
      return fail(
        "E_CONFIG_CA_CERT",
        `FLOTILLA_CA_CERT: cannot read ${connection.caCertPath}: ${errorText(e)}`,
        { cause: e },
      );
    }
    if (!ca.includes("-----BEGIN CERTIFICATE-----"))
      fail("E_CONFIG_CA_CERT", `FLOTILLA_CA_CERT: ${connection.caCertPath} is not a PEM certificate`);
    // PEM text, not the path: a path breaks the SDK's file-upload client.
    await client.setOptions({ ca });
  }
  return client;
}

/**
 * Announces an IoT Plug and Play model ID (a DTMI) at every connection: the SDK's `modelId` option, set before
 * open(). The MQTT transport adds `&model-id={modelId}` to the CONNECT user name (azure-iot-device-mqtt 1.16);
 * IoT Hub and edgeHub then show it as the module twin's `modelId`, and IoT Explorer, IoT Central and the portal
 * render the module with its model (dtdl/, docs/operations.md "Plug and Play models").
 */
export async function announceModel(
  client: { setOptions(options: { modelId: string }): Promise<unknown> },
  modelId: string,
): Promise<void> {
  await client.setOptions({ modelId });
}

// --- twin / method helpers -------------------------------------------------------------------------------------

export interface TwinLike {
  properties: { desired: Record<string, unknown>; reported: Record<string, unknown> };
  on(event: "properties.desired", listener: (delta: Record<string, unknown>) => void): unknown;
  on(event: "error", listener: (err: Error) => void): unknown;
  removeListener(event: "properties.desired", listener: (delta: Record<string, unknown>) => void): unknown;
  removeListener(event: "error", listener: (err: Error) => void): unknown;
}

export interface MethodRequestLike {
  payload?: unknown;
}

export interface MethodResponseLike {
  send(status: number, payload?: unknown): Promise<void>;
}

/** The slice of ModuleClient (azure-iot-device 1.18) the trainer and profiler use; a launcher may pass its own. */
export interface EdgeModuleClient {
  open(): Promise<unknown>;
  close(): Promise<unknown>;
  on(event: "connect", listener: () => void): unknown;
  on(event: "disconnect" | "error", listener: (err?: unknown) => void): unknown;
  removeListener(event: "connect", listener: () => void): unknown;
  removeListener(event: "disconnect" | "error", listener: (err?: unknown) => void): unknown;
  sendOutputEvent(outputName: string, msg: import("azure-iot-device").Message): Promise<unknown>;
  getTwin(): Promise<TwinLike>;
  onMethod(
    methodName: string,
    callback: (request?: MethodRequestLike, response?: MethodResponseLike) => void,
  ): void;
}

type ReportedUpdate = (patch: Record<string, unknown>, done: (err?: Error) => void) => void;

/**
 * Patches reported properties. The SDK's `reported.update` has only the callback form (no promise; calling it
 * without a callback crashes), and the SDK never times out a twin request, so this one does.
 */
export function updateReported(
  twin: TwinLike,
  patch: Record<string, unknown>,
  timeoutMs = 30_000,
): Promise<void> {
  const update = twin.properties.reported.update as ReportedUpdate | undefined;
  if (typeof update !== "function")
    return Promise.reject(new FlotillaError("E_TWIN", "the twin cannot update reported properties"));
  return withTimeout(
    new Promise<void>((resolve, reject) =>
      update.call(twin.properties.reported, patch, (err) => (err ? reject(err) : resolve())),
    ),
    timeoutMs,
    "reported-property update",
  );
}

/** A method payload as an object (the SDK hands JSON already parsed, or a Buffer/string). */
export function parsePayload(payload: unknown): Record<string, unknown> | undefined {
  let p = payload;
  if (Buffer.isBuffer(p)) p = p.toString("utf8");
  if (typeof p === "string") {
    try {
      p = JSON.parse(p);
    } catch {
      return undefined;
    }
  }
  return typeof p === "object" && p !== null && !Array.isArray(p)
    ? (p as Record<string, unknown>)
    : undefined;
}

export function withTimeout<T>(
  p: Promise<T>,
  ms: number,
  what: string,
  opts: { readonly keepAlive?: boolean; readonly signal?: AbortSignal } = {},
): Promise<T> {
  let t: NodeJS.Timeout | undefined;
  let onAbort: (() => void) | undefined;
  const timeout = new Promise<never>((_, reject) => {
    t = setTimeout(() => reject(new FlotillaError("E_TIMEOUT", `${what} got no answer in ${ms} ms`)), ms);
    // A pending SDK request must not keep a stopping process alive; the open client keeps a running one alive.
    // `keepAlive`: the timeout itself holds the process (e.g. a start-up wait whose outcome decides what runs next);
    // `signal` (a module stopping) then ends the wait at once.
    if (!opts.keepAlive) t.unref();
    const signal = opts.signal;
    if (signal) {
      onAbort = () => reject(signal.reason);
      if (signal.aborted) onAbort();
      else signal.addEventListener("abort", onAbort, { once: true });
    }
  });
  return Promise.race([p, timeout]).finally(() => {
    clearTimeout(t);
    if (onAbort) opts.signal?.removeEventListener("abort", onAbort);
  });
}

export function errorText(e: unknown): string {
  if (isFlotillaError(e)) return `${e.code}: ${e.message}`;
  return e instanceof Error ? e.message : String(e);
}
