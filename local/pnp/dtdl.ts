/**
 * The modules' IoT Plug and Play models (dtdl/dtmi/flotilla/edge/*.json, DTDL v3): reading them, validating them
 * with Microsoft's DTDL parser, and comparing each with its module's code so the two cannot drift.
 *
 * Validation is Microsoft's DTDLParser (the .NET parser behind Azure Digital Twins and IoT Plug and Play tooling)
 * built to WebAssembly, from the npm package @digicatapult/dtdl-parser (a devDependency: tooling and tests only).
 * It applies the whole DTDL v3 language (https://github.com/Azure/opendigitaltwins-dtdl/blob/master/DTDL/v3/DTDL.v3.md)
 * and its QuantitativeTypes extension: context, DTMI syntax and lengths, element types and required members, name
 * rules and uniqueness, schemas, writable only on Property, Command request/response, semantic types and their
 * units, description lengths, the contents/complexity limits. This file adds what the repository's own layout
 * requires: each file holds one interface, at the Device Model Repository path of its @id
 * (https://github.com/Azure/iot-plugandplay-models-tools, "dtmi to path": lower case, ':' -> '/', ';' -> '-').
 *
 * The comparison (`compareModel`) takes what a module's code declares (modules/<m>/src/model.ts: MODEL_ID, the
 * writable property specs, CLOUD_DESIRED_KEYS, METHODS, REPORTED_KEYS) and returns every difference as one line.
 */
import { readdirSync, readFileSync, statSync } from "node:fs";
import { join, relative, sep } from "node:path";
import type { PropertySpec, PropertySpecs } from "../../modules/shared/writable";

/** One model file. */
export interface ModelFile {
  /** Path relative to the models root (e.g. dtmi/flotilla/edge/trainer-1.json). */
  readonly path: string;
  readonly json: unknown;
}

/** One problem: where, and a one-line reason. */
export interface ModelProblem {
  readonly path?: string;
  /** The element the problem is about (a DTMI), when known. */
  readonly id?: string;
  readonly message: string;
}

/** The Device Model Repository path of a DTMI: dtmi:flotilla:edge:UpdateQueue;1 -> dtmi/flotilla/edge/updatequeue-1.json. */
export function dmrPath(dtmi: string): string {
  return `${dtmi.toLowerCase().replace(/:/g, "/").replace(";", "-")}.json`;
}

/** Every *.json under `root` (a Device Model Repository layout). */
export function readModels(root: string): ModelFile[] {
  const out: ModelFile[] = [];
  const walk = (dir: string): void => {
    for (const name of readdirSync(dir).sort()) {
      const p = join(dir, name);
      if (statSync(p).isDirectory()) walk(p);
      else if (name.endsWith(".json")) {
        const path = relative(root, p).split(sep).join("/");
        let json: unknown;
        try {
          json = JSON.parse(readFileSync(p, "utf8"));
        } catch (e) {
          json = { $invalidJson: e instanceof Error ? e.message : String(e) };
        }
        out.push({ path, json });
      }
    }
  };
  walk(root);
  return out;
}

interface ParsingError {
  readonly PrimaryID?: string | null;
  readonly Cause: string;
  readonly ValidationID: string;
}
interface Parser {
  parse(json: string): string;
  parserVersion(): string;
}

let parser: Promise<Parser> | undefined;
/** Microsoft's DTDLParser (WebAssembly), loaded once per process (about a second of CPU). */
function dtdlParser(): Promise<Parser> {
  parser ??= import("@digicatapult/dtdl-parser").then((m) => m.getInterop() as Promise<Parser>);
  return parser;
}

/** The DTDL parser's version text (e.g. "DTDLParser, Version=1.1.3...."). */
export async function parserVersion(): Promise<string> {
  return (await dtdlParser()).parserVersion();
}

/**
 * Validates a set of model files together (a reference from one to another resolves within the set): the DTDL v3
 * rules (Microsoft's parser), then the repository's layout (one Interface per file, at its DMR path). Returns every
 * problem found; none = valid.
 */
export async function validateModels(files: readonly ModelFile[]): Promise<ModelProblem[]> {
  const problems: ModelProblem[] = [];
  const byId = new Map<string, string>();
  for (const f of files) {
    const j = f.json as Record<string, unknown> | null;
    if (j !== null && typeof j === "object" && "$invalidJson" in j) {
      problems.push({ path: f.path, message: `not JSON: ${String(j.$invalidJson)}` });
      continue;
    }
    if (j === null || typeof j !== "object" || Array.isArray(j)) {
      problems.push({ path: f.path, message: "a model file must hold one DTDL Interface object" });
      continue;
    }
    const id = j["@id"];
    if (j["@type"] !== "Interface" || typeof id !== "string") {
      problems.push({ path: f.path, message: "a model file must hold one DTDL Interface with an @id" });
      continue;
    }
    if (dmrPath(id) !== f.path)
      problems.push({
        path: f.path,
        id,
        message: `${id} belongs at ${dmrPath(id)} (Device Model Repository layout)`,
      });
    if (byId.has(id))
      problems.push({ path: f.path, id, message: `${id} is also defined in ${byId.get(id)}` });
    byId.set(id, f.path);
  }
  if (problems.length > 0) return problems;
  const p = await dtdlParser();
  try {
    p.parse(JSON.stringify(files.map((f) => f.json)));
  } catch (e) {
    problems.push(...parserProblems(e, files));
  }
  return problems;
}

