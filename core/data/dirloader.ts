import * as fs from "node:fs";
import * as path from "node:path";
import { fail } from "../errors";
import { FLOAT32_MAX, NUMBER, UNSIGNED_INT, parseCsv, show } from "./csv";
import {
  SCHEMA_FILE,
  checkDataSchema,
  readDataSchema,
  type DataSchema,
  type ResolvedSchema,
} from "./data-schema";
import { makeDataset, reshape, sampleSize, type Dataset } from "./dataset";
import { loadRecords, type DataFile } from "./records";

export { parseCsv };

/**
 * Real device data from a directory (e.g. a volume mounted into an IoT Edge module).
 *
 * With a data schema (`schema.json` in the directory, or the `schema` option; data-schema.ts, records.ts and
 * docs/data.md) every CSV row and every JSON-lines object is a record of named columns, and the schema says which
 * are features, label or regression targets, the task, and how rows are cut into time-series windows. Without a
 * schema the formats below apply, unchanged.
 *
 * Every `*.csv`, `*.jsonl` and `*.ndjson` file directly in the directory is read, in code-unit order of the file
 * names (sub-directories and names starting with "." are skipped; extensions are case-insensitive).
 *
 * CSV (RFC 4180): a header row, then one sample per record. Fields may be quoted ("a, b"), quotes inside quoted
 * fields are doubled (""), records end with LF or CRLF and quoted fields may span lines. Blank lines are
 * skipped. The label column (`label` unless `labelColumn` says otherwise) holds class names or non-negative
 * integers; every other column is a numeric feature. Feature columns are matched by name across CSV files.
 *
 * JSON lines: one object per non-blank line, `{"x": number[] | number[][], "label": string | number}`
 * (`features` is accepted for `x`). A nested `x` gives the sample shape (e.g. [T, C] windows).
 *
 * Labels: if every label is a number (JSON number, or a CSV field that is an unsigned integer) the numbers are the
 * class indices (numClasses = max + 1). Otherwise every label is a class name (JSON strings are always names);
 * the names are sorted (code-unit order) and indexed in that order, recorded in `classNames`.
 *
 * Errors are FlotillaErrors with one-line messages naming the file and line:
 *   E_DATA_NOT_FOUND  no such directory, no data files, no samples
 *   E_DATA_PARSE      malformed CSV or JSON, missing label, non-numeric feature, bad label, mixed label kinds
 *   E_DATA_SHAPE      rows with different feature counts or shapes, inputShape of another size
 * and with a schema also
 *   E_DATA_SCHEMA     the schema is invalid (the message names the schema file and the field)
 *   E_DATA_COLUMN     a file lacks a column the schema names
 *   E_DATA_LABEL      a label outside the schema's classes, or not 0/1 (or named) for task binary
 *   E_DATA_WINDOW     no series is long enough for a window, or a window's labels disagree ("constant")
 */
export interface LoadDirectoryOptions {
  /** Per-sample shape; its size must equal the feature count. Default: [features], or the shape of nested x. */
  readonly inputShape?: readonly number[];
  /** Name of the CSV label column without a data schema. Default "label". */
  readonly labelColumn?: string;
  /**
   * The data schema: a file path, a schema object, or false to ignore the directory's schema.json. Default: the
   * directory's `schema.json` when there is one, else no schema (the formats above).
   */
  readonly schema?: string | DataSchema | false;
}

const DATA_FILE = /\.(csv|jsonl|ndjson)$/i;

type Label =
  { readonly kind: "num"; readonly value: number } | { readonly kind: "name"; readonly value: string };

class Loader {
  private values = new Float32Array(1024);
  private used = 0;
  readonly labels: Label[] = [];
  /** Where each label came from, for error messages. */
  readonly where: string[] = [];
  size = -1;
  sizeWhere = "";
  nestedShape: number[] | undefined;
  nestedWhere = "";
  csvColumns: string[] | undefined;
  csvWhere = "";

