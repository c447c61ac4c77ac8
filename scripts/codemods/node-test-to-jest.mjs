#!/usr/bin/env node
// Codemod: node:test test files → jest (issue 12). Usage, from the repository root:
//
//   node scripts/codemods/node-test-to-jest.mjs [--check] [path ...]     (default path: test/)
//
// Rewrites every .ts file under the paths that imports "node:test"; a file without that import is left alone, so
// running it twice changes nothing. `--check` writes nothing and exits 1 if a file would change. Exit status 1 when a
// file could not be converted: such a file is NOT written and is listed with the line and the reason, to convert by
// hand. What it does, file by file (the syntax tree comes from the TypeScript compiler, the output from Prettier with
// the project's configuration):
//
// - `import { test, it, describe, suite, before, after, beforeEach, afterEach } from "node:test"` → the same from
//   "@jest/globals", `suite` → describe, `before` → beforeAll, `after` → afterAll (calls renamed); a `TestContext`
//   type import comes from test/helpers/context.
// - `test(name, { timeout: N }, fn)` → `test(name, fn, N)`; the same for hooks, `before(fn, { timeout: N })`.
// - a test function that uses its context, `async (t) => { t.after(…); await t.test(…); t.diagnostic(…) }`, is
//   wrapped: `withContext(async (t) => { … })` (test/helpers/context.ts gives node:test's after/test/diagnostic/name
//   semantics); an unused context parameter is dropped (jest would take a one-parameter function for a `done`
//   callback and wait for it).
// - `node:assert/strict` assertions are kept: they work under jest.
// - `import("node:test").TestContext` → `import("<…>/helpers/context").TestContext`. A context passed on to a helper
//   (`tempDir(t)`) is fine when the helper's parameter type fits that TestContext: tsc checks it, as it checks test
//   functions not written inline (`test(name, withProvider(async (p) => …))`), which are kept as they are.
//
// Not converted (reported): other imports from node:test (mock, skip, todo, only, run, …), a default or namespace
// import or require("node:test"), node:test functions used other than called, options other than `timeout` (skip,
// todo, only, concurrency, plan, signal), `test.skip/.only/.todo`, a test function taking a `done` callback,
// context members other than after/test/diagnostic/name (t.mock, t.skip, t.todo, t.plan, t.signal, t.assert, …),
// steps with options or their own context (`t.test(name, (t2) => …)`), async describe bodies, describe timeouts,
// and a hook that uses its context. Converted but listed as REVIEW: require.cache (jest's module registry ignores
// it: a fresh module instance is `jest.isolateModules(() => require(…))`).
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import ts from "typescript";
import * as prettier from "prettier";

const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..", "..");
/** test/helpers/context of the tree the file is in: under its outermost `test` folder (else the repository's). */
function helperFor(file) {
  let testRoot = path.join(repoRoot, "test");
  for (let dir = path.dirname(path.resolve(file)); dir !== path.dirname(dir); dir = path.dirname(dir))
    if (path.basename(dir) === "test") testRoot = dir;
  return path.join(testRoot, "helpers", "context");
}
const RENAME = {
  test: "test",
  it: "it",
  describe: "describe",
  suite: "describe",
  before: "beforeAll",
  after: "afterAll",
  beforeEach: "beforeEach",
  afterEach: "afterEach",
};
const TESTS = new Set(["test", "it"]);
const HOOKS = new Set(["beforeAll", "afterAll", "beforeEach", "afterEach"]);
const CONTEXT_MEMBERS = new Set(["after", "test", "diagnostic", "name"]);

const args = process.argv.slice(2);
const check = args.includes("--check");
const roots = args.filter((a) => a !== "--check");
if (roots.length === 0) roots.push("test");

function* tsFiles(p) {
  const stat = fs.statSync(p);
  if (stat.isFile()) {
    if (p.endsWith(".ts") && !p.endsWith(".d.ts")) yield p;
    return;
  }
  for (const entry of fs
    .readdirSync(p, { withFileTypes: true })
    .sort((a, b) => a.name.localeCompare(b.name))) {
    if (entry.name === "node_modules" || entry.name === "dist") continue;
    yield* tsFiles(path.join(p, entry.name));
  }
}

function isFunction(node) {
  return node !== undefined && (ts.isArrowFunction(node) || ts.isFunctionExpression(node));
}

