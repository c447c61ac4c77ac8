/**
 * The identity registry: devices, modules, their symmetric keys and twins, plus the service's shared access
 * policy ('iothubowner'). In memory; optionally persisted as one JSON file (atomic rename) in stateDir.
 *
 * Spec: "Understand the identity registry in your IoT hub"
 * (https://learn.microsoft.com/azure/iot-hub/iot-hub-devguide-identity-registry):
 *   - deviceId / moduleId: case-sensitive, up to 128 ASCII 7-bit alphanumerics plus - . % _ * ? ! ( ) , : = @ $ '
 *   - status enabled|disabled (a disabled identity cannot connect), generationId, etag, connectionState
 *     ("Connected"/"Disconnected"), lastActivityTime; authentication.type "sas" with primary/secondary keys
 *     (IoT Hub generates them when empty).
 * REST shapes follow the IoT Hub service REST API 2021-04-12 (Devices - Create Or Update Identity,
 * Modules - Create Or Update Identity, Twin - Get Device Twin).
 */
import * as crypto from "node:crypto";
import * as fs from "node:fs";
import * as path from "node:path";
import { FlotillaError } from "../../core/errors";
import { isValidSymmetricKey, newSymmetricKey } from "./sas";
import { clientIdOf } from "./topics";
import { isJsonObject, type JsonObject, type TwinData, TwinState } from "./twin";

export const ID_PATTERN = /^[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}$/;
export const NEVER = "0001-01-01T00:00:00Z";

export interface IdentityRecord {
  deviceId: string;
  moduleId?: string;
  managedBy?: string;
  primaryKey: string;
  secondaryKey: string;
  status: "enabled" | "disabled";
  statusReason: string | null;
  generationId: string;
  /** Identity (not twin) etag counter. */
  identityVersion: number;
  /** Device capability (IoT Edge devices host modules). */
  iotEdge: boolean;
  twin: TwinState;
  statusUpdatedTime: string;
  connectionState: "Connected" | "Disconnected";
  connectionStateUpdatedTime: string;
  lastActivityTime: string;
  /** The automatic device management configurations targeting this twin ({id: {status}}; ./configurations.ts). */
  configurations?: JsonObject;
  /**
   * The IoT Plug and Play model ID the device or module announced when it last connected ("" when none): the
   * twin's `modelId`, queryable (`SELECT * FROM devices.modules WHERE modelId = '...'`).
   */
  modelId: string;
}

export interface SharedAccessPolicy {
  keyName: string;
  primaryKey: string;
  secondaryKey: string;
  rights: string;
}

interface DeviceEntry {
  device: IdentityRecord;
  modules: Map<string, IdentityRecord>;
}

type PersistedRecord = Omit<
  IdentityRecord,
  "twin" | "connectionState" | "connectionStateUpdatedTime" | "lastActivityTime" | "configurations"
> & {
  twin: TwinData;
};

interface PersistedRegistry {
  format: "flotilla-local-hub-registry/1";
  policies: SharedAccessPolicy[];
  devices: { device: PersistedRecord; modules: PersistedRecord[] }[];
}

function deviceNotFound(deviceId: string): FlotillaError {
  return new FlotillaError("E_HUB_DEVICE_NOT_FOUND", `Device ${deviceId} not found`);
}

