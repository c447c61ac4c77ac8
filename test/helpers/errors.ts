import assert from "node:assert/strict";
import { isFlotillaError } from "../../core/errors";

/** Runs fn, which must throw a FlotillaError, and returns its code. */
export function errorCode(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    assert.ok(isFlotillaError(e), `expected a FlotillaError, got ${String(e)}`);
    return e.code;
  }
  assert.fail("expected an error");
}
