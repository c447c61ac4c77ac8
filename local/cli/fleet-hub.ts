/**
 * How `flotilla fleet` reaches an IoT hub: the azure-iothub Registry only (the same calls against Azure IoT Hub and
 * the local hub; for the local hub, ../hub/service-client points the unmodified SDK at it).
 *
 * Where the hub comes from, first match wins: --hub-info FILE (what `flotilla hub` writes); --hub-connection-string
 * or $IOTHUB_SERVICE_CONNECTION_STRING (with --hub-ca / $FLOTILLA_HUB_CA for a local hub's GatewayHostName); else
 * the running local hub's .flotilla/hub.json in the working directory.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { Registry } from "azure-iothub";
import { FlotillaError, isFlotillaError } from "../../core/errors";
import { createRegistry } from "../hub/service-client";
import { parseConnectionString } from "../hub/sas";

export interface FleetHubOptions {
  readonly hubConnectionString?: string;
  readonly hubCa?: string;
  readonly hubInfo?: string;
}

export interface FleetHub {
  readonly hubName: string;
  readonly registry: Registry;
  /** Runs one Registry call with a deadline; any failure is one coded FlotillaError (fleetHubError). */
  call<T>(what: string, f: () => Promise<T>): Promise<T>;
}

/** How long one Registry call may take before the hub counts as unreachable. */
export const HUB_CALL_TIMEOUT_MS = 20_000;
export const DEFAULT_HUB_INFO = path.join(".flotilla", "hub.json");

function why(e: unknown): string {
  return (e instanceof Error ? e.message : String(e)).split("\n")[0];
}

function readInfo(file: string): { connectionString: string; caCertPath?: string } {
  let info: { serviceConnectionString?: unknown; caCertPath?: unknown };
  try {
    info = JSON.parse(fs.readFileSync(file, "utf8")) as typeof info;
  } catch (e) {
    throw new FlotillaError("E_FLEET_HUB", `hub info ${file}: ${why(e)}`, { cause: e });
  }
  if (typeof info?.serviceConnectionString !== "string")
    throw new FlotillaError(
      "E_FLEET_HUB",
      `hub info ${file}: needs serviceConnectionString (the file \`flotilla hub\` writes)`,
    );
  return {
    connectionString: info.serviceConnectionString,
    ...(typeof info.caCertPath === "string" ? { caCertPath: info.caCertPath } : {}),
  };
}

