import { fail } from "../errors";
import { FLOAT32_MAX, NUMBER, UNSIGNED_INT, parseCsv, show } from "./csv";
import type { ResolvedSchema } from "./data-schema";
import { makeDataset, type Dataset, type Normalization } from "./dataset";

/**
 * Loading with a data schema (data-schema.ts, docs/data.md): every CSV row or JSON-lines object is a record of
 * named columns; the schema says which are features, label, regression targets, and, for time series, which
 * group a row belongs to and how rows are ordered. Rows become samples [features], or windows [length, features]
 * cut from consecutive rows of one group. Errors name the file and line (E_DATA_*), or the schema file and field
 * (E_DATA_SCHEMA).
 */

/** A data file's name and text, in the order the loader reads them. */
export interface DataFile {
  readonly file: string;
  readonly text: string;
  readonly kind: "csv" | "jsonl";
}

type Label =
  { readonly kind: "num"; readonly value: number } | { readonly kind: "name"; readonly value: string };

/** Values of the largest float32 array a loader builds (1 GiB). */
const MAX_VALUES = 2 ** 28;

class Floats {
  private a = new Float32Array(1024);
  length = 0;
  push(v: number): void {
    if (this.length === this.a.length) {
      const grown = new Float32Array(this.a.length * 2);
      grown.set(this.a);
      this.a = grown;
    }
    this.a[this.length++] = v;
  }
  done(): Float32Array {
    return this.a.subarray(0, this.length);
  }
}

/** A record's value lookup: `undefined` when the record has no such column. */
type Get = (column: string) => unknown;

class Table {
  /** The label column, decided with the features by the first file. */
  label: string | undefined;
  features: string[] | undefined;
  featuresWhere = "";
  readonly x = new Floats();
  readonly t = new Floats();
  readonly labels: Label[] = [];
  readonly groups: string[] = [];
  readonly order: number[] = [];
  /** Per row: index into `files`, and the line. */
  readonly fileOf: number[] = [];
  readonly lineOf: number[] = [];
  readonly files: string[] = [];

  constructor(private readonly s: ResolvedSchema) {}

  get rows(): number {
    return this.fileOf.length;
  }

  where(row: number): string {
    return `${this.files[this.fileOf[row]]}:${this.lineOf[row]}`;
  }

  /** Columns with a role other than feature. */
  private roleColumns(): Set<string> {
    const w = this.s.window;
    return new Set([
      ...(this.label !== undefined ? [this.label] : []),
      ...(this.s.targets ?? []),
      ...(w?.groupBy ?? []),
      ...(w?.orderBy !== undefined ? [w.orderBy] : []),
    ]);
  }

  /** The feature columns, the first time from this file's columns when the schema does not name them. */
  private defaultFeatures(columns: string[], where: string): string[] {
    if (this.features !== undefined) return this.features;
    const optional = this.s.labelIfPresent;
    this.label =
      this.s.label ?? (optional !== undefined && columns.includes(optional) ? optional : undefined);
    const roles = this.roleColumns();
    const f = this.s.features ?? columns.filter((c) => !roles.has(c));
    if (f.length === 0) fail("E_DATA_SHAPE", `${where}: no feature columns (every column has another role)`);
    this.features = [...f];
    this.featuresWhere = where;
    return this.features;
  }

  csv(fileIndex: number, file: string, text: string): void {
    const records = parseCsv(file, text);
    if (records.length === 0) return;
    const [header, headerLine] = records[0];
    const names = header.map((h) => h.trim());
    const at = new Map<string, number>();
    names.forEach((name, i) => {
      if (at.has(name)) fail("E_DATA_PARSE", `${file}:${headerLine}: header repeats column ${show(name)}`);
      at.set(name, i);
    });
    const hwhere = `${file}:${headerLine}`;
    const hadFeatures = this.features !== undefined;
    const features = this.defaultFeatures(names, hwhere);
    if (this.s.features === undefined && hadFeatures) {
      // Default features: every file has the same ones (as without a schema).
      const roles = this.roleColumns();
      const mine = names.filter((c) => !roles.has(c));
      const same = mine.length === features.length && features.every((c) => at.has(c));
      if (!same) {
        fail(
          "E_DATA_SHAPE",
          `${hwhere}: feature columns ${show(mine)} differ from ${this.featuresWhere} ${show(features)}`,
        );
      }
    }
    for (const c of [...features, ...this.roleColumns()]) {
      if (!at.has(c))
        fail("E_DATA_COLUMN", `${hwhere}: no column ${show(c)} (${this.roleOf(c)}, ${this.s.where})`);
    }
    for (let r = 1; r < records.length; r++) {
      const [fields, line] = records[r];
      if (fields.length !== names.length) {
        fail(
          "E_DATA_SHAPE",
          `${file}:${line}: row has ${fields.length} fields, the header has ${names.length}`,
        );
      }
      this.row(fileIndex, file, line, (c) => {
        const i = at.get(c);
        return i === undefined ? undefined : fields[i];
      });
    }
  }

