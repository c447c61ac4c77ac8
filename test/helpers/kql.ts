/**
 * A parse-level checker for the Kusto (KQL) queries the Azure Monitor workbook and alert rules carry
 * (monitoring/azure/*.json). Not a Kusto parser: it checks what can go wrong when a query is written by hand and never
 * run in this repository (no Azure subscription here), following the language reference
 * (https://learn.microsoft.com/kusto/query/): balanced brackets and closed string literals; a pipeline of a known
 * table then known tabular operators (`| where`, `| extend`, `| summarize … by …`, `| render <chart>`, …); every
 * function called is a known scalar/aggregation function; and every bare column name exists at that point of the
 * pipeline (the table's schema, then what `extend`, `project`, `summarize` define). Workbook parameters
 * (`{Name}`, `{Name:value}`) are replaced by a literal before checking.
 */

/** Columns of the tables the queries read (Azure Monitor table reference: InsightsMetrics, AppMetrics/AppEvents). */
export const TABLES: Readonly<Record<string, readonly string[]>> = {
  InsightsMetrics: [
    "TimeGenerated",
    "Computer",
    "Origin",
    "Namespace",
    "Name",
    "Val",
    "Tags",
    "AgentId",
    "Type",
    "_ResourceId",
  ],
  customMetrics: [
    "timestamp",
    "name",
    "value",
    "valueCount",
    "valueSum",
    "valueMin",
    "valueMax",
    "valueStdDev",
    "customDimensions",
    "cloud_RoleName",
    "cloud_RoleInstance",
  ],
  customEvents: [
    "timestamp",
    "name",
    "itemType",
    "customDimensions",
    "customMeasurements",
    "cloud_RoleName",
    "cloud_RoleInstance",
    "operation_Id",
  ],
};

const OPERATORS = new Set([
  "where",
  "extend",
  "summarize",
  "project",
  "project-away",
  "order",
  "sort",
  "render",
  "top",
  "take",
  "limit",
  "distinct",
  "count",
  "evaluate",
]);

const FUNCTIONS = new Set([
  // scalar
  "tostring",
  "toint",
  "tolong",
  "todouble",
  "toreal",
  "tobool",
  "todatetime",
  "parse_json",
  "todynamic",
  "bin",
  "ago",
  "now",
  "datetime_diff",
  "round",
  "isnotempty",
  "isempty",
  "isnotnull",
  "isnull",
  "iff",
  "strcat",
  // aggregation
  "count",
  "sum",
  "max",
  "min",
  "avg",
  "dcount",
  "arg_max",
  "arg_min",
  "make_set",
  "percentile",
  // plugins (evaluate)
  "pivot",
]);

const KEYWORDS = new Set([
  "and",
  "or",
  "not",
  "in",
  "by",
  "asc",
  "desc",
  "nulls",
  "first",
  "last",
  "startswith",
  "endswith",
  "has",
  "contains",
  "between",
  "true",
  "false",
]);

const CHARTS = new Set([
  "timechart",
  "columnchart",
  "barchart",
  "piechart",
  "areachart",
  "linechart",
  "table",
]);

interface Tok {
  kind: "id" | "str" | "num" | "op";
  text: string;
}

function tokenize(q: string): Tok[] {
  const out: Tok[] = [];
  let i = 0;
  while (i < q.length) {
    const c = q[i];
    if (/\s/.test(c)) {
      i++;
      continue;
    }
    if (c === "'" || c === '"') {
      const end = q.indexOf(c, i + 1);
      if (end < 0) throw new Error(`unterminated string at ${i}`);
      out.push({ kind: "str", text: q.slice(i, end + 1) });
      i = end + 1;
      continue;
    }
    const num = /^\d+(\.\d+)?(ms|s|m|h|d)?/.exec(q.slice(i));
    if (num) {
      out.push({ kind: "num", text: num[0] });
      i += num[0].length;
      continue;
    }
    const id = /^[A-Za-z_][A-Za-z0-9_]*(-[a-z]+)?/.exec(q.slice(i));
    if (id) {
      out.push({ kind: "id", text: id[0] });
      i += id[0].length;
      continue;
    }
    const op = /^(==|!=|<=|>=|=~|[|(),.=<>+\-*/[\]:;])/.exec(q.slice(i));
    if (!op) throw new Error(`unexpected character '${c}' at ${i}`);
    out.push({ kind: "op", text: op[0] });
    i += op[0].length;
  }
  return out;
}

/** Splits tokens on `|` outside brackets. */
function stages(toks: Tok[]): Tok[][] {
  const out: Tok[][] = [[]];
  let depth = 0;
  for (const t of toks) {
    if (t.text === "(" || t.text === "[") depth++;
    if (t.text === ")" || t.text === "]") depth--;
    if (depth < 0) throw new Error("unbalanced brackets");
    if (t.text === "|" && depth === 0) out.push([]);
    else out[out.length - 1].push(t);
  }
  if (depth !== 0) throw new Error("unbalanced brackets");
  return out;
}

