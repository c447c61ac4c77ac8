/**
 * Where the dashboard's figures come from, both read-only:
 *
 *   - the aggregation Function's HTTP API (cloud/aggregator/src/http-api.ts): `GET /api/jobs` and
 *     `GET /api/jobs/{id}` (status, round records, the open round), with the function key in `x-functions-key`
 *     (the routes are `authLevel: "function"`, cloud/aggregator/src/index.ts);
 *   - the fleet's module twins through the unmodified azure-iothub Registry: one paged query
 *     `SELECT * FROM devices.modules WHERE moduleId IN ['trainer', 'update-queue', 'profiler']` (the connection
 *     state and last activity of each module, and what each reports: trainer `flotilla`, update-queue
 *     `updateQueue`, profiler `capabilities`). Against IoT Hub with a service connection string (a policy with
 *     registry read); against the local hub (local/hub) through its CA (local/hub/service-client.ts).
 *
 * Every failure becomes a FlotillaError with a stable code and a one-line message; nothing here throws anything
 * else, so the dashboard's poll loop shows the error and goes on.
 */
import * as fs from "node:fs";
import { Registry } from "azure-iothub";
import { FlotillaError, isFlotillaError } from "../../core/errors";
import { createRegistry } from "../hub";
import { parseConnectionString } from "../hub/sas";

/** The job summary of `GET /api/jobs` (cloud/aggregator/src/http-api.ts `summary`). */
export interface JobSummary {
  readonly jobId: string;
  readonly status: string;
  readonly strategy?: string;
  readonly currentRound: number;
  readonly rounds: number;
  readonly completedRounds?: number;
  readonly createdAt?: number;
  readonly updatedAt?: number;
  readonly stopReason?: string;
  readonly stopMessage?: string;
  readonly privacy?: { readonly epsilon?: number; readonly epsilonBudget?: number; readonly delta?: number };
}

/** `GET /api/jobs/{id}`: the summary, the round records and the open round. */
export interface JobDetail extends JobSummary {
  readonly history: readonly Record<string, unknown>[];
  readonly currentRoundState: {
    readonly round: number;
    readonly status: string;
    readonly participants: readonly string[];
    readonly received: readonly string[];
    readonly deadline?: number;
    readonly paused?: unknown;
  } | null;
  readonly definition?: { readonly strategyOptions?: { readonly clientsPerRound?: number } };
  /** Contribution quality per device (cloud/aggregator/src/http-api.ts qualityView), when the job keeps it. */
  readonly quality?: { readonly devices?: Readonly<Record<string, unknown>> };
}

export interface FunctionApi {
  /** Where it points (for messages and the page), without the key. */
  readonly url: string;
  listJobs(): Promise<JobSummary[]>;
  getJob(jobId: string): Promise<JobDetail>;
}

export interface FunctionApiOptions {
  /** The Function app's base URL (`https://<app>.azurewebsites.net`; a trailing `/api` is accepted). */
  readonly url: string;
  /** The function key (or the host key); absent for the local Functions host, which asks for none. */
  readonly key?: string;
  /** Per-request timeout, ms (default 10 000). */
  readonly timeoutMs?: number;
}

const oneLine = (s: string) => s.replace(/\s+/g, " ").trim().slice(0, 300);
const why = (e: unknown): string => {
  const err = e as { message?: unknown; cause?: { code?: unknown; message?: unknown } } | null;
  const cause = err?.cause;
  const causeText =
    cause && (typeof cause.code === "string" || typeof cause.message === "string")
      ? ` (${[cause.code, cause.message].filter((x) => typeof x === "string").join(": ")})`
      : "";
  return oneLine(`${typeof err?.message === "string" ? err.message : String(e)}${causeText}`);
};

/** The Function app's base URL checked and normalised (no trailing `/`, no `/api`). */
export function functionBaseUrl(url: string): string {
  let u: URL;
  try {
    u = new URL(url);
  } catch (e) {
    throw new FlotillaError("E_DASHBOARD_FUNCTION_URL", `'${oneLine(url)}' is not a URL`, { cause: e });
  }
  if (u.protocol !== "http:" && u.protocol !== "https:")
    throw new FlotillaError("E_DASHBOARD_FUNCTION_URL", `'${oneLine(url)}' is not an http(s) URL`);
  if (u.search || u.hash)
    throw new FlotillaError(
      "E_DASHBOARD_FUNCTION_URL",
      `'${oneLine(url)}': give the app's base URL without a query (the key goes in --function-key)`,
    );
  return `${u.origin}${u.pathname.replace(/\/+$/, "").replace(/\/api$/, "")}`;
}

