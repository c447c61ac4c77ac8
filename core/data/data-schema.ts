import * as fs from "node:fs";
import type { ErrorObject, ValidateFunction } from "ajv";
import type { Task } from "../engine/graph-spec";
import { fail } from "../errors";
import jsonSchema from "./schemas/data-schema.json";

/**
 * The data schema: how the directory loader turns a device's CSV / JSON-lines exports into training samples or
 * time-series windows without code (docs/data.md). It is `schema.json` in the data directory (or a file or object
 * given to loadDirectory), validated against the JSON Schema `core/data/schemas/data-schema.json` (draft-07, with
 * Ajv), then checked for what a JSON Schema cannot say (a column in two roles, a label rule that does not fit the
 * task). Every problem is an E_DATA_SCHEMA error naming the schema file and the field.
 */
export interface DataSchema {
  /** Default "classification". */
  readonly task?: Task;
  /** Feature columns (channels, with a window) in order. Default: every column that has no other role. */
  readonly features?: readonly string[];
  /**
   * Label column; null = none. Default "label": required for classification and binary, used for regression and
   * reconstruction when the data has it.
   */
  readonly label?: string | null;
  /** Regression: the target columns (required there, refused elsewhere). */
  readonly targets?: readonly string[];
  /** Class names in index order. */
  readonly classes?: readonly string[];
  readonly window?: WindowSchema;
  readonly normalize?: "zscore" | { readonly mean: readonly number[]; readonly std: readonly number[] };
}

export type LabelRule = "last" | "majority" | "constant" | "mean";

export interface WindowSchema {
  readonly length: number;
  /** Default: length. */
  readonly stride?: number;
  /** Default "last". */
  readonly labelRule?: LabelRule;
  readonly groupBy?: string | readonly string[];
  readonly orderBy?: string;
  /** The largest orderBy step inside a window (seconds for ISO times); a series is cut at larger gaps. */
  readonly maxGap?: number;
}

/** A checked schema with its defaults filled in. `where` names the schema (a file path) in error messages. */
export interface ResolvedSchema {
  readonly where: string;
  readonly task: Task;
  /** undefined: every column without another role, in the first file's order. */
  readonly features?: readonly string[];
  readonly label?: string;
  /** Regression and reconstruction without a `label` field: this column is the label when the data has it. */
  readonly labelIfPresent?: string;
  readonly targets?: readonly string[];
  readonly classes?: readonly string[];
  readonly window?: {
    readonly length: number;
    readonly stride: number;
    readonly labelRule: LabelRule;
    readonly groupBy: readonly string[];
    readonly orderBy?: string;
    readonly maxGap?: number;
  };
  readonly normalize?: DataSchema["normalize"];
}

/** The name of the schema file the loader looks for in a data directory. */
export const SCHEMA_FILE = "schema.json";

let validator: ValidateFunction | undefined;

function validate(value: unknown): ErrorObject[] {
  if (validator === undefined) {
    // Loaded on first use: Ajv takes ~0.1 s to load, and most data directories have no schema.
    const { default: Ajv } = require("ajv") as typeof import("ajv");
    const ajv = new Ajv({ allErrors: true, strict: true, allowUnionTypes: true });
    validator = ajv.compile(jsonSchema);
  }
  return validator(value) ? [] : [...(validator.errors ?? [])];
}

/** A JSON pointer ("/window/stride", "/features/2") as a field path ("window.stride", "features[2]"). */
function field(pointer: string, child?: string): string {
  const parts = pointer
    .split("/")
    .slice(1)
    .map((p) => p.replace(/~1/g, "/").replace(/~0/g, "~"));
  if (child !== undefined) parts.push(child);
  let out = "";
  for (const p of parts) out += /^\d+$/.test(p) ? `[${p}]` : out === "" ? p : `.${p}`;
  return out === "" ? "(top level)" : out;
}

/** One Ajv error as "field: problem". */
function describe(e: ErrorObject): string {
  const p = e.params as Record<string, unknown>;
  switch (e.keyword) {
    case "additionalProperties":
      return `${field(e.instancePath, String(p.additionalProperty))}: unknown field`;
    case "required":
      return `${field(e.instancePath, String(p.missingProperty))}: is required`;
    case "enum":
      return `${field(e.instancePath)}: must be one of ${(p.allowedValues as unknown[]).map((v) => JSON.stringify(v)).join(", ")}`;
    case "const":
      return `${field(e.instancePath)}: must be ${JSON.stringify(p.allowedValue)}`;
    case "type":
      return `${field(e.instancePath)}: must be ${String(p.type).replace(/,/g, " or ")}`;
    default:
      return `${field(e.instancePath)}: ${e.message ?? e.keyword}`;
  }
}

function schemaError(where: string, what: string): never {
  return fail("E_DATA_SCHEMA", `${where}: ${what}`);
}