  jsonl(fileIndex: number, file: string, text: string): void {
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
        fail("E_DATA_PARSE", `${where}: expected an object of named columns {"column": value, ...}`);
      }
      const o = obj as Record<string, unknown>;
      this.defaultFeatures(Object.keys(o), where);
      this.row(fileIndex, file, lineNo, (c) =>
        Object.prototype.hasOwnProperty.call(o, c) ? o[c] : undefined,
      );
    }
  }

  private roleOf(c: string): string {
    const w = this.s.window;
    if (c === this.label) return "the label column";
    if (this.s.targets?.includes(c)) return "a target column";
    if (w?.groupBy.includes(c)) return "a window.groupBy column";
    if (c === w?.orderBy) return "the window.orderBy column";
    return "a feature column";
  }

  private value(get: Get, c: string, where: string): unknown {
    const v = get(c);
    if (v === undefined)
      fail("E_DATA_COLUMN", `${where}: no column ${show(c)} (${this.roleOf(c)}, ${this.s.where})`);
    return v;
  }

  private number(get: Get, c: string, where: string): number {
    const raw = this.value(get, c, where);
    let v: number;
    if (typeof raw === "number") v = raw;
    else if (typeof raw === "string" && NUMBER.test(raw.trim())) v = Number(raw.trim());
    else return fail("E_DATA_PARSE", `${where}: column ${show(c)} is ${show(raw)}, not a number`);
    if (!Number.isFinite(v) || Math.abs(v) > FLOAT32_MAX) {
      fail("E_DATA_PARSE", `${where}: column ${show(c)} value ${show(raw)} is out of float32 range`);
    }
    return v;
  }

  private row(fileIndex: number, file: string, line: number, get: Get): void {
    const where = `${file}:${line}`;
    for (const c of this.features as string[]) this.x.push(this.number(get, c, where));
    for (const c of this.s.targets ?? []) this.t.push(this.number(get, c, where));
    if (this.label !== undefined) this.labels.push(this.labelOf(get, this.label, where));
    const w = this.s.window;
    if (w !== undefined) {
      if (w.groupBy.length > 0) {
        const key = w.groupBy.map((c) => {
          const v = this.value(get, c, where);
          if (typeof v === "string") return v.trim();
          if (typeof v === "number" || typeof v === "boolean") return String(v);
          return fail(
            "E_DATA_PARSE",
            `${where}: group column ${show(c)} is ${show(v)}, not a name or number`,
          );
        });
        this.groups.push(JSON.stringify(key));
      } else {
        this.groups.push(String(fileIndex));
      }
      if (w.orderBy !== undefined) this.order.push(this.time(get, w.orderBy, where));
    }
    this.fileOf.push(fileIndex);
    this.lineOf.push(line);
  }

  private labelOf(get: Get, c: string, where: string): Label {
    const v = this.value(get, c, where);
    if (typeof v === "string") {
      const s = v.trim();
      if (s === "") fail("E_DATA_PARSE", `${where}: empty label`);
      return UNSIGNED_INT.test(s) ? { kind: "num", value: Number(s) } : { kind: "name", value: s };
    }
    if (typeof v === "boolean") return { kind: "num", value: v ? 1 : 0 };
    if (typeof v === "number" && Number.isSafeInteger(v) && v >= 0) return { kind: "num", value: v };
    return fail(
      "E_DATA_PARSE",
      `${where}: label ${show(v)} is not a class name, a non-negative integer or a boolean`,
    );
  }

  /** An order value: a number, or an ISO 8601 time (seconds since the epoch). */
  private time(get: Get, c: string, where: string): number {
    const raw = this.value(get, c, where);
    if (typeof raw === "number" && Number.isFinite(raw)) return raw;
    if (typeof raw === "string") {
      const s = raw.trim();
      if (NUMBER.test(s)) return Number(s);
      const ms = /^\d{4}-\d\d-\d\d/.test(s) ? Date.parse(s) : NaN;
      if (Number.isFinite(ms)) return ms / 1000;
    }
    return fail(
      "E_DATA_PARSE",
      `${where}: order column ${show(c)} is ${show(raw)}, not a number or ISO 8601 time`,
    );
  }
}

