/**
 * The error catalogue (core/errors.ts `ERRORS`) against the source tree: every code the sources use is
 * catalogued, every catalogued code is used, codes are literals (never built at runtime), and coded errors
 * are FlotillaErrors. Reads only files inside the repository.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as fs from "node:fs";
import * as path from "node:path";
import { ERRORS, FlotillaError, errorCode, fail, isErrorCode, isFlotillaError } from "../../core/errors";

const repoRoot = path.resolve(__dirname, "..", "..", "..");
/** The source directories (tsconfig.json's include, tests aside). */
const SOURCE_DIRS = ["core", "azure", "modules", "cloud", "local", "scripts"];
const SOURCE_EXT = new Set([".ts", ".js", ".mjs", ".cjs", ".json"]);
/** Stands for "any code" in comments and docs (`flotilla: E_CODE: message`); never thrown (tsc refuses it). */
const PLACEHOLDERS = new Set(["E_CODE"]);

function walk(dir: string, keep: (file: string) => boolean, out: string[] = []): string[] {
  for (const e of fs.readdirSync(dir, { withFileTypes: true })) {
    if (e.name === "node_modules" || e.name === "dist" || e.name.startsWith(".")) continue;
    const p = path.join(dir, e.name);
    if (e.isDirectory()) walk(p, keep, out);
    else if (e.isFile() && keep(p)) out.push(p);
  }
  return out;
}

const rel = (file: string) => path.relative(repoRoot, file).split(path.sep).join("/");

/** The source files, core/errors.ts (the catalogue itself) excepted. */
const sources = SOURCE_DIRS.flatMap((d) =>
  walk(path.join(repoRoot, d), (f) => SOURCE_EXT.has(path.extname(f))),
).filter((f) => rel(f) !== "core/errors.ts");

/** Each `E_...` token of `text` with its position; a token ending in `_` is a prefix (`E_CONFIG_*`). */
function tokens(text: string): Array<{ token: string; index: number }> {
  return [...text.matchAll(/\bE_[A-Z0-9_]+/g)].map((m) => ({ token: m[0], index: m.index }));
}

/** Codes used by the sources: file -> codes. */
function usedCodes(): Map<string, Set<string>> {
  const used = new Map<string, Set<string>>();
  for (const file of sources) {
    const text = fs.readFileSync(file, "utf8");
    for (const { token } of tokens(text)) {
      if (token.endsWith("_") || PLACEHOLDERS.has(token)) continue;
      if (!used.has(token)) used.set(token, new Set());
      used.get(token)!.add(rel(file));
    }
  }
  return used;
}

test("the scan sees the source tree", () => {
  assert.ok(sources.length > 100, `only ${sources.length} source files found under ${repoRoot}`);
  assert.ok(sources.some((f) => rel(f) === "core/round/server.ts"));
});

test("every code used in the sources is in the catalogue", () => {
  const missing = [...usedCodes()]
    .filter(([code]) => !isErrorCode(code))
    .map(([code, files]) => `${code} (${[...files].join(", ")})`);
  assert.deepEqual(missing, [], "add these codes to ERRORS in core/errors.ts, with their meaning");
});

test("every catalogued code is used somewhere in the sources", () => {
  const used = usedCodes();
  const unused = Object.keys(ERRORS).filter((code) => !used.has(code));
  assert.deepEqual(unused, [], "remove these codes from ERRORS in core/errors.ts (nothing throws them)");
});

test("every catalogue entry has a group and a non-empty one-line meaning", () => {
  for (const [code, entry] of Object.entries(ERRORS)) {
    assert.match(code, /^E_[A-Z0-9]+(_[A-Z0-9]+)*$/, code);
    assert.match(entry.group, /^[a-z]+$/, `${code}: group`);
    assert.ok(entry.meaning.trim().length > 0, `${code}: empty meaning`);
    assert.ok(!/[\r\n]/.test(entry.meaning), `${code}: meaning spans lines`);
    assert.equal(entry.meaning, entry.meaning.trim(), `${code}: meaning has outer whitespace`);
  }
});

