/**
 * The metric names a PromQL expression reads. The expressions are first proven valid by promtool (a rules file
 * generated from them), so this only has to find the names in valid PromQL: strings, label matchers `{…}`,
 * ranges `[…]`, grouping lists `by (…)` / `on (…)` / …, and function calls `f(` are removed; what remains are
 * metric names, keywords and numbers.
 */
const KEYWORDS = new Set([
  "and",
  "or",
  "unless",
  "bool",
  "offset",
  "by",
  "without",
  "on",
  "ignoring",
  "group_left",
  "group_right",
  "inf",
  "nan",
]);

/** Grafana's variables, replaced by values that keep the expression valid PromQL. */
export function substituteGrafanaVariables(expr: string): string {
  return expr
    .replace(/\$__(rate_)?interval\b/g, "1m")
    .replace(/\$__range\b/g, "1h")
    .replace(/\$\{?(\w+)\}?/g, ".*");
}

export function metricNames(expr: string): Set<string> {
  const names = new Set<string>();
  let s = expr.replace(/"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|`[^`]*`/g, '""');
  // {__name__="x"} / {__name__=~"…"} would hide a name: none of Flotilla's expressions use them.
  if (/__name__/.test(expr)) throw new Error(`matching on __name__ is not checked: ${expr}`);
  s = s.replace(/\{[^}]*\}/g, " ").replace(/\[[^\]]*\]/g, " ");
  s = s.replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, " ");
  // Numbers and durations (5m, 1e3, 0x1f): a token starting with a digit, not inside a name.
  s = s.replace(/(?<![a-zA-Z0-9_:])\d[\w.]*/g, " ");
  for (const m of s.matchAll(/[a-zA-Z_:][a-zA-Z0-9_:]*/g)) {
    const after = s.slice(m.index + m[0].length);
    if (/^\s*\(/.test(after)) continue; // a function or aggregation
    if (KEYWORDS.has(m[0].toLowerCase())) continue;
    names.add(m[0]);
  }
  return names;
}

/** `x_bucket`, `x_sum`, `x_count` of a histogram or summary `x`: the documented name. */
export function baseName(name: string, documented: ReadonlySet<string>): string {
  if (documented.has(name)) return name;
  const m = /^(.+)_(bucket|sum|count)$/.exec(name);
  return m && documented.has(m[1]) ? m[1] : name;
}
