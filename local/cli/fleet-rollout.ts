/**
 * `flotilla fleet rollout | rollouts`: fleet-wide changes through IoT Hub automatic device management (ADM)
 * configurations — `Registry.addConfiguration` / `getConfigurations`, the same REST calls as
 * `az iot hub configuration create/list` (docs/operations.md, "Fleet-wide rollout").
 *
 * A rollout is an automatic *module* configuration (content.moduleContent, "properties.desired.<name>" paths) whose
 * target condition is `FROM devices.modules WHERE moduleId = '<module>' AND (<your condition>)`. Module
 * configurations see the module twin only (its tags and reported properties, not the device twin's tags: "Automatic
 * device configurations can only target device twin tags, and automatic module configurations can only target
 * module twin tags", Microsoft Learn, "Automatic IoT device and module management"). Its custom metrics count the
 * targeted module twins whose Plug and Play acks answer the rollout (200 with the value, 202, 400/500).
 */
import { FlotillaError } from "../../core/errors";
import { parseAssignments } from "./fleet-modules";
import { sqlString, statusOf, type FleetHub } from "./fleet-hub";

/** Configuration ids: up to 128 lowercase letters, digits and -+%_*!' (the portal's and the CLI's rule). */
export const CONFIGURATION_ID = /^[a-z0-9\-+%_*!']{1,128}$/;
export const DEFAULT_PRIORITY = 10;
const MODULE_PREFIX = /^\s*from\s+devices\.modules\s+where\s+/i;

export interface RolloutOptions {
  readonly name: string;
  readonly module: string;
  readonly assignments: readonly string[];
  readonly target: string;
  readonly priority?: string;
  readonly json?: boolean;
}

function literal(v: unknown): string | undefined {
  if (typeof v === "string") return sqlString(v);
  if (typeof v === "number" || typeof v === "boolean") return String(v);
  return undefined;
}

/** The configuration document a rollout creates (exported for tests and the docs' example). */
export function rolloutConfiguration(o: RolloutOptions): Record<string, unknown> {
  if (!CONFIGURATION_ID.test(o.name))
    throw new FlotillaError(
      "E_FLEET_ROLLOUT",
      `'${o.name}' is not a configuration id: up to 128 lowercase letters, digits and -+%_*!'`,
    );
  const patch = parseAssignments(o.module, o.assignments);
  let priority = DEFAULT_PRIORITY;
  if (o.priority !== undefined) {
    priority = Number(o.priority);
    if (o.priority.trim() === "" || !Number.isInteger(priority) || priority < 0 || priority > 2 ** 31 - 1)
      throw new FlotillaError(
        "E_CONFIG_RANGE",
        `--priority must be a non-negative integer, got '${o.priority}'`,
      );
  }
  const condition = o.target.replace(MODULE_PREFIX, "").trim();
  if (condition === "" || condition === "*")
    throw new FlotillaError(
      "E_FLEET_ROLLOUT",
      "--target needs a condition on the module twins (a module configuration cannot target all modules with *)",
    );
  const applied = `configurations.[[${o.name}]].status = 'Applied'`;
  const names = Object.keys(patch);
  const each = (f: (n: string) => string, join: string) => names.map(f).join(join);
  const from = "SELECT deviceId, moduleId FROM devices.modules WHERE";
  return {
    id: o.name,
    schemaVersion: "1.0",
    labels: { "flotilla-module": o.module },
    content: {
      moduleContent: Object.fromEntries(names.map((n) => [`properties.desired.${n}`, patch[n]])),
    },
    targetCondition: `FROM devices.modules WHERE moduleId = ${sqlString(o.module)} AND (${condition})`,
    priority,
    metrics: {
      queries: {
        acked: `${from} ${applied} AND ${each((n) => {
          const lit = literal(patch[n]);
          return `properties.reported.${n}.ac = 200${lit !== undefined ? ` AND properties.reported.${n}.value = ${lit}` : ""}`;
        }, " AND ")}`,
        pending: `${from} ${applied} AND (${each((n) => `properties.reported.${n}.ac = 202`, " OR ")})`,
        refused: `${from} ${applied} AND (${each((n) => `properties.reported.${n}.ac >= 400`, " OR ")})`,
      },
    },
  };
}

interface ConfigurationDoc {
  id: string;
  priority?: number;
  targetCondition?: string;
  createdTimeUtc?: string;
  content?: { moduleContent?: Record<string, unknown>; deviceContent?: Record<string, unknown> };
  systemMetrics?: { results?: Record<string, number> };
  metrics?: { results?: Record<string, number> };
}

function summary(c: ConfigurationDoc): string {
  const content = c.content?.moduleContent ?? c.content?.deviceContent ?? {};
  const settings = Object.entries(content)
    .map(([k, v]) => `${k.replace(/^properties\.desired\./, "")}=${JSON.stringify(v)}`)
    .join(" ");
  const sys = c.systemMetrics?.results ?? {};
  const custom = Object.entries(c.metrics?.results ?? {})
    .map(([k, v]) => `${k} ${v}`)
    .join(", ");
  return (
    `${c.id}  priority ${c.priority ?? 0}  targeted ${sys.targetedCount ?? 0}  applied ${sys.appliedCount ?? 0}` +
    `${custom ? `  (${custom})` : ""}\n  target: ${c.targetCondition ?? ""}\n  settings: ${settings || "-"}`
  );
}

export async function runRollout(hub: FleetHub, o: RolloutOptions): Promise<string> {
  const config = rolloutConfiguration(o);
  try {
    await hub.call(`addConfiguration ${o.name}`, () => hub.registry.addConfiguration(config as never));
  } catch (e) {
    if (statusOf(e) === 409)
      throw new FlotillaError(
        "E_FLEET_ROLLOUT",
        `configuration '${o.name}' exists (its content cannot change: delete it with \`az iot hub configuration delete --config-id ${o.name}\` or choose another name)`,
        { cause: e },
      );
    throw e;
  }
  const res = await hub.call(`getConfiguration ${o.name}`, () => hub.registry.getConfiguration(o.name));
  const doc = res.responseBody as unknown as ConfigurationDoc;
  return o.json ? JSON.stringify(doc) : `created\n${summary(doc)}`;
}

export async function runRollouts(hub: FleetHub, o: { json?: boolean }): Promise<string> {
  const res = await hub.call("getConfigurations", () => hub.registry.getConfigurations());
  const docs = ((res.responseBody as unknown as ConfigurationDoc[]) ?? []).sort(
    (a, b) => (b.priority ?? 0) - (a.priority ?? 0) || a.id.localeCompare(b.id),
  );
  if (o.json) return JSON.stringify(docs);
  return docs.length ? docs.map(summary).join("\n") : "no configurations";
}
