/**
 * Jest's node environment, with the tests running in Node's main realm, as they did under `node --test`.
 *
 * Why: jest runs each test file in a vm context of its own, a separate realm with its own Object, Array,
 * Float32Array… Objects made outside it (by native addons: better-sqlite3 rows, onnxruntime-node's output tensors;
 * by Node itself: fs.readdirSync's arrays, JSON read by jest's loader) then fail `instanceof` (onnxruntime-common's
 * "A float32 tensor's data must be type of function Float32Array()") and node:assert's deepStrictEqual prototype
 * check ("Values have same structure but are not reference-equal"): jest issue #2549. And an `import()` in a
 * CommonJS module (local/hub/mqtt-broker.ts loads the ESM-only aedes) needs --experimental-vm-modules under jest.
 *
 * How: jest 30's runtime compiles every CommonJS module with vm.compileFunction(code, params, { parsingContext:
 * environment.getVmContext(), importModuleDynamically }). For this environment's context the wrapper below drops
 * parsingContext (the function is compiled in the main realm) and lets Node's own loader serve `import()`
 * (vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER, Node ≥ 20.12). The environment's global is the main global.
 *
 * What this gives up, jest's isolation of globals between the test files one worker runs, jest.config.js takes back
 * with `workerIdleMemoryLimit: 0`: each test file runs in a fresh worker process.
 */
"use strict";
const vm = require("node:vm");
const { TestEnvironment } = require("jest-environment-node");

// Node 20 flags USE_MAIN_CONTEXT_DEFAULT_LOADER as experimental and warns once per process, which with a fresh
// process per test file is two lines per file in the output: that one warning, and only it, is not printed.
const emitWarning = process.emitWarning;
process.emitWarning = function (warning, ...rest) {
  const text = typeof warning === "string" ? warning : warning?.message;
  if (typeof text === "string" && text.startsWith("vm.USE_MAIN_CONTEXT_DEFAULT_LOADER ")) return;
  return emitWarning.call(process, warning, ...rest);
};

const mainRealmContexts = new WeakSet();
const compileFunction = vm.compileFunction;
vm.compileFunction = function (code, params, options) {
  if (options !== undefined && mainRealmContexts.has(options.parsingContext)) {
    const rest = { ...options };
    delete rest.parsingContext;
    rest.importModuleDynamically = vm.constants.USE_MAIN_CONTEXT_DEFAULT_LOADER;
    return compileFunction.call(vm, code, params, rest);
  }
  return compileFunction.call(vm, code, params, options);
};

class MainRealmEnvironment extends TestEnvironment {
  constructor(config, context) {
    super(config, context);
    const sandbox = this.global;
    // What jest keeps on the global for itself (the real Promise, Date.now, fs functions under symbols) must be on
    // the main global too: jest-circus now runs there.
    for (const key of Object.getOwnPropertySymbols(sandbox)) {
      if (!(key in globalThis))
        Object.defineProperty(globalThis, key, Object.getOwnPropertyDescriptor(sandbox, key));
    }
    this.global = globalThis;
    mainRealmContexts.add(this.context);
  }
}

module.exports = MainRealmEnvironment;
