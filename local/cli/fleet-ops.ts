/**
 * `flotilla fleet list | set | acks` (docs/operations.md): the operator's view of the fleet's module twins and the
 * way to set their writable properties, over the azure-iothub Registry (./fleet-hub) — the same code for Azure IoT
 * Hub and the local hub.
 *
 * Acknowledgements follow IoT Plug and Play's convention (modules/shared/pnp.ts): a module reports each writable
 * property as {value, ac, av, ad}, `av` the desired `$version` it answers. A property's desired value changed at
 * `$metadata.<name>.$lastUpdatedVersion` when the hub reports it (Azure IoT Hub does), else at the desired
 * `$version`; an ack with `av` at or above that answers the current value.
 */
import { FlotillaError, isFlotillaError } from "../../core/errors";
import { effectivePolicy, type PolicyModule } from "../../core/fleet/policy";
import { isWritableAck, type WritableAck } from "../../modules/shared/pnp";
import { FLEET_MODULES, POLICY_MODULES, fleetModule, parseAssignments } from "./fleet-modules";
import { queryAll, sqlString, statusOf, type FleetHub } from "./fleet-hub";

type Obj = Record<string, unknown>;

export interface ModuleTwinDoc {
  deviceId: string;
  moduleId: string;
  modelId?: string;
  connectionState?: string;
  lastActivityTime?: string;
  properties?: { desired?: Obj; reported?: Obj };
}

interface DeviceTwinDoc {
  deviceId: string;
  connectionState?: string;
  lastActivityTime?: string;
  status?: string;
  tags?: Obj;
}

export interface Target {
  readonly device?: string;
  readonly where?: string;
}

const NEVER = "0001-01-01T00:00:00Z";

function obj(v: unknown): Obj {
  return typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Obj) : {};
}

function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

function short(v: unknown, max = 40): string {
  const s = v === undefined ? "-" : typeof v === "string" ? v : JSON.stringify(v);
  return s.length > max ? `${s.slice(0, max - 3)}...` : s;
}

/** The device ids a --device / --where selects (E_FLEET_NO_DEVICES when none). */
export async function resolveDevices(hub: FleetHub, t: Target): Promise<string[]> {
  if (t.device !== undefined && t.where !== undefined)
    throw new FlotillaError("E_CONFIG_CONFLICT", "give --device or --where, not both");
  if (t.device !== undefined) {
    const rows = await queryAll<{ deviceId: string }>(
      hub,
      `SELECT deviceId FROM devices WHERE deviceId = ${sqlString(t.device)}`,
    );
    if (rows.length === 0)
      throw new FlotillaError("E_FLEET_NO_DEVICES", `no device '${t.device}' in IoT Hub ${hub.hubName}`);
    return [t.device];
  }
  const where = t.where?.trim();
  if (where === "") throw new FlotillaError("E_FLEET_NO_DEVICES", "--where needs a condition");
  const rows = await queryAll<{ deviceId: string }>(
    hub,
    `SELECT deviceId FROM devices${where ? ` WHERE ${where}` : ""}`,
  );
  const ids = [...new Set(rows.map((r) => r.deviceId).filter((d) => typeof d === "string"))].sort();
  if (ids.length === 0)
    throw new FlotillaError(
      "E_FLEET_NO_DEVICES",
      where ? `no device matches ${where}` : `IoT Hub ${hub.hubName} has no devices`,
    );
  return ids;
}

async function moduleTwins(hub: FleetHub, modules: readonly string[]): Promise<ModuleTwinDoc[]> {
  return queryAll<ModuleTwinDoc>(
    hub,
    `SELECT * FROM devices.modules WHERE moduleId IN [${modules.map(sqlString).join(", ")}]`,
  );
}

// --- acks --------------------------------------------------------------------------------------------------------

export type AckState = "current" | "pending" | "refused" | "stale" | "unset";

export interface AckRow {
  deviceId: string;
  moduleId: string;
  property: string;
  desired: unknown;
  /** The desired version the property's current value was written at. */
  desiredVersion: number;
  ack: WritableAck | null;
  state: AckState;
}

