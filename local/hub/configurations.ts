/**
 * IoT Hub automatic device management (ADM) configurations: automatic device configurations (content.deviceContent,
 * applied to device twins) and automatic module configurations (content.moduleContent, applied to module twins).
 *
 * Spec: "Automatic IoT device and module management" (https://learn.microsoft.com/azure/iot-hub/
 * iot-hub-automatic-device-management) and the service REST API, api-version 2021-04-12, "Configuration":
 *   PUT /configurations/{id} (Create Or Update; If-Match for an update), GET /configurations/{id},
 *   GET /configurations (no paging), DELETE /configurations/{id}.
 *   - id: up to 128 lowercase letters, digits and -+%_*!' ; at most 100 configurations (standard tier);
 *   - content: "properties.desired.<path>" keys to JSON values (null removes the property); the content and the id
 *     cannot be updated, only the target condition, priority, labels and metrics;
 *   - targetCondition: a device configuration's is a condition on device twins (tags, reported properties,
 *     deviceId) or "*"; a module configuration's is "FROM devices.modules WHERE <condition on module twins>" and
 *     cannot target all modules. Device configurations see device twin tags only, module configurations module
 *     twin tags only;
 *   - priority: on overlapping paths the higher priority wins, on a tie the configuration created last;
 *   - a twin that leaves the target (or a deleted configuration) has the configuration's settings removed and takes
 *     the next highest priority configuration's, if any;
 *   - each targeted twin shows `configurations.<id>.status` "Targeted" or "Applied" (queried as
 *     `configurations.[[id]].status`); systemMetrics.results {targetedCount, appliedCount}; up to 5 custom
 *     metrics.queries, each result the number of rows its query returns.
 * The real service evaluates configurations shortly after a change and then every five minutes. Here: at once on a
 * configuration change, soon after a twin's tags change or an identity is created, and every `intervalMs`
 * (configurable, for reported-property conditions); metrics are computed when a configuration is read.
 * A value the configuration wrote is not written again while it stays the winner, so an operator's later direct
 * change to the same property stands until the configuration (or the winner) changes.
 */
import * as fs from "node:fs";
import * as path from "node:path";
import { FlotillaError } from "../../core/errors";
import { type IdentityRecord, type IdentityStore, twinJson } from "./identities";
import { evaluate, parseCondition, parseQuery, resolveIn, runQuery, type Expr } from "./query";
import { isJsonObject, type Json, type JsonObject, validateTwinObject } from "./twin";