test("codes are literals: a code prefix only names a family (E_X_*) or is a startsWith() test", () => {
  const built: string[] = [];
  for (const file of sources) {
    const text = fs.readFileSync(file, "utf8");
    for (const { token, index } of tokens(text)) {
      if (!token.endsWith("_")) continue;
      const after = text.slice(index + token.length, index + token.length + 1);
      const before = text.slice(Math.max(0, index - 12), index);
      if (after === "*" || /startsWith\(["'`]$/.test(before)) continue;
      built.push(`${rel(file)}: ${text.slice(index, index + 40).split("\n")[0]}`);
    }
    // A prefix test must end at a separator, or it also matches the codes of another family.
    for (const m of text.matchAll(/startsWith\(["'`](E_[A-Z0-9_]*[A-Z0-9])["'`]\)/g)) {
      built.push(`${rel(file)}: startsWith("${m[1]}") has no trailing _`);
    }
  }
  assert.deepEqual(built, [], "codes built at runtime are not in the catalogue; use a catalogued code");
});

test("coded errors are FlotillaErrors: no Object.assign(new Error(...), { code }) in the sources", () => {
  const sites = sources.flatMap((file) =>
    fs
      .readFileSync(file, "utf8")
      .split("\n")
      .flatMap((line, i) => (/Object\.assign\(\s*new Error\b/.test(line) ? [`${rel(file)}:${i + 1}`] : [])),
  );
  assert.deepEqual(sites, []);
});

test("the docs name only catalogued codes", () => {
  const docs = [
    path.join(repoRoot, "README.md"),
    ...walk(path.join(repoRoot, "docs"), (f) => f.endsWith(".md")),
    ...SOURCE_DIRS.flatMap((d) => walk(path.join(repoRoot, d), (f) => f.endsWith(".md"))),
  ];
  const stale: string[] = [];
  for (const file of docs) {
    for (const { token } of tokens(fs.readFileSync(file, "utf8"))) {
      if (!token.endsWith("_") && !PLACEHOLDERS.has(token) && !isErrorCode(token))
        stale.push(`${rel(file)}: ${token}`);
    }
  }
  assert.deepEqual(stale, []);
});

test("FlotillaError keeps the code, the message and the wrapped error as `cause`", () => {
  const root = new Error("disk on fire");
  const e = new FlotillaError("E_QUEUE_IO", "cannot write the queue file", { cause: root });
  assert.ok(e instanceof FlotillaError && e instanceof Error);
  assert.ok(isFlotillaError(e));
  assert.equal(e.name, "FlotillaError");
  assert.equal(e.code, "E_QUEUE_IO");
  assert.equal(e.message, "cannot write the queue file");
  assert.equal(e.cause, root);
  assert.equal(errorCode(e), "E_QUEUE_IO");
  assert.ok(
    !("cause" in new FlotillaError("E_QUEUE_IO", "no cause")),
    "no cause property when none is given",
  );

  assert.throws(
    () => fail("E_CONFIG_VALUE", "bad", { cause: root }),
    (x: unknown) => isFlotillaError(x) && x.code === "E_CONFIG_VALUE" && x.cause === root,
  );
  // A code relayed as a plain string (a device's failure frame, an HTTP body) passes through as it is.
  const relayed: string = "E_FROM_A_NEWER_DEVICE";
  assert.equal(new FlotillaError(relayed, "x").code, relayed);
  // tsc refuses an uncatalogued literal code (this file would not compile without the expect-error).
  // @ts-expect-error E_NOT_A_CODE is not in the catalogue
  assert.equal(new FlotillaError("E_NOT_A_CODE", "x").code, "E_NOT_A_CODE");
  // @ts-expect-error E_NOT_A_CODE is not in the catalogue
  assert.throws(() => fail("E_NOT_A_CODE", "x"), { code: "E_NOT_A_CODE" });
});
