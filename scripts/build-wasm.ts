/**
 * Compiles core/tensor/simd-kernels.wat (WebAssembly text, SIMD) with the `wabt` devDependency and writes
 * core/tensor/simd-kernels.wasm.ts, which exports the module bytes as a base64 string. The generated file is
 * committed, so installing Flotilla needs no build step and no wabt.
 *
 *   npx tsc -p . && node dist/scripts/build-wasm.js           regenerate
 *   npx tsc -p . && node dist/scripts/build-wasm.js --check   exit 1 if the committed file is stale
 */
import { createHash } from "node:crypto";
import { readFileSync, writeFileSync } from "node:fs";
import { join, resolve } from "node:path";
import wabtInit from "wabt";

const ROOT = resolve(__dirname, "..", ".."); // dist/scripts -> repository root
const SOURCE = "core/tensor/simd-kernels.wat";
const TARGET = "core/tensor/simd-kernels.wasm.ts";
const COMMAND = "npx tsc -p . && node dist/scripts/build-wasm.js";

/** The exports core/tensor/accumulator.ts calls; a build that lacks one fails here rather than at run time. */
const REQUIRED_EXPORTS = ["scale_f32", "axpy_f32", "widen_scale", "flush_scale", "mean_block", "mean_both"];

export async function compileKernels(watText: string): Promise<Uint8Array> {
  const wabt = await wabtInit();
  const mod = wabt.parseWat(SOURCE, watText, { simd: true });
  try {
    mod.resolveNames();
    mod.validate();
    return mod.toBinary({ log: false, write_debug_names: false }).buffer.slice();
  } finally {
    mod.destroy();
  }
}

export function renderModule(wasm: Uint8Array): string {
  const sha = createHash("sha256").update(wasm).digest("hex");
  return [
    `// GENERATED FILE - do not edit. Source: ${SOURCE}`,
    `// Regenerate with: ${COMMAND}`,
    `// ${wasm.length} bytes, sha256 ${sha}`,
    "",
    "/** The SIMD kernels of core/tensor/accumulator.ts as wasm bytes in base64 (compiled once per process). */",
    "export const SIMD_KERNELS_WASM_BASE64 =",
    `  "${Buffer.from(wasm).toString("base64")}";`,
    "",
  ].join("\n");
}

/** Names exported by the compiled module, via V8's own validator (lib "ES2022" does not declare WebAssembly). */
function moduleExports(wasm: Uint8Array): string[] {
  interface Api {
    Module: { new (bytes: Uint8Array): object; exports(m: object): { name: string }[] };
  }
  const api = (globalThis as { WebAssembly?: Api }).WebAssembly;
  if (!api) throw new Error("this Node.js has no WebAssembly (run without --jitless)");
  return api.Module.exports(new api.Module(wasm)).map((e) => e.name);
}

async function main(): Promise<void> {
  const check = process.argv.includes("--check");
  const wasm = await compileKernels(readFileSync(join(ROOT, SOURCE), "utf8"));
  const exported = moduleExports(wasm);
  const missing = REQUIRED_EXPORTS.filter((name) => !exported.includes(name));
  if (missing.length > 0) throw new Error(`${SOURCE} lacks exports: ${missing.join(", ")}`);
  const text = renderModule(wasm);
  const target = join(ROOT, TARGET);
  if (check) {
    let current = "";
    try {
      current = readFileSync(target, "utf8");
    } catch {
      // missing counts as stale
    }
    if (current !== text) {
      console.error(`${TARGET} is stale; run: ${COMMAND}`);
      process.exitCode = 1;
      return;
    }
    console.log(`${TARGET} is up to date (${wasm.length} bytes)`);
    return;
  }
  writeFileSync(target, text);
  console.log(`wrote ${TARGET} (${wasm.length} bytes of wasm)`);
}

if (require.main === module) {
  main().catch((e: unknown) => {
    console.error(e instanceof Error ? e.message : e);
    process.exitCode = 1;
  });
}