/** The desired version at which `name` last changed ($metadata when the hub gives it, else the document's). */
function propertyVersion(desired: Obj, name: string): number {
  const meta = obj(obj(desired.$metadata)[name]);
  const v = meta.$lastUpdatedVersion;
  if (typeof v === "number") return v;
  return typeof desired.$version === "number" ? desired.$version : 0;
}

/** Where one property's acknowledgement stands against its desired value. */
export function ackState(desired: Obj, reported: Obj, name: string): AckRow["state"] {
  const ack = reported[name];
  const isSet = Object.hasOwn(desired, name) && desired[name] !== null;
  if (!isWritableAck(ack)) return isSet ? "pending" : "unset";
  const version = propertyVersion(desired, name);
  const answered = ack.av >= version || (ack.ac === 200 && isSet && same(ack.value, desired[name]));
  if (!answered) return "stale";
  if (ack.ac === 200) return "current";
  if (ack.ac === 202) return "pending";
  return "refused";
}

/** One row per (device, module, property) that is desired or acked. */
export function ackRows(twins: readonly ModuleTwinDoc[], onlyProps?: readonly string[]): AckRow[] {
  const rows: AckRow[] = [];
  for (const t of twins) {
    const m = FLEET_MODULES[t.moduleId];
    if (!m) continue;
    const desired = obj(t.properties?.desired);
    const reported = obj(t.properties?.reported);
    const names = new Set<string>();
    for (const k of Object.keys(desired)) if (!k.startsWith("$") && !m.cloudKeys.includes(k)) names.add(k);
    for (const k of Object.keys(m.specs)) if (isWritableAck(reported[k])) names.add(k);
    for (const k of Object.keys(reported)) if (isWritableAck(reported[k]) && !k.startsWith("$")) names.add(k);
    for (const name of [...names].sort()) {
      if (onlyProps && !onlyProps.includes(name)) continue;
      const ack = reported[name];
      rows.push({
        deviceId: t.deviceId,
        moduleId: t.moduleId,
        property: name,
        desired: desired[name],
        desiredVersion: propertyVersion(desired, name),
        ack: isWritableAck(ack) ? ack : null,
        state: ackState(desired, reported, name),
      });
    }
  }
  return rows.sort(
    (a, b) =>
      a.deviceId.localeCompare(b.deviceId) ||
      a.moduleId.localeCompare(b.moduleId) ||
      a.property.localeCompare(b.property),
  );
}

function table(header: string[], rows: string[][]): string {
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
  const line = (r: string[]) =>
    r
      .map((c, i) => (i === r.length - 1 ? c : c.padEnd(widths[i])))
      .join("  ")
      .trimEnd();
  return [line(header), ...rows.map(line)].join("\n");
}

export function formatAcks(rows: readonly AckRow[]): string {
  if (rows.length === 0) return "no writable properties set or acknowledged";
  return table(
    ["DEVICE", "MODULE", "PROPERTY", "DESIRED", "VALUE", "AC", "AV", "STATE", "DESCRIPTION"],
    rows.map((r) => [
      r.deviceId,
      r.moduleId,
      r.property,
      short(r.desired, 30),
      r.ack ? short(r.ack.value, 30) : "-",
      r.ack ? String(r.ack.ac) : "-",
      r.ack ? String(r.ack.av) : "-",
      r.state,
      r.ack?.ad ?? "",
    ]),
  );
}

export interface AcksOptions extends Target {
  readonly module?: string;
  readonly json?: boolean;
}

export async function runAcks(hub: FleetHub, o: AcksOptions): Promise<string> {
  const modules = o.module !== undefined ? (fleetModule(o.module), [o.module]) : Object.keys(FLEET_MODULES);
  const devices =
    o.device !== undefined || o.where !== undefined ? new Set(await resolveDevices(hub, o)) : undefined;
  const twins = (await moduleTwins(hub, modules)).filter((t) => !devices || devices.has(t.deviceId));
  const rows = ackRows(twins);
  return o.json ? JSON.stringify(rows) : formatAcks(rows);
}

// --- set ---------------------------------------------------------------------------------------------------------

export interface SetOptions extends Target {
  readonly module: string;
  readonly assignments: readonly string[];
  /** Seconds to wait for the acks (undefined: do not wait). */
  readonly waitS?: number;
  readonly pollMs?: number;
  readonly json?: boolean;
  readonly progress?: (done: number, total: number) => void;
}

