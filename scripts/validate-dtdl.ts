/**
 * Validates the modules' IoT Plug and Play models and compares each with its module's code:
 *
 *   node dist/scripts/validate-dtdl.js [models root, default dtdl]
 *
 * Prints one line per problem and exits 1 when there is any (test/dtdl runs the same checks in `npm test`).
 */
import { join } from "node:path";
import { moduleContracts, modelPath, MODULE_NAMES } from "../local/pnp/contracts";
import { compareModel, parserVersion, readModels, showProblem, validateModels } from "../local/pnp/dtdl";

async function main(): Promise<number> {
  const root = process.argv[2] ?? join(__dirname, "..", "..", "dtdl");
  const files = readModels(root);
  const lines = (await validateModels(files)).map(showProblem);
  const contracts = moduleContracts();
  for (const name of MODULE_NAMES) {
    const path = modelPath(name);
    const file = files.find((f) => f.path === path);
    if (!file) lines.push(`${path}: missing (the ${name} module's model)`);
    else for (const d of compareModel(file.json, contracts[name])) lines.push(`${path}: ${d}`);
  }
  for (const line of lines) console.log(line);
  console.log(`${files.length} model(s) checked with ${await parserVersion()}: ${lines.length} problem(s)`);
  return lines.length === 0 ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (e: unknown) => {
    console.error(e instanceof Error ? e.message : String(e));
    process.exit(1);
  },
);