function parserProblems(e: unknown, files: readonly ModelFile[]): ModelProblem[] {
  const text = e instanceof Error ? e.message : String(e);
  let report: { ExceptionKind?: string; Errors?: ParsingError[]; UndefinedIdentifiers?: string[] };
  try {
    report = JSON.parse(text) as typeof report;
  } catch {
    return [{ message: `DTDL parser: ${text}` }];
  }
  const fileOf = (id: string | null | undefined): string | undefined => {
    if (!id) return undefined;
    // An element's DTMI starts with its interface's (dtmi:a:b;1 -> dtmi:a:b:_contents:__x;1).
    const base = id.replace(/;\d+$/, "");
    for (const f of files) {
      const fid = String((f.json as Record<string, unknown>)["@id"]).replace(/;\d+$/, "");
      if (base === fid || base.startsWith(`${fid}:`)) return f.path;
    }
    return undefined;
  };
  if (report.ExceptionKind === "Resolution")
    return [
      {
        message: `DTDL: undefined identifiers (no model defines them): ${(report.UndefinedIdentifiers ?? []).join(", ")}`,
      },
    ];
  return (report.Errors ?? []).map((err) => ({
    path: fileOf(err.PrimaryID),
    id: err.PrimaryID ?? undefined,
    message: `${oneLine(err.Cause)} [${err.ValidationID.replace(/^dtmi:dtdl:parsingError:/, "")}]`,
  }));
}

/** One line, long quoted values cut (a 600-character description is not repeated whole). */
function oneLine(s: string): string {
  return s
    .replace(/\s+/g, " ")
    .replace(/'([^']{60})[^']{20,}'/g, "'$1…'")
    .trim();
}

/** A problem as one line: `path: message`. */
export function showProblem(p: ModelProblem): string {
  return p.path ? `${p.path}: ${p.message}` : p.message;
}

// --- the model compared with the code ------------------------------------------------------------------------------

/** What a module's code declares (modules/<m>/src/model.ts and its method table). */
export interface ModuleContract {
  readonly modelId: string;
  /** The writable property specs (modules/shared/writable.ts), with the module's defaults. */
  readonly specs: PropertySpecs;
  /** Desired keys the Function writes. */
  readonly cloudDesiredKeys: readonly string[];
  /** The direct methods the module registers. */
  readonly methods: readonly string[];
  /** The top-level reported keys of the module's own state. */
  readonly reportedKeys: readonly string[];
}

type Json = Record<string, unknown>;

function types(c: Json): string[] {
  const t = c["@type"];
  return Array.isArray(t) ? t.map(String) : [String(t)];
}

/** A value as the model's descriptions state it: numbers plain, strings quoted, null/true/false. */
export function showValue(v: unknown): string {
  return typeof v === "string" ? JSON.stringify(v) : String(v);
}

/**
 * A schema with references to the interface's `schemas` resolved and what does not change its meaning (@id,
 * description, displayName, comment) left out, so a model's schema and a spec's compare as JSON.
 */
function normalSchema(s: unknown, defs: ReadonlyMap<string, unknown>, depth = 0): unknown {
  if (depth > 16) return s;
  if (typeof s === "string") return defs.has(s) ? normalSchema(defs.get(s), defs, depth + 1) : s;
  if (Array.isArray(s)) return s.map((x) => normalSchema(x, defs, depth + 1));
  if (s === null || typeof s !== "object") return s;
  const out: Json = {};
  for (const [k, v] of Object.entries(s as Json).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))) {
    if (k === "@id" || k === "description" || k === "displayName" || k === "comment") continue;
    out[k] = normalSchema(v, defs, depth + 1);
  }
  return out;
}

/**
 * Every difference between a module's model and its code, one line each (none: in sync):
 * - @id is the module's MODEL_ID;
 * - each writable spec is a writable Property of the same name, with the same schema and unit (QuantitativeTypes
 *   semantic type and unit), and its description states the range ("range MIN to MAX"), the default ("default V")
 *   and, for a property that waits for the running round, "next round";
 * - each CLOUD_DESIRED_KEYS entry is a writable Property; each reported key is a Property;
 * - each method is a Command and each Command a method;
 * - and the other way round: a writable Property that is neither a spec nor a cloud key, or a read-only one that
 *   is not a reported key, is a difference too.
 */