/** A read-only client of the Function's job API; every failure is one coded FlotillaError. */
export function functionApi(opts: FunctionApiOptions): FunctionApi {
  const base = functionBaseUrl(opts.url);
  const timeoutMs = opts.timeoutMs ?? 10_000;
  const get = async (route: string): Promise<unknown> => {
    const target = `${base}/api/${route}`;
    let res: Response;
    try {
      res = await fetch(target, {
        headers: { accept: "application/json", ...(opts.key ? { "x-functions-key": opts.key } : {}) },
        signal: AbortSignal.timeout(timeoutMs),
      });
    } catch (e) {
      const timedOut = (e as { name?: string }).name === "TimeoutError";
      throw new FlotillaError(
        "E_DASHBOARD_FUNCTION_UNREACHABLE",
        timedOut ? `GET ${target}: no answer in ${timeoutMs} ms` : `GET ${target}: ${why(e)}`,
        { cause: e },
      );
    }
    const text = await res.text().catch(() => "");
    if (res.status === 401 || res.status === 403) {
      throw new FlotillaError(
        "E_DASHBOARD_FUNCTION_AUTH",
        `GET ${target}: HTTP ${res.status}: the Function refused the request: ` +
          (opts.key
            ? "wrong function key"
            : "it needs a function key (--function-key, FLOTILLA_FUNCTION_KEY)"),
      );
    }
    let body: unknown;
    try {
      body = text === "" ? undefined : JSON.parse(text);
    } catch {
      body = undefined;
    }
    if (!res.ok) {
      const b = body as { code?: unknown; message?: unknown } | undefined;
      // The Function's own coded errors (E_JOB_NOT_FOUND, ...) are relayed as they are.
      if (typeof b?.code === "string" && /^E_[A-Z0-9_]+$/.test(b.code))
        throw new FlotillaError(
          b.code,
          `GET ${target}: ${oneLine(String(b.message ?? `HTTP ${res.status}`))}`,
        );
      throw new FlotillaError(
        "E_DASHBOARD_FUNCTION_RESPONSE",
        `GET ${target}: HTTP ${res.status}${text ? `: ${oneLine(text).slice(0, 120)}` : ""}`,
      );
    }
    if (typeof body !== "object" || body === null)
      throw new FlotillaError(
        "E_DASHBOARD_FUNCTION_RESPONSE",
        `GET ${target}: the answer is not JSON (is this the Flotilla Function app?)`,
      );
    return body;
  };
  return {
    url: base,
    async listJobs() {
      const body = (await get("jobs")) as { jobs?: unknown };
      if (!Array.isArray(body.jobs))
        throw new FlotillaError("E_DASHBOARD_FUNCTION_RESPONSE", `GET ${base}/api/jobs: no 'jobs' list`);
      return body.jobs.filter(
        (j): j is JobSummary => typeof j === "object" && j !== null && typeof j.jobId === "string",
      );
    },
    async getJob(jobId) {
      const body = (await get(`jobs/${encodeURIComponent(jobId)}`)) as Partial<JobDetail>;
      if (typeof body.jobId !== "string" || !Array.isArray(body.history))
        throw new FlotillaError(
          "E_DASHBOARD_FUNCTION_RESPONSE",
          `GET ${base}/api/jobs/${jobId}: not a job document (no jobId or history)`,
        );
      return body as JobDetail;
    },
  };
}

/** A module twin as the query returns it (the fields the dashboard reads). */
export interface ModuleTwin {
  readonly deviceId: string;
  readonly moduleId: string;
  readonly connectionState?: string;
  readonly lastActivityTime?: string;
  readonly properties?: { readonly reported?: Record<string, unknown> };
}

export interface TwinSource {
  /** What it points at (the hub host name). */
  readonly hubName: string;
  /** The trainer, update-queue and profiler module twins of every device. */
  moduleTwins(): Promise<ModuleTwin[]>;
}

export const FLEET_MODULES = ["trainer", "update-queue", "profiler"] as const;
const FLEET_QUERY = `SELECT * FROM devices.modules WHERE moduleId IN [${FLEET_MODULES.map((m) => `'${m}'`).join(", ")}]`;

/** How the dashboard reaches the hub: a service connection string, and for a local hub its CA. */
export interface HubConnection {
  /** `HostName=..;SharedAccessKeyName=..;SharedAccessKey=..` (IoT Hub), `;GatewayHostName=host:port` (local hub). */
  readonly connectionString: string;
  /** The local hub's CA certificate (PEM text or a file); needed with GatewayHostName. */
  readonly caCertPem?: string;
  readonly caCertPath?: string;
  /** Per-query timeout, ms (default 15 000). */
  readonly timeoutMs?: number;
}