export interface SetResult {
  deviceId: string;
  /** The desired $version the write produced; undefined when it failed. */
  version?: number;
  error?: string;
  acks?: Record<string, { state: AckState | "timeout"; ack: WritableAck | null }>;
}

const WRITE_CONCURRENCY = 8;

async function eachLimited<T>(items: readonly T[], limit: number, f: (x: T) => Promise<void>): Promise<void> {
  const queue = [...items];
  await Promise.all(
    Array.from({ length: Math.min(limit, queue.length) }, async () => {
      for (let x = queue.shift(); x !== undefined; x = queue.shift()) await f(x);
    }),
  );
}

/** Writes the validated patch to every selected device's module twin; with waitS, waits for the acks. */
export async function runSet(hub: FleetHub, o: SetOptions): Promise<{ text: string; ok: boolean }> {
  const patch = parseAssignments(o.module, o.assignments);
  const devices = await resolveDevices(hub, o);
  const results: SetResult[] = devices.map((deviceId) => ({ deviceId }));
  let done = 0;
  await eachLimited(results, WRITE_CONCURRENCY, async (r) => {
    try {
      const res = await hub.call(`updateModuleTwin ${r.deviceId}/${o.module}`, () =>
        hub.registry.updateModuleTwin(r.deviceId, o.module, { properties: { desired: patch } }, "*"),
      );
      const body = res.responseBody as unknown as ModuleTwinDoc;
      const v = obj(body?.properties?.desired).$version;
      r.version = typeof v === "number" ? v : undefined;
    } catch (e) {
      // One device's failure (no such module, throttling, ...) does not stop the others: its row says why.
      if (statusOf(e) === 404) r.error = `no module ${o.module} on this device`;
      else r.error = isFlotillaError(e) ? `${e.code}: ${e.message}` : String(e);
    }
    o.progress?.(++done, results.length);
  });
  const names = Object.keys(patch);
  if (o.waitS !== undefined) await waitForAcks(hub, o, results, names);
  const ok = results.every(
    (r) =>
      r.error === undefined &&
      (r.acks === undefined || names.every((n) => ["current", "pending"].includes(r.acks![n].state))),
  );
  if (o.json) return { text: JSON.stringify(results), ok };
  const rows: string[][] = [];
  for (const r of results) {
    if (r.error !== undefined) {
      rows.push([r.deviceId, "-", "-", "-", "-", "failed", r.error]);
      continue;
    }
    if (r.acks === undefined) {
      rows.push([r.deviceId, names.join(","), "-", "-", String(r.version ?? "?"), "written", ""]);
      continue;
    }
    for (const n of names) {
      const a = r.acks[n];
      rows.push([
        r.deviceId,
        n,
        a.ack ? String(a.ack.ac) : "-",
        a.ack ? short(a.ack.value, 30) : "-",
        a.ack ? String(a.ack.av) : "-",
        a.state,
        a.ack?.ad ?? "",
      ]);
    }
  }
  const head = `${o.module}: ${JSON.stringify(patch)} on ${devices.length} device${devices.length === 1 ? "" : "s"}`;
  return {
    text: `${head}\n${table(["DEVICE", "PROPERTY", "AC", "VALUE", "AV", "STATE", "DESCRIPTION"], rows)}`,
    ok,
  };
}