  constructor(private readonly labelColumn: string) {}

  private push(v: number): void {
    if (this.used === this.values.length) {
      const grown = new Float32Array(this.values.length * 2);
      grown.set(this.values);
      this.values = grown;
    }
    this.values[this.used++] = v;
  }

  features(): Float32Array {
    return this.values.slice(0, this.used);
  }

  private checkSize(size: number, where: string): void {
    if (size === 0) fail("E_DATA_SHAPE", `${where}: sample has no features`);
    if (this.size < 0) {
      this.size = size;
      this.sizeWhere = where;
    } else if (size !== this.size) {
      fail("E_DATA_SHAPE", `${where}: sample has ${size} features, but ${this.sizeWhere} has ${this.size}`);
    }
  }

  private addLabel(label: Label, where: string): void {
    this.labels.push(label);
    this.where.push(where);
  }

  csv(file: string, text: string): void {
    const records = parseCsv(file, text);
    if (records.length === 0) return; // an empty file contributes nothing
    const [header, headerLine] = records[0];
    const names = header.map((h) => h.trim());
    const labelAt = names.indexOf(this.labelColumn);
    if (labelAt < 0) {
      fail("E_DATA_PARSE", `${file}:${headerLine}: header has no label column ${show(this.labelColumn)}`);
    }
    const seen = new Set<string>();
    for (const name of names) {
      if (seen.has(name)) fail("E_DATA_PARSE", `${file}:${headerLine}: header repeats column ${show(name)}`);
      seen.add(name);
    }
    const featureCols = names.map((_, i) => i).filter((i) => i !== labelAt);
    const featureNames = featureCols.map((i) => names[i]);
    // Put this file's feature columns in the order of the first CSV file's header.
    let order = featureCols;
    const where0 = `${file}:${headerLine}`;
    if (this.csvColumns === undefined) {
      this.csvColumns = featureNames;
      this.csvWhere = where0;
    } else {
      const first = this.csvColumns;
      const same = first.length === featureNames.length && first.every((n) => seen.has(n));
      if (!same) {
        fail(
          "E_DATA_SHAPE",
          `${where0}: feature columns ${show(featureNames)} differ from ${this.csvWhere} ${show(first)}`,
        );
      }
      order = first.map((n) => names.indexOf(n));
    }
    this.checkSize(order.length, where0);
    for (let r = 1; r < records.length; r++) {
      const [fields, line] = records[r];
      const where = `${file}:${line}`;
      if (fields.length !== names.length) {
        fail("E_DATA_SHAPE", `${where}: row has ${fields.length} fields, the header has ${names.length}`);
      }
      for (const i of order) {
        const s = fields[i].trim();
        if (!NUMBER.test(s))
          fail("E_DATA_PARSE", `${where}: column ${show(names[i])} is ${show(fields[i])}, not a number`);
        const v = Number(s);
        if (!Number.isFinite(v) || Math.abs(v) > FLOAT32_MAX) {
          fail("E_DATA_PARSE", `${where}: column ${show(names[i])} value ${show(s)} is out of float32 range`);
        }
        this.push(v);
      }
      const raw = fields[labelAt].trim();
      if (raw === "") fail("E_DATA_PARSE", `${where}: empty label`);
      this.addLabel(
        UNSIGNED_INT.test(raw) ? { kind: "num", value: Number(raw) } : { kind: "name", value: raw },
        where,
      );
    }
  }

