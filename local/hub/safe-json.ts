/**
 * Client-supplied JSON and key sets without prototype pollution.
 *
 * A JSON text `{"__proto__": {...}}` parses to an object with an *own* `__proto__` key; the danger starts when
 * code copies or merges it with ordinary property assignment (`target[k] = ...`, `target[k] ?? {}`), which then
 * reaches `Object.prototype` of the whole process (OWASP "Prototype Pollution Prevention Cheat Sheet"; CWE-1321).
 * The hub therefore refuses the keys `__proto__`, `constructor` and `prototype` anywhere in what a device or
 * the service sends (twin patches, tags, REST bodies, D2C property names, query aliases), keeps client-chosen
 * key sets in null-prototype objects or Maps, and reads lookup tables with Object.hasOwn only.
 */
import { FlotillaError } from "../../core/errors";

export const FORBIDDEN_KEYS: ReadonlySet<string> = new Set(["__proto__", "constructor", "prototype"]);

export function isForbiddenKey(k: string): boolean {
  return FORBIDDEN_KEYS.has(k);
}

/** Throws E_HUB_FORBIDDEN_KEY naming where the key was found. */
export function forbiddenKey(k: string, where: string): never {
  throw new FlotillaError("E_HUB_FORBIDDEN_KEY", `the key ${JSON.stringify(k)} is not allowed in ${where}`);
}

/**
 * JSON.parse that refuses forbidden keys at any depth (E_HUB_FORBIDDEN_KEY). Syntax errors propagate as
 * JSON.parse's SyntaxError, so callers keep their own "not valid JSON" handling.
 */
export function parseClientJson(text: string, where: string): unknown {
  return JSON.parse(text, (k: string, v: unknown) => (isForbiddenKey(k) ? forbiddenKey(k, where) : v));
}

/** A fresh object with no prototype, for key sets chosen by a client. */
export function nullProtoRecord<V>(): Record<string, V> {
  return Object.create(null) as Record<string, V>;
}