async function waitForAcks(
  hub: FleetHub,
  o: SetOptions,
  results: SetResult[],
  names: readonly string[],
): Promise<void> {
  const deadline = Date.now() + (o.waitS ?? 0) * 1000;
  const open = new Set(results.filter((r) => r.error === undefined && r.version !== undefined));
  const settle = (r: SetResult, twin: ModuleTwinDoc, final: boolean): boolean => {
    const desired = obj(twin.properties?.desired);
    const reported = obj(twin.properties?.reported);
    const acks: NonNullable<SetResult["acks"]> = {};
    let answered = true;
    for (const n of names) {
      const ack = reported[n];
      const has = isWritableAck(ack) && ack.av >= (r.version as number);
      if (!has) answered = false;
      acks[n] = {
        state: has ? ackState(desired, reported, n) : final ? "timeout" : "pending",
        ack: isWritableAck(ack) ? ack : null,
      };
    }
    // 202 (applies at the next round) counts as answered.
    if (answered || final) r.acks = acks;
    return answered;
  };
  for (;;) {
    const final = Date.now() >= deadline;
    await eachLimited([...open], WRITE_CONCURRENCY, async (r) => {
      let twin: ModuleTwinDoc;
      try {
        const res = await hub.call(`getModuleTwin ${r.deviceId}/${o.module}`, () =>
          hub.registry.getModuleTwin(r.deviceId, o.module),
        );
        twin = res.responseBody as unknown as ModuleTwinDoc;
      } catch (e) {
        // A failed read is tried again at the next poll; at the deadline the device's row says why.
        if (final) {
          r.error = isFlotillaError(e) ? `${e.code}: ${e.message}` : String(e);
          open.delete(r);
        }
        return;
      }
      if (settle(r, twin, final) || final) open.delete(r);
    });
    if (open.size === 0) return;
    await new Promise((resolve) => setTimeout(resolve, o.pollMs ?? 1000));
  }
}

// --- list --------------------------------------------------------------------------------------------------------

export interface DeviceView {
  deviceId: string;
  connectionState: string;
  lastActivityTime: string | null;
  tags: Obj;
  capabilities: Obj | null;
  /**
   * Per policy property: the value the cloud honours (core/fleet/policy.ts effectivePolicy: a valid desired value at
   * once, else the module's acknowledged value, else the default), where the module's ack stands, and the desired
   * value when it differs from the value honoured.
   */
  policy: Record<string, { value: unknown; desired?: unknown; state: AckState }>;
  trainer: { status: string | null; round: number | null; jobId: string | null } | null;
  participation: unknown;
  modelIds: Record<string, string>;
}

export interface ListOptions {
  readonly where?: string;
  readonly json?: boolean;
}

function latest(...times: (string | undefined)[]): string | null {
  const real = times.filter(
    (t): t is string => typeof t === "string" && t !== NEVER && !t.startsWith("0001-"),
  );
  return real.length ? real.sort().at(-1)! : null;
}

export function deviceViews(
  devices: readonly DeviceTwinDoc[],
  twins: readonly ModuleTwinDoc[],
): DeviceView[] {
  const byDevice = new Map<string, ModuleTwinDoc[]>();
  for (const t of twins) byDevice.set(t.deviceId, [...(byDevice.get(t.deviceId) ?? []), t]);
  return devices
    .map((d) => {
      const mods = byDevice.get(d.deviceId) ?? [];
      const mod = (name: string) => mods.find((m) => m.moduleId === name);
      const reported = (name: string) => obj(mod(name)?.properties?.reported);
      const policy: DeviceView["policy"] = {};
      const modules = Object.keys(POLICY_MODULES).filter((m) => mod(m)) as PolicyModule[];
      const effective = effectivePolicy(
        Object.fromEntries(modules.map((m) => [m, obj(mod(m)?.properties?.desired)])),
        Object.fromEntries(modules.map((m) => [m, obj(mod(m)?.properties?.reported)])),
      ).policy as unknown as Readonly<Record<string, unknown>>;
      for (const m of modules) {
        const t = mod(m)!;
        const des = obj(t.properties?.desired);
        const rep = obj(t.properties?.reported);
        for (const p of POLICY_MODULES[m]) {
          const spec = FLEET_MODULES[m]?.specs[p];
          const value = effective[p] !== undefined ? effective[p] : spec?.default;
          const entry: DeviceView["policy"][string] = { value, state: ackState(des, rep, p) };
          if (Object.hasOwn(des, p) && !same(des[p], value)) entry.desired = des[p];
          policy[p] = entry;
        }
      }
      const tr = obj(reported("trainer").flotilla);
      const connected =
        d.connectionState === "Connected" || mods.some((m) => m.connectionState === "Connected");
      return {
        deviceId: d.deviceId,
        connectionState: connected ? "Connected" : "Disconnected",
        lastActivityTime: latest(d.lastActivityTime, ...mods.map((m) => m.lastActivityTime)),
        tags: obj(d.tags),
        capabilities: Object.keys(reported("profiler")).includes("capabilities")
          ? obj(reported("profiler").capabilities)
          : null,
        policy,
        trainer: mod("trainer")
          ? {
              status: typeof tr.status === "string" ? tr.status : null,
              round: typeof tr.round === "number" ? tr.round : null,
              jobId: typeof tr.jobId === "string" ? tr.jobId : null,
            }
          : null,
        participation: reported("trainer").participation ?? null,
        modelIds: Object.fromEntries(
          mods.filter((m) => typeof m.modelId === "string" && m.modelId).map((m) => [m.moduleId, m.modelId!]),
        ),
      };
    })
    .sort((a, b) => a.deviceId.localeCompare(b.deviceId));
}

