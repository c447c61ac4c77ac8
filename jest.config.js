// Jest runs the compiled tests: `npm run build` (tsc) writes dist/test/**/*.test.js, no transform here.
// The suite's processes (2 jest workers, the CLI runs they spawn) train on one thread each, as before issue 14, so
// they do not oversubscribe the machine; test/core/engine/threads.test.ts asks for threads explicitly.
// FLOTILLA_THREADS set by the caller wins (docs/threads.md).
process.env.FLOTILLA_THREADS ??= "1";

/** @type {import("jest").Config} */
module.exports = {
  rootDir: __dirname,
  roots: ["<rootDir>/dist/test"],
  testMatch: ["**/*.test.js"],
  // Jest's node environment in the main realm: see jest.environment.js.
  testEnvironment: "<rootDir>/jest.environment.js",
  // Writes the generated Keras fixtures (test/fixtures/keras/mnist-cnn/weights.bin is not tracked).
  globalSetup: "<rootDir>/jest.global-setup.js",
  transform: {},
  maxWorkers: 2,
  // A fresh worker process for every test file (0: always restart), as `node --test` ran each file in a process of
  // its own: process-wide state stays per file (onnxruntime-node initializes once per process and aborts when a
  // second module registry loads it again; globals, process.env and listeners are shared in the main realm).
  workerIdleMemoryLimit: 0,
  // The worker started last (after the last test file) may still be booting when jest ends it: on a busy machine it
  // needs seconds to exit, past the default 500 ms after which jest kills it with a misleading "leaking tests" warning.
  workerGracefulExitTimeout: 10_000,
  // node:test had no default timeout; the slowest tests (a simulation run as a child process) take minutes on two
  // busy cores. A test that sets its own timeout keeps it.
  testTimeout: 300_000,
};