  jsonl(file: string, text: string): void {
    let lineNo = 0;
    let pos = text.charCodeAt(0) === 0xfeff ? 1 : 0;
    while (pos < text.length) {
      let end = text.indexOf("\n", pos);
      if (end < 0) end = text.length;
      const line = text.slice(pos, end).trim();
      pos = end + 1;
      lineNo++;
      if (line === "") continue;
      const where = `${file}:${lineNo}`;
      let obj: unknown;
      try {
        obj = JSON.parse(line);
      } catch (e) {
        fail("E_DATA_PARSE", `${where}: invalid JSON (${(e as Error).message.split("\n")[0]})`, { cause: e });
      }
      if (typeof obj !== "object" || obj === null || Array.isArray(obj)) {
        fail("E_DATA_PARSE", `${where}: expected an object {"x": [...], "label": ...}`);
      }
      const o = obj as Record<string, unknown>;
      const x = "x" in o ? o.x : o.features;
      if (x === undefined) fail("E_DATA_PARSE", `${where}: object has no "x" (or "features") array`);
      if (!Array.isArray(x))
        fail("E_DATA_PARSE", `${where}: "x" is ${show(x)}, expected an array of numbers`);
      const shape = this.flatten(x, where);
      if (shape.length > 1) {
        if (this.nestedShape === undefined) {
          this.nestedShape = shape;
          this.nestedWhere = where;
        } else if (shape.join(",") !== this.nestedShape.join(",")) {
          fail(
            "E_DATA_SHAPE",
            `${where}: x has shape [${shape}], but ${this.nestedWhere} has [${this.nestedShape}]`,
          );
        }
      }
      const label = o.label;
      if (typeof label === "number") {
        if (!Number.isSafeInteger(label) || label < 0) {
          fail("E_DATA_PARSE", `${where}: numeric label ${label} is not a non-negative integer`);
        }
        this.addLabel({ kind: "num", value: label }, where);
      } else if (typeof label === "string" && label.trim() !== "") {
        this.addLabel({ kind: "name", value: label.trim() }, where);
      } else {
        fail(
          "E_DATA_PARSE",
          `${where}: "label" is ${show(label)}, expected a class name or a non-negative integer`,
        );
      }
    }
  }

  /** Push the numbers of a (possibly nested, rectangular) array; returns its shape. */
  private flatten(x: unknown[], where: string): number[] {
    const start = this.used;
    const shape: number[] = [];
    const ragged = (): never =>
      fail("E_DATA_SHAPE", `${where}: x is ragged (not a rectangular array of numbers)`);
    const walk = (a: unknown, depth: number): void => {
      if (Array.isArray(a)) {
        if (shape.length === depth) {
          // First array at this depth: any number already seen sits at a shallower depth.
          if (start !== this.used) ragged();
          shape.push(a.length);
        } else if (shape[depth] !== a.length) {
          ragged();
        }
        for (const e of a) walk(e, depth + 1);
      } else if (typeof a === "number") {
        if (shape.length !== depth) ragged();
        if (Math.abs(a) > FLOAT32_MAX) fail("E_DATA_PARSE", `${where}: value ${a} is out of float32 range`);
        this.push(a);
      } else {
        fail("E_DATA_PARSE", `${where}: x holds ${show(a)}, not a number`);
      }
    };
    walk(x, 0);
    this.checkSize(this.used - start, where);
    return shape;
  }
}

