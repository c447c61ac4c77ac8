// Jest runs the compiled tests: `npm run build` (tsc) writes dist/test/**/*.test.js, no transform here.
/** @type {import("jest").Config} */
module.exports = {
  rootDir: __dirname,
  roots: ["<rootDir>/dist/test"],
  testMatch: ["**/*.test.js"],
  testEnvironment: "node",
  transform: {},
  maxWorkers: 2,
  // node:test had no default timeout; the slowest tests (a simulation run as a child process) take minutes on two
  // busy cores. A test that sets its own timeout keeps it.
  testTimeout: 300_000,
};