/** Read and check a schema file (E_DATA_NOT_FOUND when it cannot be read, E_DATA_SCHEMA when it is wrong). */
export function readDataSchema(file: string): ResolvedSchema {
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch (e) {
    return fail(
      "E_DATA_NOT_FOUND",
      `${file}: cannot read the data schema (${(e as NodeJS.ErrnoException).code ?? "error"})`,
      { cause: e },
    );
  }
  if (text.charCodeAt(0) === 0xfeff) text = text.slice(1);
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    const msg = (e as Error).message;
    const pos = /position (\d+)/.exec(msg);
    const line = pos ? text.slice(0, Number(pos[1])).split("\n").length : undefined;
    return fail(
      "E_DATA_SCHEMA",
      `${file}${line !== undefined ? `:${line}` : ""}: invalid JSON (${msg.replace(/\s+/g, " ").slice(0, 120)})`,
      { cause: e },
    );
  }
  return checkDataSchema(value, file);
}

/** Check a schema object (validated with the JSON Schema, then the cross-field rules) and fill in defaults. */
export function checkDataSchema(value: unknown, where: string): ResolvedSchema {
  const errors = validate(value);
  if (errors.length > 0) {
    // An if/then/else failure is also reported by the branch's own error, which says more.
    const e = errors.find((x) => x.keyword !== "if") ?? errors[0];
    schemaError(where, describe(e));
  }
  const s = value as DataSchema;
  const task: Task = s.task ?? "classification";
  const label =
    s.label === undefined ? (task === "classification" || task === "binary" ? "label" : undefined) : s.label;
  if (label === null && (task === "classification" || task === "binary")) {
    schemaError(where, `label: task ${task} needs a label column`);
  }
  if (task === "regression" && s.targets === undefined) {
    schemaError(where, "targets: is required for task regression (the target columns)");
  }
  if (task !== "regression" && s.targets !== undefined) {
    schemaError(where, `targets: only task regression has targets (task is ${task})`);
  }
  if (task === "binary" && s.classes !== undefined && s.classes.length !== 2) {
    schemaError(where, `classes: task binary has 2 classes [negative, positive], got ${s.classes.length}`);
  }
  let window: ResolvedSchema["window"];
  if (s.window !== undefined) {
    const w = s.window;
    const labelRule = w.labelRule ?? "last";
    if (labelRule === "mean" && task !== "regression") {
      schemaError(where, `window.labelRule: "mean" is for task regression only (task is ${task})`);
    }
    if (labelRule === "majority" && task === "regression") {
      schemaError(
        where,
        `window.labelRule: "majority" does not fit task regression (use last, mean or constant)`,
      );
    }
    const groupBy =
      w.groupBy === undefined ? [] : typeof w.groupBy === "string" ? [w.groupBy] : [...w.groupBy];
    if (w.maxGap !== undefined && w.orderBy === undefined) {
      schemaError(where, "window.maxGap: needs window.orderBy (the column whose steps it limits)");
    }
    window = {
      length: w.length,
      stride: w.stride ?? w.length,
      labelRule,
      groupBy,
      orderBy: w.orderBy,
      maxGap: w.maxGap,
    };
  }
  // Every column has one role.
  const roles: [string, string][] = [];
  if (label !== undefined && label !== null) roles.push(["label", label]);
  (s.targets ?? []).forEach((c, i) => roles.push([`targets[${i}]`, c]));
  (window?.groupBy ?? []).forEach((c, i) =>
    roles.push([typeof s.window?.groupBy === "string" ? "window.groupBy" : `window.groupBy[${i}]`, c]),
  );
  if (window?.orderBy !== undefined) roles.push(["window.orderBy", window.orderBy]);
  (s.features ?? []).forEach((c, i) => roles.push([`features[${i}]`, c]));
  const seen = new Map<string, string>();
  for (const [f, c] of roles) {
    const other = seen.get(c);
    if (other !== undefined) schemaError(where, `${f}: column ${JSON.stringify(c)} is already ${other}`);
    seen.set(c, f);
  }
  if (typeof s.normalize === "object") {
    const { mean, std } = s.normalize;
    if (mean.length !== std.length) {
      schemaError(where, `normalize.std: has ${std.length} values, normalize.mean has ${mean.length}`);
    }
    if (s.features !== undefined && mean.length !== s.features.length) {
      schemaError(where, `normalize.mean: has ${mean.length} values for ${s.features.length} features`);
    }
  }
  return {
    where,
    task,
    features: s.features,
    label: label ?? undefined,
    // A "label" column is what it says, not a feature, unless the schema gives that column another role.
    ...(s.label === undefined && label === undefined && !seen.has("label")
      ? { labelIfPresent: "label" }
      : {}),
    targets: s.targets,
    classes: s.classes,
    window,
    normalize: s.normalize,
  };
}
