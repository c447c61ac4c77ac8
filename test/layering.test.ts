/**
 * The layering rules of eslint.config.mjs (docs/architecture.md, "Layers"), run through ESLint's Node API with the
 * project's own config on source text placed (not written) at a path in each layer, so a rule that vanishes or
 * stops matching fails here and not only in review.
 */
import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as path from "node:path";
import { ESLint } from "eslint";

const repoRoot = path.resolve(__dirname, "..", "..");

/** The layering messages (no-restricted-imports, no-restricted-syntax) for `source` as if it were the file `rel`. */
async function restricted(eslint: ESLint, rel: string, source: string): Promise<string[]> {
  const [result] = await eslint.lintText(`${source}\n`, { filePath: path.join(repoRoot, rel) });
  return result.messages
    .filter((m) => m.ruleId === "no-restricted-imports" || m.ruleId === "no-restricted-syntax")
    .map((m) => m.message);
}

// [file the import is written in, import statement, forbidden?]
const CASES: Array<[string, string, boolean]> = [
  // core ↛ Azure SDKs, azure/, modules/, cloud/, local/
  ["core/compress/probe.ts", 'import { BlobServiceClient } from "@azure/storage-blob";', true],
  ["core/compress/probe.ts", 'import type { TokenCredential } from "@azure/identity";', true],
  ["core/round/probe.ts", 'import "azure-iot-device";', true],
  ["core/round/probe.ts", 'import { Registry } from "azure-iothub";', true],
  ["core/round/probe.ts", 'import "../../azure/keyvault-key-provider";', true],
  ["core/round/probe.ts", 'import "../../modules/shared/chunks";', true],
  ["core/round/probe.ts", 'export * from "../../cloud/aggregator/src/ingest";', true],
  ["core/probe.ts", 'import "../local/hub/hub";', true],
  // ... also through require(), import(), import types and `import x = require()`
  ["core/round/probe.ts", 'const blob = require("@azure/storage-blob");', true],
  ["core/round/probe.ts", 'export const hub = () => import("../../local/hub/hub");', true],
  ["core/round/probe.ts", 'export type Q = import("../../modules/quantizer/src/quantizer").Quantizer;', true],
  ["core/round/probe.ts", 'import iot = require("azure-iot-device");', true],
  ["core/export/probe.ts", 'const pkg = require("../../../package.json");', false],
  ["core/round/probe.ts", 'import "../errors";', false],
  ["core/round/probe.ts", 'import "./local-model";', false],
  ["core/engine/probe.ts", 'import "@tensorflow/tfjs";', false],
  // azure/ ↛ modules/, cloud/, local/
  ["azure/probe.ts", 'import "../modules/shared/chunks";', true],
  ["azure/probe.ts", 'import "../cloud/aggregator/src/ingest";', true],
  ["azure/probe.ts", 'import "../local/keyvault/server";', true],
  ["azure/probe.ts", 'import "../core/errors";', false],
  ["azure/probe.ts", 'import "@azure/keyvault-keys";', false],
  // modules/ ↛ cloud/, local/
  ["modules/trainer/src/probe.ts", 'import "../../../cloud/aggregator/src/ingest";', true],
  ["modules/trainer/src/probe.ts", 'import "../../../local/hub/hub";', true],
  ["modules/trainer/src/probe.ts", 'const c = require("../../../cloud/aggregator/src/ingest");', true],
  ["modules/trainer/src/probe.ts", 'import "../../../azure/keyvault-key-provider";', false],
  ["modules/trainer/src/probe.ts", 'import "../../../core/errors";', false],
  ["modules/shared/probe.ts", 'import "azure-iot-device";', false],
  ["modules/shared/probe.ts", 'export type M = import("azure-iot-device").Message;', false],
  // cloud/ ↛ modules/, local/
  ["cloud/aggregator/src/probe.ts", 'import "../../../modules/shared/keyvault-key-provider";', true],
  ["cloud/aggregator/src/jobs/probe.ts", 'import "../../../../local/stack/stack";', true],
  ["cloud/aggregator/src/probe.ts", 'import "../../../azure/keyvault-key-provider";', false],
  ["cloud/aggregator/src/probe.ts", 'import "@azure/storage-blob";', false],
  [
    "cloud/aggregator/src/probe.ts",
    'export const q = () => import("../../../modules/quantizer/src/main");',
    true,
  ],
  // tests, scripts and local/ may import every layer
  ["test/cloud/aggregator/probe.ts", 'import "../../../modules/shared/chunks";', false],
  ["scripts/probe.ts", 'import "../modules/shared/chunks";', false],
  ["local/stack/probe.ts", 'import "../../cloud/aggregator/src/aggregator";', false],
];

test("eslint.config.mjs enforces the layers: core ↛ Azure SDKs/azure/modules/cloud/local, modules ↛ cloud/local, cloud ↛ modules/local, azure ↛ modules/cloud/local", async () => {
  const eslint = new ESLint({ cwd: repoRoot });
  for (const [file, source, forbidden] of CASES) {
    const messages = await restricted(eslint, file, source);
    if (forbidden) {
      assert.equal(messages.length, 1, `${file}: ${source} is reported`);
      assert.match(
        messages[0],
        /docs\/architecture\.md, Layers/,
        `${file}: the message names the rule's home`,
      );
    } else {
      assert.deepEqual(messages, [], `${file}: ${source} is allowed`);
    }
  }
});