/** The identifiers named `name` under `node`, except property names (`x.name`, `{ name: … }`). */
function references(node, name) {
  const found = [];
  const visit = (n) => {
    if (ts.isIdentifier(n) && n.text === name) {
      const p = n.parent;
      const isPropertyName =
        (ts.isPropertyAccessExpression(p) && p.name === n) ||
        (ts.isPropertyAssignment(p) && p.name === n) ||
        (ts.isMethodDeclaration(p) && p.name === n) ||
        (ts.isPropertyDeclaration(p) && p.name === n) ||
        (ts.isPropertySignature(p) && p.name === n) ||
        ts.isQualifiedName(p);
      if (!isPropertyName) found.push(n);
    }
    ts.forEachChild(n, visit);
  };
  ts.forEachChild(node, visit);
  return found;
}

/** Converts one file's text; returns { text } or { problems }. `text` is null when there is nothing to do. */
function convert(file, text) {
  // A one-file program (imports not resolved) whose checker tells which identifiers are the node:test imports, so
  // a local variable of the same name (`const before = …`) or a property (`{ test: held }`) is left alone.
  const options = { noResolve: true, noLib: true, types: [], target: ts.ScriptTarget.ES2022 };
  const host = ts.createCompilerHost(options);
  const sf = ts.createSourceFile(file, text, ts.ScriptTarget.ES2022, true, ts.ScriptKind.TS);
  host.getSourceFile = (name) => (name === file ? sf : undefined);
  const checker = ts.createProgram([file], options, host).getTypeChecker();
  const problems = [];
  const problem = (node, why) => {
    const { line } = sf.getLineAndCharacterOfPosition(node.getStart(sf));
    problems.push(`${line + 1}: ${why}`);
  };
  const edits = [];
  const warnings = [];
  // Converted, but to review: jest's module registry ignores require.cache (a fresh module instance is
  // jest.isolateModules(() => require(…)) under jest).
  for (const m of text.matchAll(/\brequire\.cache\b/g)) {
    const { line } = sf.getLineAndCharacterOfPosition(m.index);
    warnings.push(`${line + 1}: require.cache has no effect under jest: use jest.isolateModules`);
  }
  let helperPath = path
    .relative(path.dirname(path.resolve(file)), helperFor(file))
    .split(path.sep)
    .join("/");
  if (!helperPath.startsWith(".")) helperPath = `./${helperPath}`;
  const edit = (start, end, replacement) => edits.push({ start, end, text: replacement });

  const imports = sf.statements.filter(
    (s) =>
      ts.isImportDeclaration(s) &&
      ts.isStringLiteral(s.moduleSpecifier) &&
      s.moduleSpecifier.text === "node:test",
  );
  const requires = [];
  const findRequires = (n) => {
    if (
      ts.isCallExpression(n) &&
      ts.isIdentifier(n.expression) &&
      n.expression.text === "require" &&
      n.arguments.length === 1 &&
      ts.isStringLiteral(n.arguments[0]) &&
      ["node:test", "test"].includes(n.arguments[0].text)
    )
      requires.push(n);
    ts.forEachChild(n, findRequires);
  };
  findRequires(sf);
  for (const r of requires) problem(r, 'require("node:test"): use an import');
  if (requires.length > 0) return { problems };
  if (imports.length === 0 && !/import\(\s*["']node:test["']\s*\)/.test(text)) return { text: null };

  /** local name → jest name, for the imported functions */
  const locals = new Map();
  /** the import specifiers' symbols → local name */
  const symbols = new Map();
  const importOf = (id) => (ts.isIdentifier(id) && symbols.get(checker.getSymbolAtLocation(id))) || null;
  const jestSpecifiers = [];
  let typeContext = null;
  for (const decl of imports) {
    const clause = decl.importClause;
    if (!clause || clause.name || !clause.namedBindings || !ts.isNamedImports(clause.namedBindings)) {
      problem(decl, "a default, namespace or bare import of node:test");
      continue;
    }
    for (const spec of clause.namedBindings.elements) {
      const imported = (spec.propertyName ?? spec.name).text;
      const local = spec.name.text;
      if (imported === "TestContext" || imported === "SuiteContext") {
        if (imported === "SuiteContext") problem(spec, "SuiteContext has no jest counterpart");
        typeContext = local === "TestContext" ? "TestContext" : `TestContext as ${local}`;
        continue;
      }
      const jestName = RENAME[imported];
      if (!jestName) {
        problem(spec, `node:test's \`${imported}\` has no conversion`);
        continue;
      }
      symbols.set(checker.getSymbolAtLocation(spec.name), local);
      if (local === imported) {
        locals.set(local, jestName);
        jestSpecifiers.push(jestName);
      } else {
        locals.set(local, jestName);
        jestSpecifiers.push(`${jestName} as ${local}`);
      }
    }
  }

  /** `(t) =>` → `() =>`, `t =>` → `() =>`. */
  const dropParameters = (fn) => {
    const parenthesized = text[fn.parameters.pos - 1] === "(";
    if (parenthesized) edit(fn.parameters.pos, fn.parameters.end, "");
    else edit(fn.parameters[0].getStart(sf), fn.parameters.end, "()");
  };
  let usesContext = false;
  const calleeName = (call) => {
    const e = call.expression;
    if (importOf(e)) return { local: e.text, jest: locals.get(e.text), modifier: null };
    if (ts.isPropertyAccessExpression(e) && importOf(e.expression))
      return { local: e.expression.text, jest: locals.get(e.expression.text), modifier: e.name.text };
    return null;
  };

  /** `{ timeout: N }` → "N"; reports other options. undefined when there is nothing usable. */
  const timeoutOf = (opts) => {
    if (!ts.isObjectLiteralExpression(opts)) {
      problem(opts, "test options that are not an object literal");
      return undefined;
    }
    let timeout = null;
    for (const p of opts.properties) {
      if (ts.isPropertyAssignment(p) && ts.isIdentifier(p.name) && p.name.text === "timeout")
        timeout = p.initializer.getText(sf);
      else if (ts.isShorthandPropertyAssignment(p) && p.name.text === "timeout") timeout = "timeout";
      else {
        problem(p, `test option \`${p.getText(sf)}\` (only timeout converts; no skipped tests)`);
        return undefined;
      }
    }
    return timeout;
  };

  /** Checks a test function's context use; returns "none" | "drop" | "wrap" | null (problem). */
  const contextUse = (fn, kind) => {
    if (fn.parameters.length === 0) return "none";
    if (fn.parameters.length > 1) {
      problem(fn, `a ${kind} function with a done callback`);
      return null;
    }
    const param = fn.parameters[0];
    if (!ts.isIdentifier(param.name)) {
      problem(param, `a destructured ${kind} context`);
      return null;
    }
    const refs = references(fn.body, param.name.text);
    if (refs.length === 0) return "drop";
    if (kind !== "test") {
      problem(fn, `a ${kind} that uses its context (\`${param.name.text}\`)`);
      return null;
    }
    let ok = true;
    for (const r of refs) {
      const p = r.parent;
      // Passed on (`tempDir(t)`): the helper's parameter type must fit test/helpers/context's TestContext; tsc checks.
      if (!ts.isPropertyAccessExpression(p) || p.expression !== r) continue;
      const member = p.name.text;
      if (!CONTEXT_MEMBERS.has(member)) {
        problem(r, `the test context's \`${member}\` has no conversion (after, test, diagnostic, name do)`);
        ok = false;
        continue;
      }
      if (member === "test") {
        const call = p.parent;
        if (ts.isCallExpression(call) && call.expression === p) {
          const stepFn = call.arguments[call.arguments.length - 1];
          if (call.arguments.length !== 2) {
            problem(call, "a step (t.test) with options");
            ok = false;
          } else if (isFunction(stepFn) && stepFn.parameters.length > 0) {
            problem(call, "a step (t.test) with its own context");
            ok = false;
          }
        }
      }
    }
    return ok ? "wrap" : null;
  };

  const visit = (node) => {
    if (ts.isCallExpression(node)) {
      const callee = calleeName(node);
      if (callee) {
        if (
          callee.local !== callee.jest &&
          !callee.jest.includes(" ") &&
          jestSpecifiers.includes(callee.jest)
        )
          edit(node.expression.getStart(sf), node.expression.getStart(sf) + callee.local.length, callee.jest);
        if (callee.modifier !== null) {
          problem(node, `\`${callee.local}.${callee.modifier}\` (no skipped, only or todo tests)`);
        } else if (TESTS.has(callee.jest) || callee.jest === "describe") {
          const a = node.arguments;
          const kind = callee.jest === "describe" ? "describe" : "test";
          const fn = a.length >= 2 ? a[a.length - 1] : undefined;
          const opts = a.length === 3 ? a[1] : undefined;
          if (a.length < 2 || a.length > 3) problem(node, `a ${kind} call with ${a.length} argument(s)`);
          else {
            // A function not written inline (`test(name, withProvider(async (p) => …))`) is kept; tsc checks it.
            const timeout = opts ? timeoutOf(opts) : null;
            const use = isFunction(fn) ? contextUse(fn, kind) : "none";
            if (
              kind === "describe" &&
              isFunction(fn) &&
              fn.modifiers?.some((m) => m.kind === ts.SyntaxKind.AsyncKeyword)
            )
              problem(fn, "an async describe body (jest collects tests synchronously)");
            else if (kind === "describe" && timeout) problem(opts, "a describe timeout");
            else if (timeout !== undefined && use !== null) {
              if (opts) edit(opts.getStart(sf), fn.getStart(sf), "");
              if (use === "drop") dropParameters(fn);
              if (use === "wrap") {
                edit(fn.getStart(sf), fn.getStart(sf), "withContext(");
                usesContext = true;
              }
              const tail = (use === "wrap" ? ")" : "") + (timeout ? `, ${timeout}` : "");
              if (tail) edit(fn.end, fn.end, tail);
            }
          }
        } else if (HOOKS.has(callee.jest)) {
          const a = node.arguments;
          const fn = a[0];
          if (a.length < 1 || a.length > 2 || !isFunction(fn))
            problem(node, "a hook without an inline function");
          else {
            const timeout = a.length === 2 ? timeoutOf(a[1]) : null;
            const use = contextUse(fn, "hook");
            if (timeout !== undefined && use !== null) {
              if (use === "drop") dropParameters(fn);
              if (a.length === 2) edit(a[1].getStart(sf), a[1].end, timeout ?? "");
            }
          }
        }
      }
    } else if (importOf(node) && !ts.isImportSpecifier(node.parent)) {
      const p = node.parent;
      const isCallee = ts.isCallExpression(p) && p.expression === node;
      const isModifierObject = ts.isPropertyAccessExpression(p) && p.expression === node;
      if (!isCallee && !isModifierObject)
        problem(node, `node:test's \`${node.text}\` used as a value (only calls convert)`);
    } else if (
      ts.isImportTypeNode(node) &&
      ts.isLiteralTypeNode(node.argument) &&
      ts.isStringLiteral(node.argument.literal) &&
      node.argument.literal.text === "node:test"
    ) {
      const q = node.qualifier;
      if (!q || !ts.isIdentifier(q) || q.text !== "TestContext")
        problem(node, `\`${node.getText(sf)}\` has no conversion (TestContext does)`);
      else edit(node.argument.literal.getStart(sf), node.argument.literal.end, JSON.stringify(helperPath));
    }
    ts.forEachChild(node, visit);
  };
  visit(sf);
  if (problems.length > 0) return { problems };

  // Imports: node:test → @jest/globals (merged into an existing one), plus the context helper when used.
  const jestImport = sf.statements.find(
    (s) =>
      ts.isImportDeclaration(s) &&
      ts.isStringLiteral(s.moduleSpecifier) &&
      s.moduleSpecifier.text === "@jest/globals",
  );
  let names = [...new Set(jestSpecifiers)];
  if (jestImport) {
    const existing = jestImport.importClause.namedBindings.elements.map((e) => e.getText(sf));
    names = [...new Set([...existing, ...names])];
    edit(jestImport.getStart(sf), jestImport.end, "");
  }
  const helperNames = [usesContext ? "withContext" : null, typeContext ? `type ${typeContext}` : null].filter(
    Boolean,
  );
  const replacement =
    `import { ${names.join(", ")} } from "@jest/globals";` +
    (helperNames.length > 0 ? `\nimport { ${helperNames.join(", ")} } from "${helperPath}";` : "");
  if (imports.length > 0)
    imports.forEach((decl, i) => edit(decl.getStart(sf), decl.end, i === 0 ? replacement : ""));

  edits.sort((x, y) => y.start - x.start || y.end - x.end);
  let out = text;
  for (const e of edits) out = out.slice(0, e.start) + e.text + out.slice(e.end);
  return { text: out, warnings };
}

let changed = 0;
let failed = 0;
for (const root of roots) {
  for (const file of tsFiles(root)) {
    const before = fs.readFileSync(file, "utf8");
    const result = convert(file, before);
    if (result.problems) {
      failed++;
      console.error(`NOT CONVERTED ${file}:`);
      for (const p of result.problems) console.error(`  ${file}:${p}`);
      continue;
    }
    if (result.text === null) continue;
    for (const w of result.warnings) console.error(`REVIEW ${file}:${w}`);
    const options =
      (await prettier.resolveConfig(file)) ??
      (await prettier.resolveConfig(path.join(repoRoot, "package.json"))) ??
      {};
    const formatted = await prettier.format(result.text, { ...options, filepath: file });
    if (formatted === before) continue;
    changed++;
    if (check) console.log(`would convert ${file}`);
    else {
      fs.writeFileSync(file, formatted);
      console.log(`converted ${file}`);
    }
  }
}
console.log(`${changed} file(s) ${check ? "to convert" : "converted"}, ${failed} not converted`);
process.exitCode = failed > 0 || (check && changed > 0) ? 1 : 0;