/** Class indices for the rows' labels (E_DATA_LABEL / E_DATA_PARSE with the row's file and line). */
function resolveLabels(
  t: Table,
  s: ResolvedSchema,
): { y: Int32Array; numClasses: number; classNames?: readonly string[] } {
  const n = t.rows;
  const y = new Int32Array(n);
  if (t.label === undefined) return { y, numClasses: s.task === "binary" ? 2 : 1 };
  const labels = t.labels;
  if (s.classes !== undefined) {
    const index = new Map(s.classes.map((c, i) => [c, i]));
    for (let i = 0; i < n; i++) {
      const l = labels[i];
      const k = l.kind === "num" ? (l.value < s.classes.length ? l.value : -1) : (index.get(l.value) ?? -1);
      if (k < 0) {
        fail(
          "E_DATA_LABEL",
          `${t.where(i)}: label ${show(l.value)} is not one of the schema's classes ${show(s.classes)} (${s.where})`,
        );
      }
      y[i] = k;
    }
    return { y, numClasses: s.classes.length, classNames: s.classes };
  }
  const firstName = labels.findIndex((l) => l.kind === "name");
  const firstNum = labels.findIndex((l) => l.kind === "num");
  if (firstName >= 0 && firstNum >= 0) {
    const [a, b] = firstNum < firstName ? [firstNum, firstName] : [firstName, firstNum];
    fail(
      "E_DATA_PARSE",
      `${t.where(b)}: label ${show(labels[b].value)} mixes with the ${labels[a].kind === "num" ? "numeric label" : "class name"} ${show(labels[a].value)} at ${t.where(a)}; use all names or all integers`,
    );
  }
  if (firstName < 0) {
    let max = 0;
    for (let i = 0; i < n; i++) {
      const v = labels[i].value as number;
      if (v > (s.task === "binary" ? 1 : 0x7fffffff)) {
        fail(
          "E_DATA_LABEL",
          `${t.where(i)}: label ${v} is ${s.task === "binary" ? "not 0 or 1 (task binary)" : "too large"}`,
        );
      }
      y[i] = v;
      if (v > max) max = v;
    }
    return { y, numClasses: s.task === "binary" ? 2 : max + 1 };
  }
  if (s.task === "binary") {
    fail(
      "E_DATA_LABEL",
      `${t.where(firstName)}: binary label ${show(labels[firstName].value)} is a name: give "classes": [negative, positive] in ${s.where}`,
    );
  }
  const names = [...new Set(labels.map((l) => l.value as string))].sort((a, b) =>
    a < b ? -1 : a > b ? 1 : 0,
  );
  const index = new Map(names.map((c, i) => [c, i]));
  for (let i = 0; i < n; i++) y[i] = index.get(labels[i].value as string) as number;
  return { y, numClasses: names.length, classNames: names };
}

/** Standardise the rows' features in place; the statistics used. */
function normalize(t: Table, x: Float32Array, F: number, s: ResolvedSchema): Normalization | undefined {
  const spec = s.normalize;
  if (spec === undefined) return undefined;
  let mean: number[];
  let std: number[];
  if (spec === "zscore") {
    mean = new Array<number>(F).fill(0);
    const sq = new Array<number>(F).fill(0);
    const n = t.rows;
    for (let r = 0; r < n; r++) for (let f = 0; f < F; f++) mean[f] += x[r * F + f];
    for (let f = 0; f < F; f++) mean[f] /= n;
    for (let r = 0; r < n; r++) {
      for (let f = 0; f < F; f++) {
        const d = x[r * F + f] - mean[f];
        sq[f] += d * d;
      }
    }
    // A constant feature (std 0) keeps std 1: it becomes 0 everywhere.
    std = sq.map((v) => Math.sqrt(v / n) || 1);
  } else {
    if (spec.mean.length !== F) {
      fail(
        "E_DATA_SCHEMA",
        `${s.where}: normalize.mean: has ${spec.mean.length} values, the data has ${F} features`,
      );
    }
    mean = [...spec.mean];
    std = [...spec.std];
  }
  for (let i = 0; i < x.length; i++) {
    const f = i % F;
    x[i] = (x[i] - mean[f]) / std[f];
  }
  return { source: spec === "zscore" ? "zscore" : "fixed", mean, std };
}