/** Load every data file in `dir` into one dataset (see the module comment for the formats). */
export function loadDirectory(dir: string, opts: LoadDirectoryOptions = {}): Dataset {
  let st: fs.Stats;
  try {
    st = fs.statSync(dir);
  } catch {
    return fail("E_DATA_NOT_FOUND", `${dir}: no such data directory`);
  }
  if (!st.isDirectory()) fail("E_DATA_NOT_FOUND", `${dir}: not a directory`);
  const names = fs
    .readdirSync(dir, { withFileTypes: true })
    .filter((e) => !e.name.startsWith(".") && DATA_FILE.test(e.name) && (e.isFile() || e.isSymbolicLink()))
    .map((e) => e.name)
    .sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  if (names.length === 0) fail("E_DATA_NOT_FOUND", `${dir}: no *.csv, *.jsonl or *.ndjson files`);

  const schema = resolveSchema(dir, opts.schema);
  const files: DataFile[] = names.map((name) => {
    const file = path.join(dir, name);
    try {
      return { file, text: fs.readFileSync(file, "utf8"), kind: /\.csv$/i.test(name) ? "csv" : "jsonl" };
    } catch (e) {
      return fail(
        "E_DATA_NOT_FOUND",
        `${file}: cannot read (${(e as NodeJS.ErrnoException).code ?? "error"})`,
        { cause: e },
      );
    }
  });
  if (schema !== undefined) {
    const ds = loadRecords(dir, files, schema);
    if (opts.inputShape === undefined) return ds;
    checkInputShape(opts.inputShape);
    if (sampleSize(opts.inputShape) !== sampleSize(ds.inputShape)) {
      fail(
        "E_DATA_SHAPE",
        `${dir}: samples have shape [${ds.inputShape}] (${schema.where}), inputShape [${opts.inputShape}] needs ${sampleSize(opts.inputShape)} values`,
      );
    }
    return reshape(ds, opts.inputShape);
  }

  const loader = new Loader(opts.labelColumn ?? "label");
  for (const { file, text, kind } of files) {
    if (kind === "csv") loader.csv(file, text);
    else loader.jsonl(file, text);
  }
  const n = loader.labels.length;
  if (n === 0) fail("E_DATA_NOT_FOUND", `${dir}: the data files hold no samples`);

  let inputShape: readonly number[] = loader.nestedShape ?? [loader.size];
  if (opts.inputShape !== undefined) {
    const s = opts.inputShape;
    checkInputShape(s);
    if (sampleSize(s) !== loader.size) {
      fail(
        "E_DATA_SHAPE",
        `${loader.sizeWhere}: samples have ${loader.size} features, inputShape [${s}] needs ${sampleSize(s)}`,
      );
    }
    inputShape = s;
  }

  const y = new Int32Array(n);
  const firstName = loader.labels.findIndex((l) => l.kind === "name");
  if (firstName < 0) {
    let max = 0;
    for (let i = 0; i < n; i++) {
      const v = loader.labels[i].value as number;
      if (v > 0x7fffffff) fail("E_DATA_PARSE", `${loader.where[i]}: label ${v} is too large`);
      y[i] = v;
      if (v > max) max = v;
    }
    return makeDataset(loader.features(), y, inputShape, max + 1);
  }
  const firstNum = loader.labels.findIndex((l) => l.kind === "num");
  if (firstNum >= 0) {
    const [a, b] = firstNum < firstName ? [firstNum, firstName] : [firstName, firstNum];
    fail(
      "E_DATA_PARSE",
      `${loader.where[b]}: label ${show(loader.labels[b].value)} mixes with the ${loader.labels[a].kind === "num" ? "numeric label" : "class name"} ${show(loader.labels[a].value)} at ${loader.where[a]}; use all names or all integers`,
    );
  }
  const classNames = [...new Set(loader.labels.map((l) => l.value as string))].sort((a, b) =>
    a < b ? -1 : a > b ? 1 : 0,
  );
  const index = new Map(classNames.map((c, i) => [c, i]));
  for (let i = 0; i < n; i++) y[i] = index.get(loader.labels[i].value as string) as number;
  return makeDataset(loader.features(), y, inputShape, classNames.length, classNames);
}

function checkInputShape(s: readonly number[]): void {
  if (s.length === 0 || s.some((d) => !Number.isSafeInteger(d) || d <= 0)) {
    fail("E_DATA_SHAPE", `inputShape [${s}] must be a list of positive integers`);
  }
}

/** The schema to load `dir` with: the option's, else the directory's schema.json, else none. */
function resolveSchema(dir: string, given: LoadDirectoryOptions["schema"]): ResolvedSchema | undefined {
  if (given === false) return undefined;
  if (typeof given === "string") return readDataSchema(given);
  if (given !== undefined) return checkDataSchema(given, "data schema");
  const file = path.join(dir, SCHEMA_FILE);
  return fs.existsSync(file) ? readDataSchema(file) : undefined;
}