/** The JSON `flotilla hub` writes (.flotilla/hub.json): a local hub's service connection and CA. */
export function hubConnectionFromInfo(file: string): HubConnection {
  let info: { serviceConnectionString?: unknown; caCertPath?: unknown };
  try {
    info = JSON.parse(fs.readFileSync(file, "utf8")) as typeof info;
  } catch (e) {
    throw new FlotillaError("E_DASHBOARD_CONFIG", `hub info ${file}: ${why(e)}`, { cause: e });
  }
  if (typeof info?.serviceConnectionString !== "string" || typeof info.caCertPath !== "string")
    throw new FlotillaError(
      "E_DASHBOARD_CONFIG",
      `hub info ${file}: needs serviceConnectionString and caCertPath (the file \`flotilla hub\` writes)`,
    );
  return { connectionString: info.serviceConnectionString, caCertPath: info.caCertPath };
}

/** The connection string's fields, checked: one E_HUB_CONNECTION_STRING line for anything malformed. */
function checkConnectionString(cs: string): Record<string, string> {
  let fields: Record<string, string>;
  try {
    fields = parseConnectionString(cs);
  } catch (e) {
    throw new FlotillaError("E_HUB_CONNECTION_STRING", `IoT Hub connection string: ${why(e)}`, { cause: e });
  }
  const missing = ["HostName", "SharedAccessKeyName", "SharedAccessKey"].filter((k) => !fields[k]);
  if (missing.length > 0)
    throw new FlotillaError(
      "E_HUB_CONNECTION_STRING",
      `IoT Hub connection string: missing ${missing.join(", ")} (expected a service policy's ` +
        `HostName=...;SharedAccessKeyName=...;SharedAccessKey=...)`,
    );
  if (fields.DeviceId)
    throw new FlotillaError(
      "E_HUB_CONNECTION_STRING",
      "IoT Hub connection string: this is a device connection string; the dashboard needs a service policy's " +
        "(registry read), e.g. from `az iot hub connection-string show --policy-name registryRead`",
    );
  return fields;
}

/** An azure-iothub error (or a network one) as one coded line. */
export function hubError(e: unknown, hubName: string): FlotillaError {
  if (isFlotillaError(e)) return e;
  const err = e as { name?: string; code?: string; response?: { statusCode?: number } };
  const status = err?.response?.statusCode;
  const base = `IoT Hub ${hubName}: ${why(e)}`;
  if (status === 401 || status === 403 || err?.name === "UnauthorizedError")
    return new FlotillaError("E_HUB_AUTH", `${base} (check the policy name and key)`, { cause: e });
  if (status !== undefined)
    return new FlotillaError("E_HUB_REGISTRY", `${base} (HTTP ${status})`, { cause: e });
  return new FlotillaError("E_DASHBOARD_HUB_UNREACHABLE", base, { cause: e });
}

/** Reads the fleet's module twins with the azure-iothub Registry (IoT Hub, or the local hub when GatewayHostName is set). */
export function twinSource(conn: HubConnection): TwinSource {
  const fields = checkConnectionString(conn.connectionString);
  const hubName = fields.HostName;
  let registry: Registry;
  try {
    registry = fields.GatewayHostName
      ? createRegistry({
          serviceConnectionString: conn.connectionString,
          ...(conn.caCertPem ? { caCertPem: conn.caCertPem } : {}),
          ...(conn.caCertPath ? { caCertPath: conn.caCertPath } : {}),
        })
      : Registry.fromConnectionString(conn.connectionString);
  } catch (e) {
    if (isFlotillaError(e)) throw e;
    throw new FlotillaError("E_HUB_CONNECTION_STRING", `IoT Hub connection string: ${why(e)}`, { cause: e });
  }
  const timeoutMs = conn.timeoutMs ?? 15_000;
  return {
    hubName,
    async moduleTwins() {
      const q = registry.createQuery(FLEET_QUERY, 100);
      const out: ModuleTwin[] = [];
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(
          () =>
            reject(
              new FlotillaError(
                "E_DASHBOARD_HUB_UNREACHABLE",
                `IoT Hub ${hubName}: no answer to the twin query in ${timeoutMs} ms`,
              ),
            ),
          timeoutMs,
        );
      });
      try {
        do {
          // The continuation token must be passed (cloud/aggregator/src/fleet/fleet.ts): without it the promise
          // form asks for the first page again.
          const page = await Promise.race([q.next(q.continuationToken), timeout]);
          for (const t of (page.result as unknown as ModuleTwin[]) ?? []) {
            if (t && typeof t.deviceId === "string" && typeof t.moduleId === "string") out.push(t);
          }
        } while (q.hasMoreResults);
      } catch (e) {
        throw hubError(e, hubName);
      } finally {
        clearTimeout(timer);
      }
      return out;
    },
  };
}