/** Load `files` with schema `s` (see the module comment). `dir` names the directory in errors. */
export function loadRecords(dir: string, files: readonly DataFile[], s: ResolvedSchema): Dataset {
  const t = new Table(s);
  files.forEach((f, i) => {
    t.files.push(f.file);
    if (f.kind === "csv") t.csv(i, f.file, f.text);
    else t.jsonl(i, f.file, f.text);
  });
  const n = t.rows;
  if (n === 0) fail("E_DATA_NOT_FOUND", `${dir}: the data files hold no samples`);
  const features = t.features as string[];
  const F = features.length;
  const K = s.targets?.length ?? 0;
  const rowsX = t.x.done();
  const rowsT = t.t.done();
  const { y: rowY, numClasses, classNames } = resolveLabels(t, s);
  const normalization = normalize(t, rowsX, F, s);
  const extras = {
    task: s.task,
    features,
    ...(normalization !== undefined ? { normalization } : {}),
  };
  const w = s.window;
  if (w === undefined) {
    if (n * F > MAX_VALUES) fail("E_DATA_SHAPE", `${dir}: ${n} rows of ${F} features are too many values`);
    return makeDataset(rowsX.slice(), rowY, [F], numClasses, classNames, {
      ...extras,
      ...(K > 0 ? { targets: rowsT.slice(), targetSize: K } : {}),
    });
  }

  // Series: rows grouped (in order of first appearance), each group sorted by the order column (stable).
  const byGroup = new Map<string, number[]>();
  for (let r = 0; r < n; r++) {
    const g = byGroup.get(t.groups[r]);
    if (g) g.push(r);
    else byGroup.set(t.groups[r], [r]);
  }
  let series = [...byGroup.values()];
  if (w.orderBy !== undefined) for (const g of series) g.sort((a, b) => t.order[a] - t.order[b] || a - b);
  const maxGap = w.maxGap;
  if (maxGap !== undefined) {
    // Cut every series where consecutive rows are more than maxGap apart.
    series = series.flatMap((g) => {
      const pieces: number[][] = [];
      let from = 0;
      for (let i = 1; i <= g.length; i++) {
        if (i === g.length || t.order[g[i]] - t.order[g[i - 1]] > maxGap) {
          pieces.push(g.slice(from, i));
          from = i;
        }
      }
      return pieces;
    });
  }
  const L = w.length;
  const S = w.stride;
  let windows = 0;
  let longest = 0;
  series.forEach((g, i) => {
    if (g.length >= L) windows += Math.floor((g.length - L) / S) + 1;
    if (g.length > series[longest].length) longest = i;
  });
  if (windows === 0) {
    const g = series[longest];
    fail(
      "E_DATA_WINDOW",
      `${t.where(g[0])}: no window can be cut: the longest series (from this row) has ${g.length} rows, a window needs ${L} (window.length in ${s.where})`,
    );
  }
  if (windows * L * F > MAX_VALUES) {
    fail("E_DATA_SHAPE", `${dir}: ${windows} windows of [${L}, ${F}] are too many values`);
  }
  const x = new Float32Array(windows * L * F);
  const y = new Int32Array(windows);
  const targets = K > 0 ? new Float32Array(windows * K) : undefined;
  const counts = new Map<number, number>();
  let o = 0;
  for (const g of series) {
    for (let start = 0; start + L <= g.length; start += S, o++) {
      const rows = g.slice(start, start + L);
      rows.forEach((r, k) => x.set(rowsX.subarray(r * F, (r + 1) * F), (o * L + k) * F));
      const last = rows[L - 1];
      // The label (regression: the targets, the label then follows the last row unless constant is asked).
      if (t.label !== undefined) {
        if (w.labelRule === "constant") {
          for (const r of rows) {
            if (rowY[r] !== rowY[rows[0]]) {
              fail(
                "E_DATA_WINDOW",
                `${t.where(r)}: label ${show(t.labels[r].value)} differs from ${show(t.labels[rows[0]].value)} at ${t.where(rows[0])} within one window (window.labelRule "constant" in ${s.where})`,
              );
            }
          }
          y[o] = rowY[rows[0]];
        } else if (w.labelRule === "majority") {
          // Most frequent; ties go to the label seen latest in the window.
          counts.clear();
          for (const r of rows) counts.set(rowY[r], (counts.get(rowY[r]) ?? 0) + 1);
          let best = -1;
          let bestCount = 0;
          for (let k = L - 1; k >= 0; k--) {
            const c = counts.get(rowY[rows[k]]) as number;
            if (c > bestCount) {
              best = rowY[rows[k]];
              bestCount = c;
            }
          }
          y[o] = best;
        } else {
          y[o] = rowY[last];
        }
      }
      if (targets !== undefined) {
        for (let j = 0; j < K; j++) {
          let v = rowsT[last * K + j];
          if (w.labelRule === "mean") {
            let sum = 0;
            for (const r of rows) sum += rowsT[r * K + j];
            v = sum / L;
          } else if (w.labelRule === "constant") {
            for (const r of rows) {
              if (rowsT[r * K + j] !== rowsT[rows[0] * K + j]) {
                fail(
                  "E_DATA_WINDOW",
                  `${t.where(r)}: target ${show((s.targets as readonly string[])[j])} is ${rowsT[r * K + j]}, not ${rowsT[rows[0] * K + j]} as at ${t.where(rows[0])}, within one window (window.labelRule "constant" in ${s.where})`,
                );
              }
            }
          }
          targets[o * K + j] = v;
        }
      }
    }
  }
  return makeDataset(x, y, [L, F], numClasses, classNames, {
    ...extras,
    ...(targets !== undefined ? { targets, targetSize: K } : {}),
  });
}