export function compareModel(model: unknown, code: ModuleContract): string[] {
  const diffs: string[] = [];
  const m = (model ?? {}) as Json;
  if (m["@id"] !== code.modelId)
    diffs.push(`@id ${String(m["@id"])} is not the code's MODEL_ID ${code.modelId}`);
  const defs = new Map<string, unknown>();
  for (const s of (Array.isArray(m.schemas) ? m.schemas : []) as Json[])
    if (typeof s["@id"] === "string") defs.set(s["@id"], s);
  const contents = (Array.isArray(m.contents) ? m.contents : []) as Json[];
  const byName = new Map(contents.map((c) => [String(c.name), c]));
  const isProperty = (c: Json | undefined): c is Json => c !== undefined && types(c).includes("Property");

  for (const [name, spec] of Object.entries(code.specs) as [string, PropertySpec][]) {
    const c = byName.get(name);
    if (!isProperty(c)) {
      diffs.push(`writable property ${name} (the code's spec) is not a Property in the model`);
      continue;
    }
    if (c.writable !== true) diffs.push(`${name}: the model's Property is not writable`);
    const want = JSON.stringify(normalSchema(spec.schema, defs));
    const got = JSON.stringify(normalSchema(c.schema, defs));
    if (want !== got) diffs.push(`${name}: schema ${got} in the model, ${want} in the code`);
    const semantic = types(c).filter((t) => t !== "Property");
    const unit = c.unit === undefined ? undefined : String(c.unit);
    if (spec.unit) {
      if (!semantic.includes(spec.unit[0]) || unit !== spec.unit[1])
        diffs.push(
          `${name}: unit ${semantic.join("+") || "none"}/${unit ?? "none"} in the model, ${spec.unit[0]}/${spec.unit[1]} in the code`,
        );
    } else if (semantic.length > 0 || unit !== undefined) {
      diffs.push(`${name}: the model gives a unit (${[...semantic, unit].join(" ")}), the code none`);
    }
    const d = String(c.description ?? "").toLowerCase();
    if (spec.minimum !== undefined || spec.maximum !== undefined) {
      const range = `range ${showValue(spec.minimum)} to ${showValue(spec.maximum)}`;
      if (!d.includes(range)) diffs.push(`${name}: the model's description does not state "${range}"`);
    }
    const def = `default ${showValue(spec.default)}`.toLowerCase();
    if (!d.includes(def)) diffs.push(`${name}: the model's description does not state "${def}"`);
    const nextRound = d.includes("next round");
    if (spec.applies === "next-round" && !nextRound)
      diffs.push(`${name}: applies at the next round, the model's description does not say so`);
    if (spec.applies === "now" && nextRound)
      diffs.push(`${name}: applies at once, the model's description says "next round"`);
  }
  for (const key of code.cloudDesiredKeys) {
    const c = byName.get(key);
    if (!isProperty(c) || c.writable !== true)
      diffs.push(`desired ${key} (written by the Function) is not a writable Property in the model`);
  }
  for (const key of code.reportedKeys)
    if (!isProperty(byName.get(key))) diffs.push(`reported ${key} is not a Property in the model`);

  const specs = new Set(Object.keys(code.specs));
  const cloud = new Set(code.cloudDesiredKeys);
  const reported = new Set(code.reportedKeys);
  const methods = new Set(code.methods);
  for (const c of contents) {
    const name = String(c.name);
    if (isProperty(c)) {
      if (c.writable === true && !specs.has(name) && !cloud.has(name))
        diffs.push(`writable Property ${name} is neither a writable spec nor a desired key of the code`);
      if (c.writable !== true && !reported.has(name))
        diffs.push(`read-only Property ${name} is not a reported key of the code`);
    } else if (types(c).includes("Command") && !methods.has(name)) {
      diffs.push(`Command ${name} is not a direct method of the module`);
    }
  }
  for (const method of code.methods) {
    const c = byName.get(method);
    if (c === undefined || !types(c).includes("Command"))
      diffs.push(`direct method ${method} is not a Command in the model`);
  }
  return diffs;
}

/**
 * The field names of a Property's Object schema (a reference to the interface's `schemas` resolved), or undefined
 * when the Property is absent or its schema is not an Object: what a reported value's own keys are checked against.
 */
export function objectFields(model: unknown, name: string): string[] | undefined {
  const m = (model ?? {}) as Json;
  const contents = (Array.isArray(m.contents) ? m.contents : []) as Json[];
  const c = contents.find((x) => x.name === name);
  if (!c) return undefined;
  let schema = c.schema;
  if (typeof schema === "string")
    schema = ((Array.isArray(m.schemas) ? m.schemas : []) as Json[]).find((s) => s["@id"] === schema);
  const s = schema as Json | undefined;
  if (!s || s["@type"] !== "Object" || !Array.isArray(s.fields)) return undefined;
  return (s.fields as Json[]).map((f) => String(f.name));
}