export const CONFIGURATION_LIMITS = { configurations: 100, metrics: 5, idLength: 128 } as const;
const ID_PATTERN = /^[a-z0-9\-+%_*!']{1,128}$/;
const MODULE_PREFIX = /^\s*from\s+devices\.modules\s+where\s+/i;
const DESIRED_PREFIX = "properties.desired.";
/** Default re-evaluation period of the local hub (the real service's is five minutes). */
export const DEFAULT_CONFIGURATION_INTERVAL_MS = 30_000;

type Kind = "device" | "module";

interface Configuration {
  id: string;
  schemaVersion: string;
  labels: Record<string, string>;
  kind: Kind;
  content: JsonObject;
  targetCondition: string;
  priority: number;
  metricQueries: Record<string, string>;
  createdTimeUtc: string;
  lastUpdatedTimeUtc: string;
  version: number;
  /** Parsed target (undefined: "*", every device twin). */
  target?: Expr;
}

/** What one configuration wrote on one twin, per content path: the JSON of the value. */
type Applied = Map<string, { configId: string; value: string }>;

function bad(message: string): never {
  throw new FlotillaError("E_HUB_CONFIGURATION", message);
}

function twinKey(r: IdentityRecord): string {
  return r.moduleId === undefined ? r.deviceId : `${r.deviceId}/${r.moduleId}`;
}

/** "properties.desired.a.b" -> ["a", "b"]. */
function desiredPath(key: string): string[] {
  if (!key.startsWith(DESIRED_PREFIX)) bad(`content key '${key}' must start with '${DESIRED_PREFIX}'`);
  const p = key.slice(DESIRED_PREFIX.length).split(".");
  if (p.some((s) => s === "" || s.startsWith("$")))
    bad(`content key '${key}' is not a desired-property path`);
  return p;
}

function nested(p: readonly string[], value: Json): JsonObject {
  let v: Json = value;
  for (let i = p.length - 1; i >= 0; i--) v = { [p[i]]: v };
  return v as JsonObject;
}

function parseTarget(kind: Kind, condition: string): Expr | undefined {
  const c = condition.trim();
  if (kind === "module") {
    if (!MODULE_PREFIX.test(c))
      bad("a module configuration's targetCondition must start with 'FROM devices.modules WHERE'");
    const rest = c.replace(MODULE_PREFIX, "");
    if (rest.trim() === "*") bad("a module configuration cannot target all modules with '*'");
    return parseCondition(rest);
  }
  if (c === "*") return undefined;
  if (MODULE_PREFIX.test(c)) bad("a device configuration's targetCondition is a condition on device twins");
  return parseCondition(c);
}

export interface ConfigurationStoreOptions {
  identities: IdentityStore;
  /** Re-evaluation period (ms); 0 disables the timer. */
  intervalMs?: number;
  /** Where the configurations are saved (undefined: memory only). */
  file?: string;
  log: (line: string) => void;
}

export class ConfigurationStore {
  private readonly configs = new Map<string, Configuration>();
  /** Per twin (device id or device/module): the paths configurations wrote. */
  private readonly applied = new Map<string, Applied>();
  /** Per twin: configuration id -> "Targeted" | "Applied". */
  private readonly status = new Map<string, Record<string, "Targeted" | "Applied">>();
  private timer: NodeJS.Timeout | undefined;
  private soon: NodeJS.Immediate | undefined;
  private evaluating = false;

  constructor(private readonly o: ConfigurationStoreOptions) {
    if (o.file) this.load(o.file);
    const interval = o.intervalMs ?? DEFAULT_CONFIGURATION_INTERVAL_MS;
    if (interval > 0) {
      this.timer = setInterval(() => this.evaluateSafely(), interval);
      this.timer.unref();
    }
    o.identities.onTwinChanged(() => this.schedule());
    if (this.configs.size > 0) this.schedule();
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    if (this.soon) clearImmediate(this.soon);
    this.timer = undefined;
    this.soon = undefined;
  }

  /** The `configurations` a twin document shows ({id: {status}}), if any. */
  twinConfigurations(r: IdentityRecord): JsonObject | undefined {
    const s = this.status.get(twinKey(r));
    if (!s || Object.keys(s).length === 0) return undefined;
    return Object.fromEntries(Object.entries(s).map(([id, status]) => [id, { status }]));
  }

  /** PUT /configurations/{id}: create (no If-Match) or update (If-Match: the etag or *). */
  put(id: string, body: unknown, ifMatch: string | undefined): { doc: JsonObject; created: boolean } {
    if (!ID_PATTERN.test(id))
      bad(`configuration id '${id}': up to 128 lowercase letters, digits and -+%_*!'`);
    if (!isJsonObject(body)) bad("the configuration must be a JSON object");
    if (body.id !== undefined && body.id !== id) bad("id in the body does not match the URL");
    const existing = this.configs.get(id);
    const next = this.parse(id, body, existing);
    if (existing) {
      if (ifMatch === undefined)
        throw new FlotillaError("E_HUB_CONFLICT", `configuration '${id}' already exists`);
      if (ifMatch !== "*" && ifMatch !== '"*"' && ifMatch.replace(/^"|"$/g, "") !== etag(existing))
        throw new FlotillaError("E_HUB_PRECONDITION", "configuration etag mismatch");
      if (JSON.stringify(existing.content) !== JSON.stringify(next.content))
        bad(`the content of configuration '${id}' cannot be updated (create a new configuration)`);
      next.createdTimeUtc = existing.createdTimeUtc;
      next.version = existing.version + 1;
    } else if (this.configs.size >= CONFIGURATION_LIMITS.configurations) {
      bad(`a hub holds at most ${CONFIGURATION_LIMITS.configurations} configurations`);
    }
    this.configs.set(id, next);
    this.save();
    this.evaluateSafely();
    return { doc: this.toJson(next), created: !existing };
  }

  get(id: string): JsonObject {
    const c = this.configs.get(id);
    if (!c) throw new FlotillaError("E_HUB_CONFIGURATION_NOT_FOUND", `Configuration ${id} not found`);
    return this.toJson(c);
  }

  list(top?: number): JsonObject[] {
    return [...this.configs.values()].slice(0, top).map((c) => this.toJson(c));
  }

  delete(id: string, ifMatch: string | undefined): void {
    const c = this.configs.get(id);
    if (!c) throw new FlotillaError("E_HUB_CONFIGURATION_NOT_FOUND", `Configuration ${id} not found`);
    if (
      ifMatch !== undefined &&
      ifMatch !== "*" &&
      ifMatch !== '"*"' &&
      ifMatch.replace(/^"|"$/g, "") !== etag(c)
    )
      throw new FlotillaError("E_HUB_PRECONDITION", "configuration etag mismatch");
    this.configs.delete(id);
    this.save();
    this.evaluateSafely();
  }

  private parse(id: string, body: JsonObject, existing: Configuration | undefined): Configuration {
    const content = body.content;
    if (!isJsonObject(content)) bad("content must be an object with deviceContent or moduleContent");
    if (content.modulesContent !== undefined)
      bad("IoT Edge deployments (content.modulesContent) are not served by the local hub's configurations");
    const kinds = (["deviceContent", "moduleContent"] as const).filter((k) => content[k] !== undefined);
    if (kinds.length !== 1) bad("content must have exactly one of deviceContent or moduleContent");
    const kind: Kind = kinds[0] === "deviceContent" ? "device" : "module";
    const settings = content[kinds[0]];
    if (!isJsonObject(settings) || Object.keys(settings).length === 0)
      bad(`content.${kinds[0]} must map at least one "properties.desired.<name>" to a value`);
    for (const [k, v] of Object.entries(settings)) {
      const p = desiredPath(k);
      validateTwinObject(nested(p, v), "desired");
    }
    const targetCondition = body.targetCondition;
    if (typeof targetCondition !== "string" || targetCondition.trim() === "")
      bad("targetCondition is required");
    const target = parseTarget(kind, targetCondition);
    const priority = body.priority ?? 0;
    if (typeof priority !== "number" || !Number.isInteger(priority) || priority < 0)
      bad("priority must be a non-negative integer");
    const labels: Record<string, string> = {};
    if (body.labels !== undefined && body.labels !== null) {
      if (!isJsonObject(body.labels)) bad("labels must be an object of strings");
      for (const [k, v] of Object.entries(body.labels)) {
        if (typeof v !== "string" || k.startsWith("$"))
          bad(`label '${k}' must be a string (and not start with $)`);
        labels[k] = v;
      }
    }
    const metricQueries: Record<string, string> = {};
    const metrics = body.metrics;
    if (metrics !== undefined && metrics !== null) {
      const queries = isJsonObject(metrics) ? metrics.queries : undefined;
      if (queries !== undefined && queries !== null) {
        if (!isJsonObject(queries)) bad("metrics.queries must be an object of query strings");
        const entries = Object.entries(queries);
        if (entries.length > CONFIGURATION_LIMITS.metrics)
          bad(`at most ${CONFIGURATION_LIMITS.metrics} custom metrics`);
        for (const [name, q] of entries) {
          if (typeof q !== "string") bad(`metric '${name}' must be a query string`);
          parseQuery(q);
          metricQueries[name] = q;
        }
      }
    }
    const now = new Date().toISOString();
    return {
      id,
      schemaVersion: typeof body.schemaVersion === "string" ? body.schemaVersion : "1.0",
      labels,
      kind,
      content: { [kinds[0]]: settings },
      targetCondition,
      priority,
      metricQueries,
      createdTimeUtc: existing?.createdTimeUtc ?? now,
      lastUpdatedTimeUtc: now,
      version: 1,
      target,
    };
  }

  private toJson(c: Configuration): JsonObject {
    const twins = this.twinsOf(c.kind);
    let targeted = 0;
    let applied = 0;
    for (const r of twins) {
      const s = this.status.get(twinKey(r))?.[c.id];
      if (s) targeted++;
      if (s === "Applied") applied++;
    }
    const from = c.kind === "module" ? "devices.modules" : "devices";
    const select = c.kind === "module" ? "deviceId, moduleId" : "deviceId";
    const results: Record<string, number> = {};
    for (const [name, q] of Object.entries(c.metricQueries)) results[name] = this.count(q);
    return {
      id: c.id,
      schemaVersion: c.schemaVersion,
      labels: c.labels,
      content: c.content,
      targetCondition: c.targetCondition,
      createdTimeUtc: c.createdTimeUtc,
      lastUpdatedTimeUtc: c.lastUpdatedTimeUtc,
      priority: c.priority,
      systemMetrics: {
        results: { targetedCount: targeted, appliedCount: applied },
        queries: {
          targetedCount: `select ${select} from ${from} where configurations.[[${c.id}]].status = 'Targeted' or configurations.[[${c.id}]].status = 'Applied'`,
          appliedCount: `select ${select} from ${from} where configurations.[[${c.id}]].status = 'Applied'`,
        },
      },
      metrics: { results, queries: c.metricQueries },
      etag: etag(c),
    };
  }

  /** Rows a metric query returns (an invalid one counts 0: it was parsed when the configuration was stored). */
  private count(q: string): number {
    try {
      let n = 0;
      let continuation: string | undefined;
      do {
        const page = runQuery(
          q,
          (s) => this.twinsOf(s === "devices" ? "device" : "module").map((r) => this.doc(r)),
          {
            pageSize: 1000,
            continuation,
          },
        );
        n +=
          page.itemType === "Raw" && page.items.length === 1 && /count\s*\(/i.test(q)
            ? Number(Object.values(page.items[0])[0]) || 0
            : page.items.length;
        continuation = page.continuation;
      } while (continuation);
      return n;
    } catch {
      return 0;
    }
  }

  private twinsOf(kind: Kind): IdentityRecord[] {
    return kind === "device" ? this.o.identities.listDevices() : this.o.identities.listModules();
  }

  /** The twin document the conditions and metrics see (with its `configurations`). */
  private doc(r: IdentityRecord): JsonObject {
    return twinJson(r);
  }

  private schedule(): void {
    if (this.soon || this.configs.size === 0) return;
    this.soon = setImmediate(() => {
      this.soon = undefined;
      this.evaluateSafely();
    });
  }

  private evaluateSafely(): void {
    try {
      this.evaluate();
    } catch (e) {
      this.o.log(`configurations: evaluation failed: ${(e as Error)?.stack ?? String(e)}`);
    }
  }

  /**
   * Applies every configuration to the twins it targets: per content path the winner (highest priority, then the
   * latest created) writes its value once; paths no longer won by anyone are removed (set to null).
   */
  evaluate(): void {
    if (this.evaluating) return;
    this.evaluating = true;
    try {
      const ordered = [...this.configs.values()].sort(
        (a, b) => b.priority - a.priority || b.createdTimeUtc.localeCompare(a.createdTimeUtc),
      );
      for (const kind of ["device", "module"] as const) {
        const configs = ordered.filter((c) => c.kind === kind);
        for (const r of this.twinsOf(kind)) this.applyTo(r, configs);
      }
    } finally {
      this.evaluating = false;
    }
  }

  private applyTo(r: IdentityRecord, configs: readonly Configuration[]): void {
    const key = twinKey(r);
    const doc = twinJson(r);
    const targeting = configs.filter(
      (c) => !c.target || evaluate(c.target, (p) => resolveIn(doc, p)) === true,
    );
    const winners = new Map<string, { config: Configuration; path: string[]; value: Json }>();
    for (const c of targeting) {
      const settings = c.content[c.kind === "device" ? "deviceContent" : "moduleContent"] as JsonObject;
      for (const [k, v] of Object.entries(settings))
        if (!winners.has(k)) winners.set(k, { config: c, path: desiredPath(k), value: v });
    }
    const before = this.applied.get(key) ?? new Map();
    const after: Applied = new Map();
    let patch: JsonObject = {};
    const merge = (p: readonly string[], v: Json) => {
      patch = deepMerge(patch, nested(p, v));
    };
    for (const [k, w] of winners) {
      const json = JSON.stringify(w.value);
      after.set(k, { configId: w.config.id, value: json });
      const prev = before.get(k);
      if (prev && prev.configId === w.config.id && prev.value === json) continue;
      if (JSON.stringify(resolveIn(r.twin.desired, w.path) ?? null) === json) continue;
      merge(w.path, w.value);
    }
    for (const k of before.keys()) if (!winners.has(k)) merge(desiredPath(k), null);
    const status: Record<string, "Targeted" | "Applied"> = {};
    const appliedBy = new Set([...after.values()].map((a) => a.configId));
    for (const c of targeting) status[c.id] = appliedBy.has(c.id) ? "Applied" : "Targeted";
    if (Object.keys(status).length) this.status.set(key, status);
    else this.status.delete(key);
    const shown = this.twinConfigurations(r);
    if (shown) r.configurations = shown;
    else delete r.configurations;
    if (after.size) this.applied.set(key, after);
    else this.applied.delete(key);
    if (Object.keys(patch).length === 0) return;
    try {
      this.o.identities.patchTwin(r.deviceId, r.moduleId, { properties: { desired: patch } });
    } catch (e) {
      this.o.log(`configurations: cannot apply to ${key}: ${(e as Error).message}`);
    }
  }

  private save(): void {
    if (!this.o.file) return;
    const doc = [...this.configs.values()].map(({ target: _t, ...c }) => c);
    fs.mkdirSync(path.dirname(this.o.file), { recursive: true });
    const tmp = `${this.o.file}.${process.pid}.tmp`;
    fs.writeFileSync(
      tmp,
      JSON.stringify({ format: "flotilla-local-hub-configurations/1", configurations: doc }),
      {
        mode: 0o600,
      },
    );
    fs.renameSync(tmp, this.o.file);
  }

  private load(file: string): void {
    let text: string;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch {
      return;
    }
    try {
      const doc = JSON.parse(text) as { format?: string; configurations?: Configuration[] };
      if (doc.format !== "flotilla-local-hub-configurations/1") throw new Error("unknown format");
      for (const c of doc.configurations ?? [])
        this.configs.set(c.id, { ...c, target: parseTarget(c.kind, c.targetCondition) });
    } catch (e) {
      throw new FlotillaError("E_HUB_STATE", `configurations file ${file}: ${(e as Error).message}`, {
        cause: e,
      });
    }
  }
}

function etag(c: Configuration): string {
  return Buffer.from(String(c.version)).toString("base64");
}

function deepMerge(a: JsonObject, b: JsonObject): JsonObject {
  const out: JsonObject = { ...a };
  for (const [k, v] of Object.entries(b)) {
    const cur = out[k];
    out[k] = isJsonObject(cur) && isJsonObject(v) ? deepMerge(cur, v) : v;
  }
  return out;
}