function etagMatches(ifMatch: string | undefined, etag: string): boolean {
  if (ifMatch === undefined || ifMatch === "*" || ifMatch === '"*"') return true;
  return ifMatch.replace(/^W\//, "").replace(/^"|"$/g, "") === etag;
}

function checkId(kind: string, id: unknown): string {
  if (typeof id !== "string" || !ID_PATTERN.test(id)) {
    throw new FlotillaError("E_HUB_BAD_REQUEST", `invalid ${kind} '${String(id)}'`);
  }
  return id;
}

export interface IdentitySpec {
  primaryKey?: string;
  secondaryKey?: string;
  status?: "enabled" | "disabled";
  statusReason?: string | null;
  iotEdge?: boolean;
  managedBy?: string;
}

export interface TwinChange {
  record: IdentityRecord;
  /** The desired patch as devices receive it, with the new `$version`. */
  desiredPatch?: JsonObject;
}

/** How long twin changes may wait to be written to the registry file (identity changes: 50 ms). */
export const TWIN_SAVE_MS = 1000;

export class IdentityStore {
  private readonly devices = new Map<string, DeviceEntry>();
  readonly policies = new Map<string, SharedAccessPolicy>();
  private saveTimer: NodeJS.Timeout | undefined;
  private saveDue = 0;
  private readonly desiredListeners = new Set<(change: TwinChange) => void>();
  private readonly removedListeners = new Set<(clientIds: string[]) => void>();
  private readonly twinListeners = new Set<(record: IdentityRecord) => void>();

  constructor(private readonly file?: string) {
    if (file) this.load(file);
    if (!this.policies.has("iothubowner")) {
      this.policies.set("iothubowner", {
        keyName: "iothubowner",
        primaryKey: newSymmetricKey(),
        secondaryKey: newSymmetricKey(),
        rights: "RegistryWrite, ServiceConnect, DeviceConnect",
      });
      this.scheduleSave();
    }
  }

  onDesiredChanged(fn: (change: TwinChange) => void): void {
    this.desiredListeners.add(fn);
  }

  onRemoved(fn: (clientIds: string[]) => void): void {
    this.removedListeners.add(fn);
  }

  /** A twin's tags or reported properties changed, or an identity was created (configurations re-evaluate). */
  onTwinChanged(fn: (record: IdentityRecord) => void): void {
    this.twinListeners.add(fn);
  }

  private emitTwinChanged(r: IdentityRecord): void {
    for (const fn of this.twinListeners) fn(r);
  }

  get(deviceId: string, moduleId?: string): IdentityRecord | undefined {
    const e = this.devices.get(deviceId);
    if (!e) return undefined;
    return moduleId === undefined ? e.device : e.modules.get(moduleId);
  }

  require(deviceId: string, moduleId?: string): IdentityRecord {
    const r = this.get(deviceId, moduleId);
    if (!r) {
      if (moduleId === undefined || !this.devices.has(deviceId)) throw deviceNotFound(deviceId);
      throw new FlotillaError("E_HUB_MODULE_NOT_FOUND", `Module ${moduleId} on device ${deviceId} not found`);
    }
    return r;
  }

  listDevices(): IdentityRecord[] {
    return [...this.devices.values()].map((e) => e.device).sort((a, b) => cmp(a.deviceId, b.deviceId));
  }

  listModules(deviceId?: string): IdentityRecord[] {
    const entries =
      deviceId === undefined ? [...this.devices.values()] : [this.devices.get(deviceId)].filter(Boolean);
    const out: IdentityRecord[] = [];
    for (const e of entries as DeviceEntry[]) out.push(...e.modules.values());
    return out.sort((a, b) => cmp(a.deviceId, b.deviceId) || cmp(a.moduleId ?? "", b.moduleId ?? ""));
  }

  /**
   * PUT semantics of the REST API: create when absent; when present, update only with an If-Match header
   * ('*' or the current etag), otherwise 409 (DeviceAlreadyExists / ModuleAlreadyExistsOnDevice).
   */
  put(
    deviceId: string,
    moduleId: string | undefined,
    spec: IdentitySpec,
    ifMatch?: string,
  ): { record: IdentityRecord; created: boolean } {
    checkId("deviceId", deviceId);
    if (moduleId !== undefined) checkId("moduleId", moduleId);
    const existing = this.get(deviceId, moduleId);
    if (moduleId !== undefined && !this.devices.has(deviceId)) throw deviceNotFound(deviceId);
    if (existing) {
      if (ifMatch === undefined) {
        throw new FlotillaError(
          "E_HUB_CONFLICT",
          moduleId === undefined
            ? `A device with ID '${deviceId}' is already registered`
            : `A module with ID '${moduleId}' already exists on device '${deviceId}'`,
        );
      }
      if (!etagMatches(ifMatch, identityEtag(existing)))
        throw new FlotillaError("E_HUB_PRECONDITION", "etag mismatch");
      this.applySpec(existing, spec);
      existing.identityVersion++;
      this.scheduleSave();
      return { record: existing, created: false };
    }
    const record: IdentityRecord = {
      deviceId,
      moduleId,
      primaryKey: "",
      secondaryKey: "",
      status: "enabled",
      statusReason: null,
      generationId: String(BigInt("0x" + crypto.randomBytes(7).toString("hex"))),
      identityVersion: 1,
      iotEdge: false,
      twin: new TwinState(),
      statusUpdatedTime: NEVER,
      connectionState: "Disconnected",
      connectionStateUpdatedTime: NEVER,
      lastActivityTime: NEVER,
      modelId: "",
    };
    this.applySpec(record, spec);
    if (moduleId === undefined) this.devices.set(deviceId, { device: record, modules: new Map() });
    else (this.devices.get(deviceId) as DeviceEntry).modules.set(moduleId, record);
    this.scheduleSave();
    this.emitTwinChanged(record);
    return { record, created: true };
  }

  private applySpec(r: IdentityRecord, spec: IdentitySpec): void {
    for (const k of ["primaryKey", "secondaryKey"] as const) {
      const v = spec[k];
      if (v !== undefined && v !== "" && !isValidSymmetricKey(v)) {
        throw new FlotillaError("E_HUB_BAD_REQUEST", `${k} must be base64 of 16 to 64 bytes`);
      }
      r[k] = v || r[k] || newSymmetricKey();
    }
    if (spec.status !== undefined && spec.status !== r.status) {
      if (spec.status !== "enabled" && spec.status !== "disabled") {
        throw new FlotillaError("E_HUB_BAD_REQUEST", `status must be enabled or disabled`);
      }
      r.status = spec.status;
      r.statusUpdatedTime = new Date().toISOString();
      if (r.status === "disabled") this.emitRemoved(this.clientIdsOf(r));
    }
    if (spec.statusReason !== undefined) r.statusReason = spec.statusReason;
    if (spec.iotEdge !== undefined && r.moduleId === undefined) r.iotEdge = spec.iotEdge;
    if (spec.managedBy !== undefined && r.moduleId !== undefined) r.managedBy = spec.managedBy;
  }

  delete(deviceId: string, moduleId?: string, ifMatch?: string): void {
    const r = this.require(deviceId, moduleId);
    if (!etagMatches(ifMatch, identityEtag(r)))
      throw new FlotillaError("E_HUB_PRECONDITION", "etag mismatch");
    const removed = this.clientIdsOf(r);
    if (moduleId === undefined) this.devices.delete(deviceId);
    else this.devices.get(deviceId)?.modules.delete(moduleId);
    this.scheduleSave();
    this.emitRemoved(removed);
  }

  /** A device's own client id plus, for a device, all its modules'. */
  private clientIdsOf(r: IdentityRecord): string[] {
    if (r.moduleId !== undefined) return [clientIdOf(r.deviceId, r.moduleId)];
    const e = this.devices.get(r.deviceId);
    return [r.deviceId, ...[...(e?.modules.keys() ?? [])].map((m) => clientIdOf(r.deviceId, m))];
  }

  private emitRemoved(ids: string[]): void {
    for (const fn of this.removedListeners) fn(ids);
  }

  /** PATCH /twins: merge tags and desired properties, If-Match against the twin etag. */
  patchTwin(deviceId: string, moduleId: string | undefined, body: unknown, ifMatch?: string): TwinChange {
    const r = this.require(deviceId, moduleId);
    if (!etagMatches(ifMatch, r.twin.etag))
      throw new FlotillaError("E_HUB_PRECONDITION", "twin etag mismatch");
    const { tags, desired } = twinBodyParts(body);
    // Apply to a copy first so a bad second section leaves the twin untouched.
    const next = TwinState.from(JSON.parse(JSON.stringify(r.twin.toData())) as TwinData);
    if (tags !== undefined) next.patch("tags", tags);
    let desiredPatch: JsonObject | undefined;
    if (desired !== undefined) desiredPatch = next.patch("desired", desired);
    r.twin = next;
    this.scheduleSave(TWIN_SAVE_MS);
    const change: TwinChange = {
      record: r,
      desiredPatch: desiredPatch && { ...desiredPatch, $version: next.desiredVersion },
    };
    if (change.desiredPatch) for (const fn of this.desiredListeners) fn(change);
    if (tags !== undefined) this.emitTwinChanged(r);
    return change;
  }

  /** PUT /twins: replace tags and desired properties; devices get the full desired document as the patch. */
  replaceTwin(deviceId: string, moduleId: string | undefined, body: unknown, ifMatch?: string): TwinChange {
    const r = this.require(deviceId, moduleId);
    if (!etagMatches(ifMatch, r.twin.etag))
      throw new FlotillaError("E_HUB_PRECONDITION", "twin etag mismatch");
    const { tags, desired } = twinBodyParts(body);
    const next = TwinState.from(JSON.parse(JSON.stringify(r.twin.toData())) as TwinData);
    if (tags !== undefined) next.replace("tags", tags);
    let desiredPatch: JsonObject | undefined;
    if (desired !== undefined) {
      const removed = Object.keys(next.desired).filter((k) => !Object.hasOwn(desired as JsonObject, k));
      next.replace("desired", desired);
      desiredPatch = { ...next.desired, ...Object.fromEntries(removed.map((k) => [k, null])) };
    }
    r.twin = next;
    this.scheduleSave(TWIN_SAVE_MS);
    const change: TwinChange = {
      record: r,
      desiredPatch: desiredPatch && { ...desiredPatch, $version: next.desiredVersion },
    };
    if (change.desiredPatch) for (const fn of this.desiredListeners) fn(change);
    if (tags !== undefined) this.emitTwinChanged(r);
    return change;
  }

  /** A device's reported-properties PATCH; returns the new reported $version. */
  patchReported(deviceId: string, moduleId: string | undefined, patch: unknown): number {
    const r = this.require(deviceId, moduleId);
    r.twin.patch("reported", patch);
    this.scheduleSave(TWIN_SAVE_MS);
    return r.twin.reportedVersion;
  }

  /** A connection opened (with the model ID it announced, "" for none) or closed (the model ID stays). */
  setConnection(deviceId: string, moduleId: string | undefined, connected: boolean, modelId?: string): void {
    const r = this.get(deviceId, moduleId);
    if (!r) return;
    const now = new Date().toISOString();
    if (connected && modelId !== undefined && modelId !== r.modelId) {
      r.modelId = modelId;
      this.scheduleSave();
    }
    r.connectionState = connected ? "Connected" : "Disconnected";
    r.connectionStateUpdatedTime = now;
    r.lastActivityTime = now;
  }

  touch(deviceId: string, moduleId?: string): void {
    const r = this.get(deviceId, moduleId);
    if (r) r.lastActivityTime = new Date().toISOString();
  }

  /**
   * Saves after `delayMs` unless a save is already due sooner. Identity changes are saved within 50 ms; twin
   * changes are coalesced for up to TWIN_SAVE_MS: every save serialises the whole registry (about 1 MB at 200
   * devices, tens of ms of the event loop), and during a round every trainer reports its progress several times.
   */
  private scheduleSave(delayMs = 50): void {
    if (!this.file) return;
    const due = Date.now() + delayMs;
    if (this.saveTimer && this.saveDue <= due) return;
    if (this.saveTimer) clearTimeout(this.saveTimer);
    this.saveDue = due;
    this.saveTimer = setTimeout(() => {
      this.saveTimer = undefined;
      this.save();
    }, delayMs);
    this.saveTimer.unref();
  }

  /** Writes the registry now (atomic rename); no-op without a file. */
  save(): void {
    if (!this.file) return;
    if (this.saveTimer) {
      clearTimeout(this.saveTimer);
      this.saveTimer = undefined;
    }
    const persist = (r: IdentityRecord): PersistedRecord => {
      const {
        twin,
        connectionState: _c,
        connectionStateUpdatedTime: _u,
        lastActivityTime: _l,
        configurations: _g,
        ...rest
      } = r;
      return { ...rest, twin: twin.toData() };
    };
    const doc: PersistedRegistry = {
      format: "flotilla-local-hub-registry/1",
      policies: [...this.policies.values()],
      devices: [...this.devices.values()].map((e) => ({
        device: persist(e.device),
        modules: [...e.modules.values()].map(persist),
      })),
    };
    fs.mkdirSync(path.dirname(this.file), { recursive: true });
    const tmp = `${this.file}.${process.pid}.tmp`;
    fs.writeFileSync(tmp, JSON.stringify(doc, null, 1), { mode: 0o600 });
    fs.renameSync(tmp, this.file);
  }

  private load(file: string): void {
    let text: string;
    try {
      text = fs.readFileSync(file, "utf8");
    } catch {
      return;
    }
    let doc: PersistedRegistry;
    try {
      doc = JSON.parse(text) as PersistedRegistry;
    } catch (e) {
      throw new FlotillaError(
        "E_HUB_STATE",
        `registry file ${file} is not valid JSON: ${(e as Error).message}`,
        { cause: e },
      );
    }
    if (doc.format !== "flotilla-local-hub-registry/1") {
      throw new FlotillaError("E_HUB_STATE", `registry file ${file} has an unknown format`);
    }
    const revive = (p: PersistedRecord): IdentityRecord => ({
      ...p,
      twin: TwinState.from(p.twin),
      modelId: typeof p.modelId === "string" ? p.modelId : "",
      connectionState: "Disconnected",
      connectionStateUpdatedTime: NEVER,
      lastActivityTime: NEVER,
    });
    for (const pol of doc.policies ?? []) this.policies.set(pol.keyName, pol);
    for (const d of doc.devices ?? []) {
      this.devices.set(d.device.deviceId, {
        device: revive(d.device),
        modules: new Map(d.modules.map((m) => [m.moduleId as string, revive(m)])),
      });
    }
  }
}

function cmp(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function twinBodyParts(body: unknown): { tags?: unknown; desired?: unknown } {
  if (!isJsonObject(body)) throw new FlotillaError("E_HUB_BAD_REQUEST", "twin body must be a JSON object");
  const props = body.properties;
  if (props !== undefined && !isJsonObject(props))
    throw new FlotillaError("E_HUB_BAD_REQUEST", "properties must be an object");
  if (props && props.reported !== undefined) {
    throw new FlotillaError("E_HUB_BAD_REQUEST", "reported properties are read-only for the service");
  }
  return { tags: body.tags ?? undefined, desired: props?.desired ?? undefined };
}

/** Identity etag: base64 of the decimal identity version (IoT Hub's device etags look like "MjM0NTY3ODk="). */
export function identityEtag(r: IdentityRecord): string {
  return Buffer.from(String(r.identityVersion)).toString("base64");
}

function authentication(r: IdentityRecord) {
  return {
    symmetricKey: { primaryKey: r.primaryKey, secondaryKey: r.secondaryKey },
    x509Thumbprint: { primaryThumbprint: null, secondaryThumbprint: null },
    type: "sas",
  };
}

/** GET /devices/{id} */
export function deviceJson(r: IdentityRecord): JsonObject {
  return {
    deviceId: r.deviceId,
    generationId: r.generationId,
    etag: identityEtag(r),
    connectionState: r.connectionState,
    status: r.status,
    statusReason: r.statusReason,
    connectionStateUpdatedTime: r.connectionStateUpdatedTime,
    statusUpdatedTime: r.statusUpdatedTime,
    lastActivityTime: r.lastActivityTime,
    cloudToDeviceMessageCount: 0,
    authentication: authentication(r),
    capabilities: { iotEdge: r.iotEdge },
  };
}

/** GET /devices/{d}/modules/{m} */
export function moduleJson(r: IdentityRecord): JsonObject {
  return {
    moduleId: r.moduleId as string,
    managedBy: r.managedBy ?? null,
    deviceId: r.deviceId,
    generationId: r.generationId,
    etag: identityEtag(r),
    connectionState: r.connectionState,
    connectionStateUpdatedTime: r.connectionStateUpdatedTime,
    lastActivityTime: r.lastActivityTime,
    cloudToDeviceMessageCount: 0,
    authentication: authentication(r),
  };
}

/** GET /twins/{id} and /twins/{d}/modules/{m}: the twin document (without $metadata). */
export function twinJson(r: IdentityRecord): JsonObject {
  const doc: JsonObject = { deviceId: r.deviceId };
  if (r.moduleId !== undefined) doc.moduleId = r.moduleId;
  Object.assign(doc, {
    etag: r.twin.etag,
    deviceEtag: identityEtag(r),
    status: r.status,
    statusUpdateTime: r.statusUpdatedTime,
    connectionState: r.connectionState,
    lastActivityTime: r.lastActivityTime,
    cloudToDeviceMessageCount: 0,
    authenticationType: "sas",
    x509Thumbprint: { primaryThumbprint: null, secondaryThumbprint: null },
    modelId: r.modelId,
    version: r.twin.version,
    tags: JSON.parse(JSON.stringify(r.twin.tags)) as JsonObject,
    properties: r.twin.propertiesView(),
  });
  if (r.configurations && Object.keys(r.configurations).length > 0)
    doc.configurations = JSON.parse(JSON.stringify(r.configurations)) as JsonObject;
  if (r.moduleId === undefined) doc.capabilities = { iotEdge: r.iotEdge };
  return doc;
}