/** The hub's Registry from the options (see the file comment for the order). */
export function openFleetHub(
  o: FleetHubOptions,
  env: NodeJS.ProcessEnv = process.env,
  cwd = process.cwd(),
): FleetHub {
  let conn: { connectionString: string; caCertPath?: string };
  if (o.hubInfo !== undefined && o.hubConnectionString !== undefined)
    throw new FlotillaError("E_CONFIG_CONFLICT", "give --hub-info or --hub-connection-string, not both");
  const fromEnv = env.IOTHUB_SERVICE_CONNECTION_STRING || undefined;
  const defaultInfo = path.resolve(cwd, DEFAULT_HUB_INFO);
  if (o.hubInfo !== undefined) conn = readInfo(o.hubInfo);
  else if (o.hubConnectionString !== undefined || fromEnv !== undefined) {
    const ca = o.hubCa ?? (env.FLOTILLA_HUB_CA || undefined);
    conn = { connectionString: (o.hubConnectionString ?? fromEnv)!, ...(ca ? { caCertPath: ca } : {}) };
  } else if (fs.existsSync(defaultInfo)) conn = readInfo(defaultInfo);
  else
    throw new FlotillaError(
      "E_FLEET_HUB",
      "no IoT hub: give --hub-connection-string (or $IOTHUB_SERVICE_CONNECTION_STRING) or --hub-info, " +
        `or run \`flotilla hub\` here (it writes ${DEFAULT_HUB_INFO})`,
    );
  let fields: Record<string, string>;
  try {
    fields = parseConnectionString(conn.connectionString);
  } catch (e) {
    throw new FlotillaError("E_HUB_CONNECTION_STRING", `IoT Hub connection string: ${why(e)}`, { cause: e });
  }
  const missing = ["HostName", "SharedAccessKeyName", "SharedAccessKey"].filter((k) => !fields[k]);
  if (missing.length > 0 || fields.DeviceId)
    throw new FlotillaError(
      "E_HUB_CONNECTION_STRING",
      `IoT Hub connection string: expected a service policy's HostName=...;SharedAccessKeyName=...;SharedAccessKey=... ` +
        `(e.g. \`az iot hub connection-string show --policy-name service\`)`,
    );
  const hubName = fields.HostName;
  let registry: Registry;
  try {
    if (fields.GatewayHostName) {
      if (!conn.caCertPath)
        throw new FlotillaError(
          "E_HUB_CONNECTION_STRING",
          "a connection string with GatewayHostName (a local hub) needs its CA: --hub-ca or $FLOTILLA_HUB_CA",
        );
      registry = createRegistry({
        serviceConnectionString: conn.connectionString,
        caCertPath: conn.caCertPath,
      });
    } else registry = Registry.fromConnectionString(conn.connectionString);
  } catch (e) {
    if (isFlotillaError(e)) throw e;
    throw new FlotillaError("E_HUB_CONNECTION_STRING", `IoT Hub connection string: ${why(e)}`, { cause: e });
  }
  return {
    hubName,
    registry,
    async call<T>(what: string, f: () => Promise<T>): Promise<T> {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () =>
            reject(
              new FlotillaError(
                "E_FLEET_HUB_UNREACHABLE",
                `IoT Hub ${hubName}: no answer to ${what} in ${HUB_CALL_TIMEOUT_MS / 1000} s`,
              ),
            ),
          HUB_CALL_TIMEOUT_MS,
        );
      });
      try {
        return await Promise.race([f(), timeout]);
      } catch (e) {
        throw fleetHubError(e, hubName, what);
      } finally {
        clearTimeout(timer);
      }
    },
  };
}

/** The HTTP status of an azure-iothub error, if it got an answer. */
export function statusOf(e: unknown): number | undefined {
  const err = e as { response?: { statusCode?: number }; responseBody?: unknown; cause?: unknown };
  return err?.response?.statusCode ?? (isFlotillaError(e) ? statusOf(e.cause) : undefined);
}

/** An azure-iothub (or network) failure as one coded line. */
export function fleetHubError(e: unknown, hubName: string, what: string): FlotillaError {
  if (isFlotillaError(e)) return e;
  const status = statusOf(e);
  const base = `IoT Hub ${hubName}: ${what}: ${why(e)}`;
  if (status === 401 || status === 403 || (e as { name?: string })?.name === "UnauthorizedError")
    return new FlotillaError("E_HUB_AUTH", `${base} (check the policy name and key)`, { cause: e });
  if (status === 400 && /query/i.test(what))
    return new FlotillaError("E_HUB_QUERY", `${base} (HTTP 400)`, { cause: e });
  if (status !== undefined)
    return new FlotillaError("E_HUB_REGISTRY", `${base} (HTTP ${status})`, { cause: e });
  return new FlotillaError("E_FLEET_HUB_UNREACHABLE", base, { cause: e });
}

/** Every row of a twin query, page by page (the continuation token must be passed back: fleet.ts). */
export async function queryAll<T>(hub: FleetHub, sql: string, pageSize = 100): Promise<T[]> {
  const q = hub.registry.createQuery(sql, pageSize);
  const out: T[] = [];
  do {
    const page = await hub.call(`the query ${sql}`, () => q.next(q.continuationToken));
    out.push(...((page.result as unknown as T[]) ?? []));
  } while (q.hasMoreResults);
  return out;
}

/** A string literal of the IoT Hub query language ('...' with ' doubled). */
export function sqlString(s: string): string {
  return `'${s.replace(/'/g, "''")}'`;
}