/** Top-level comma-separated parts of a stage's tokens. */
function commaParts(toks: Tok[]): Tok[][] {
  const out: Tok[][] = [[]];
  let depth = 0;
  for (const t of toks) {
    if (t.text === "(" || t.text === "[") depth++;
    if (t.text === ")" || t.text === "]") depth--;
    if (t.text === "," && depth === 0) out.push([]);
    else out[out.length - 1].push(t);
  }
  return out.filter((p) => p.length > 0);
}

/** Workbook parameters replaced by a literal value (`{StaleMinutes:value}` → 1). */
export function substituteParameters(q: string): string {
  return q.replace(/\{[A-Za-z][A-Za-z0-9]*(:[a-z]+)?\}/g, "1");
}

export interface KqlCheck {
  readonly table: string;
  /** String literals in the query (metric names, event names). */
  readonly literals: readonly string[];
}

/** Checks `query`; throws an Error naming the first problem. */
export function checkKql(query: string): KqlCheck {
  const toks = tokenize(substituteParameters(query));
  const parts = stages(toks);
  const first = parts[0];
  if (first.length !== 1 || first[0].kind !== "id" || !(first[0].text in TABLES))
    throw new Error(`the query must start with a known table, not '${first.map((t) => t.text).join(" ")}'`);
  const table = first[0].text;
  let columns: Set<string> | null = new Set(TABLES[table]);
  const checkExpr = (expr: Tok[], where: string, defined: Set<string> | null) => {
    for (let i = 0; i < expr.length; i++) {
      const t = expr[i];
      if (t.kind !== "id") continue;
      const prev = expr[i - 1]?.text;
      const next = expr[i + 1]?.text;
      if (prev === ".") continue; // a dynamic member (customDimensions.job, parse_json(Tags).edge_device)
      if (KEYWORDS.has(t.text)) continue;
      if (next === "(") {
        if (!FUNCTIONS.has(t.text)) throw new Error(`${where}: unknown function ${t.text}()`);
        continue;
      }
      if (defined && !defined.has(t.text)) throw new Error(`${where}: unknown column '${t.text}'`);
    }
  };
  /** `name = expr` or `expr` (a column keeps its name). */
  const assignments = (toks2: Tok[], where: string, defined: Set<string> | null): string[] => {
    const names: string[] = [];
    for (const p of commaParts(toks2)) {
      if (p.length >= 2 && p[0].kind === "id" && p[1].text === "=") {
        checkExpr(p.slice(2), where, defined);
        names.push(p[0].text);
      } else {
        checkExpr(p, where, defined);
        if (p.length === 1 && p[0].kind === "id") names.push(p[0].text);
        else if (p[0]?.text === "arg_max" || p[0]?.text === "arg_min")
          for (const a of commaParts(p.slice(2, -1)))
            if (a.length === 1 && a[0].kind === "id") names.push(a[0].text);
      }
    }
    return names;
  };
  const literals = toks.filter((t) => t.kind === "str").map((t) => t.text.slice(1, -1));
  for (const [n, stage] of parts.slice(1).entries()) {
    const where = `stage ${n + 2} (${stage.map((t) => t.text).join(" ")})`;
    const op = stage[0]?.text;
    if (!op || !OPERATORS.has(op)) throw new Error(`${where}: unknown operator '${op ?? ""}'`);
    const rest = stage.slice(1);
    switch (op) {
      case "where":
        if (rest.length === 0) throw new Error(`${where}: empty condition`);
        checkExpr(rest, where, columns);
        break;
      case "extend": {
        const names = assignments(rest, where, columns);
        if (columns) for (const x of names) columns.add(x);
        break;
      }
      case "project":
        columns = new Set(assignments(rest, where, columns));
        break;
      case "summarize": {
        const byAt = rest.findIndex((t) => t.text === "by");
        const aggs = byAt < 0 ? rest : rest.slice(0, byAt);
        const by = byAt < 0 ? [] : rest.slice(byAt + 1);
        if (!aggs.some((t, i) => t.kind === "id" && rest[i + 1]?.text === "(" && FUNCTIONS.has(t.text)))
          throw new Error(`${where}: summarize needs an aggregation`);
        const out = assignments(aggs, where, columns);
        const keys = commaParts(by).map((p) => {
          checkExpr(p[1]?.text === "=" ? p.slice(2) : p, where, columns);
          if (p[1]?.text === "=") return p[0].text;
          if (p.length === 1) return p[0].text;
          if (p[0].text === "bin") return p[2]?.text ?? "bin";
          throw new Error(`${where}: name the grouping expression (x = …)`);
        });
        columns = new Set([...out, ...keys]);
        break;
      }
      case "order":
      case "sort":
        if (rest[0]?.text !== "by") throw new Error(`${where}: '${op} by'`);
        checkExpr(rest.slice(1), where, columns);
        break;
      case "render":
        if (!CHARTS.has(rest[0]?.text ?? "")) throw new Error(`${where}: unknown chart '${rest[0]?.text}'`);
        break;
      case "evaluate":
        checkExpr(rest, where, columns);
        columns = null; // a plugin's output columns depend on the data
        break;
      default:
        checkExpr(rest, where, columns);
    }
  }
  return { table, literals };
}
