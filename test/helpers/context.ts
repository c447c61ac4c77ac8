/**
 * A per-test context for jest, for the tests that were written against node:test's `TestContext` and that
 * scripts/codemods/node-test-to-jest.mjs converts: `test("…", withContext(async (t) => { … }))`.
 *
 * - `t.after(fn)`: clean-up for this test only, run when its body ends, passed or failed, first-in first-out (as
 *   node:test runs them); a clean-up that throws fails the test.
 * - `t.test(name, fn)`: a step of this test. Steps run in order; a failing step does not stop the next ones (as a
 *   node:test subtest), and the test fails at its end naming every failed step.
 * - `t.diagnostic(message)`: a line in the test's output.
 * - `t.name`: the test's full name.
 */
import { expect } from "@jest/globals";

export interface TestContext {
  readonly name: string;
  after(fn: () => unknown): void;
  test(name: string, fn: () => unknown): Promise<void>;
  diagnostic(message: string): void;
}

/** The test function for jest's `test(name, fn, timeout)`, giving `body` a node:test-like context. */
export function withContext(body: (t: TestContext) => unknown): () => Promise<void> {
  return async () => {
    const cleanups: (() => unknown)[] = [];
    const failedSteps: { name: string; error: unknown }[] = [];
    const name = expect.getState().currentTestName ?? "";
    const t: TestContext = {
      name,
      after: (fn) => void cleanups.push(fn),
      test: async (step, fn) => {
        try {
          await fn();
        } catch (error) {
          failedSteps.push({ name: step, error });
        }
      },
      diagnostic: (message) => console.info(`# ${name}: ${message}`),
    };
    const errors: unknown[] = [];
    try {
      await body(t);
    } catch (error) {
      errors.push(error);
    }
    for (const { name: step, error } of failedSteps) {
      const text = error instanceof Error ? (error.stack ?? error.message) : String(error);
      errors.push(new Error(`step "${step}" failed: ${text}`, { cause: error }));
    }
    for (const fn of cleanups) {
      try {
        await fn();
      } catch (error) {
        errors.push(error);
      }
    }
    if (errors.length === 1) throw errors[0];
    if (errors.length > 1) {
      const text = errors.map((e) => (e instanceof Error ? (e.stack ?? e.message) : String(e))).join("\n\n");
      throw new AggregateError(errors, `${errors.length} failures:\n\n${text}`);
    }
  };
}