function bytes(n: unknown): string {
  if (typeof n !== "number") return "?";
  return n >= 1e9 ? `${(n / 1e9).toFixed(1)} GB` : `${Math.round(n / 1e6)} MB`;
}

function capabilitiesText(c: Obj | null): string {
  if (!c) return "-";
  const sps = obj(c.samplesPerSecond);
  const speed = Object.entries(sps)
    .map(([k, v]) => `${k} ${typeof v === "number" ? Math.round(v) : "?"}/s`)
    .join(" ");
  return [speed || null, `mem ${bytes(c.freeMemoryBytes)}`, `disk ${bytes(c.freeDiskBytes)}`]
    .filter(Boolean)
    .join(", ");
}

function policyText(p: DeviceView["policy"]): string {
  const parts: string[] = [];
  for (const [name, e] of Object.entries(p)) {
    const owner = Object.entries(POLICY_MODULES).find(([, ps]) => ps.includes(name))?.[0] ?? "";
    const def = FLEET_MODULES[owner]?.specs[name]?.default;
    if (same(e.value, def) && e.desired === undefined && e.state !== "refused") continue;
    const note =
      e.state === "refused"
        ? ` (refused ${short(e.desired, 30)})`
        : e.state === "pending" || e.state === "stale"
          ? " (not acked yet)"
          : "";
    parts.push(`${name}=${short(e.value, 30)}${note}`);
  }
  return parts.length ? parts.join(" ") : "defaults";
}

function participationText(p: unknown): string {
  if (p === null || p === undefined) return "-";
  if (typeof p === "string") return p;
  const o = obj(p);
  const head = typeof o.status === "string" ? o.status : typeof o.state === "string" ? o.state : undefined;
  const reason = typeof o.reason === "string" ? o.reason : undefined;
  // "enabled" says enough; another state says why (the trainer's reported participation: {state, reason}).
  return head ? `${head}${reason && head !== "enabled" ? ` (${reason})` : ""}` : short(p, 30);
}

export function formatDevices(views: readonly DeviceView[]): string {
  if (views.length === 0) return "no devices";
  return table(
    ["DEVICE", "CONNECTION", "LAST ACTIVITY", "TRAINER", "PARTICIPATION", "CAPABILITIES", "MODELS", "POLICY"],
    views.map((v) => [
      v.deviceId,
      v.connectionState,
      v.lastActivityTime ?? "never",
      v.trainer ? `${v.trainer.status ?? "?"}${v.trainer.round !== null ? ` r${v.trainer.round}` : ""}` : "-",
      participationText(v.participation),
      capabilitiesText(v.capabilities),
      Object.entries(v.modelIds)
        .map(([m, id]) => `${m}=${id.replace(/^dtmi:flotilla:edge:/, "")}`)
        .join(" ") || "-",
      policyText(v.policy),
    ]),
  );
}

export async function runList(hub: FleetHub, o: ListOptions): Promise<string> {
  const where = o.where?.trim();
  if (where === "") throw new FlotillaError("E_FLEET_NO_DEVICES", "--where needs a condition");
  const devices = await queryAll<DeviceTwinDoc>(
    hub,
    `SELECT * FROM devices${where ? ` WHERE ${where}` : ""}`,
  );
  if (where && devices.length === 0)
    throw new FlotillaError("E_FLEET_NO_DEVICES", `no device matches ${where}`);
  const wanted = new Set(devices.map((d) => d.deviceId));
  const twins = (await moduleTwins(hub, Object.keys(FLEET_MODULES))).filter((t) => wanted.has(t.deviceId));
  const views = deviceViews(devices, twins);
  return o.json ? JSON.stringify(views) : formatDevices(views);
}
