import { test } from "@jest/globals";
import assert from "node:assert/strict";
import * as path from "node:path";
import { MODULE_NAMES, modelPath, moduleContracts } from "../../local/pnp/contracts";
import {
  compareModel,
  dmrPath,
  readModels,
  showProblem,
  validateModels,
  type ModelFile,
  type ModuleContract,
} from "../../local/pnp/dtdl";
import { numberProperty } from "../../modules/shared/writable";

/**
 * The modules' IoT Plug and Play models (dtdl/, DTDL v3): each validates with Microsoft's DTDL parser and each says
 * what its module's code does (local/pnp/dtdl.ts compareModel); crafted invalid models and drifted copies are
 * refused with a precise reason, so neither check can pass by accident.
 */

const ROOT = path.join(__dirname, "..", "..", "..", "dtdl");
const files = readModels(ROOT);
const contracts = moduleContracts();

function file(p: string): ModelFile {
  const f = files.find((x) => x.path === p);
  assert.ok(f, `${p} exists`);
  return f;
}
function copy<T>(v: T): T {
  return JSON.parse(JSON.stringify(v)) as T;
}
type Json = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
const trainerPath = "dtmi/flotilla/edge/trainer-1.json";
function trainerModel(): Json {
  return copy(file(trainerPath).json) as Json;
}
function content(model: Json, name: string): Json {
  const c = (model.contents as Json[]).find((x) => x.name === name);
  assert.ok(c, `${name} in the model`);
  return c;
}
/** The problems of the trainer's model changed by `mutate` (with the other three alongside). */
async function problemsOf(mutate: (m: Json) => void): Promise<string[]> {
  const m = trainerModel();
  mutate(m);
  const set = files.map((f) => (f.path === trainerPath ? { path: f.path, json: m } : f));
  return (await validateModels(set)).map(showProblem);
}

test("one model per module, at the Device Model Repository path of its MODEL_ID", () => {
  assert.deepEqual(
    MODULE_NAMES.map((m) => modelPath(m)),
    [
      "dtmi/flotilla/edge/trainer-1.json",
      "dtmi/flotilla/edge/updatequeue-1.json",
      "dtmi/flotilla/edge/quantizer-1.json",
      "dtmi/flotilla/edge/profiler-1.json",
    ],
  );
  assert.deepEqual(files.map((f) => f.path).sort(), MODULE_NAMES.map((m) => modelPath(m)).sort());
  assert.equal(dmrPath("dtmi:flotilla:edge:UpdateQueue;1"), "dtmi/flotilla/edge/updatequeue-1.json");
});

test("every model file is valid DTDL v3 (Microsoft's DTDL parser)", async () => {
  assert.deepEqual((await validateModels(files)).map(showProblem), []);
  for (const f of files) {
    const m = f.json as Json;
    assert.deepEqual(
      m["@context"],
      ["dtmi:dtdl:context;3", "dtmi:dtdl:extension:quantitativeTypes;1"],
      f.path,
    );
  }
});

test("invalid models are refused, each with a precise one-line reason", async () => {
  const cases: [string, (m: Json) => void, RegExp][] = [
    [
      "a DTMI without a version",
      (m) => (m["@id"] = "dtmi:flotilla:edge:Trainer"),
      /^dtmi\/flotilla\/edge\/trainer-1\.json: dtmi:flotilla:edge:Trainer belongs at dtmi\/flotilla\/edge\/trainer\.json/,
    ],
    [
      "a DTMI segment starting with a digit",
      (m) => (m.schemas[0]["@id"] = "dtmi:flotilla:edge:Trainer:1error;1"),
      /^Identifier 'dtmi:flotilla:edge:Trainer:1error;1' is invalid for DTDL version 3\. \[invalidId\]$/,
    ],
    [
      "a name with a hyphen",
      (m) => (content(m, "maxThreads").name = "max-threads"),
      /trainer-1\.json: .*property 'name' has value 'max-threads', which is invalid\. \[stringInvalid\]$/,
    ],
    [
      "two contents of one name",
      (m) => (content(m, "maxThreads").name = "maxTrainingMinutes"),
      /more than one element whose property 'name' has value 'maxTrainingMinutes'/,
    ],
    [
      "writable on a Telemetry",
      (m) => (content(m, "updates").writable = true),
      /name 'updates' whose property 'writable' is not a relevant property for any specified @type/,
    ],
    [
      "a unit of the wrong kind (bytes for a TimeSpan)",
      (m) => (content(m, "maxTrainingMinutes").unit = "byte"),
      /unit:byte, which is a child of .*DataSizeUnit but must be a child of .*TimeUnit/,
    ],
    [
      "a semantic type without its unit",
      (m) => (content(m, "dataDir")["@type"] = ["Property", "TimeSpan"]),
      /name 'dataDir' which has co-type TimeSpan, which requires property 'unit'/,
    ],
    [
      "an unknown primitive schema",
      (m) => (content(m, "maxThreads").schema = "int32"),
      /'maxThreads' whose property 'schema' has value 'int32'/,
    ],
    [
      "an Enum without valueSchema",
      (m) => delete (m.schemas[1].fields[0].schema as Json).valueSchema,
      /name 'status' which has 'schema' value which requires property 'valueSchema'/,
    ],
    [
      "a Command response without a schema",
      (m) => delete content(m, "abortRound").response.schema,
      /name 'abortRound' which has 'response' value which requires property 'schema'/,
    ],
    [
      "a description longer than 512 characters",
      (m) => (content(m, "enabled").description = "x".repeat(513)),
      /name 'enabled' whose property 'description' has value 'x+…'.*512/,
    ],
    [
      "a reference to no schema",
      (m) => (content(m, "status").response.schema = "dtmi:flotilla:edge:Nothing;1"),
      /^DTDL: undefined identifiers \(no model defines them\): dtmi:flotilla:edge:Nothing;1$/,
    ],
  ];
  for (const [what, mutate, reason] of cases) {
    const problems = await problemsOf(mutate);
    assert.ok(problems.length > 0, `${what}: refused`);
    assert.ok(
      problems.some((p) => reason.test(p)),
      `${what}: ${reason} in\n${problems.join("\n")}`,
    );
    for (const p of problems) assert.doesNotMatch(p, /\n/, "one line");
  }
  // The file and its @id must agree (the Device Model Repository layout).
  const moved = await validateModels([{ path: "dtmi/flotilla/edge/other-1.json", json: trainerModel() }]);
  assert.deepEqual(moved.map(showProblem), [
    "dtmi/flotilla/edge/other-1.json: dtmi:flotilla:edge:Trainer;1 belongs at dtmi/flotilla/edge/trainer-1.json (Device Model Repository layout)",
  ]);
});

test("each model says what its module's code does: properties, units, ranges, defaults, methods, reported keys", () => {
  for (const name of MODULE_NAMES) {
    assert.deepEqual(compareModel(file(modelPath(name)).json, contracts[name]), [], name);
  }
});

test("the comparison fails when the model or the code drifts", () => {
  const code = contracts.trainer;
  const drift = (mutate: (m: Json) => void, c: ModuleContract = code): string[] => {
    const m = trainerModel();
    mutate(m);
    return compareModel(m, c);
  };
  // The model drifts.
  assert.deepEqual(
    drift((m) => (m["@id"] = "dtmi:flotilla:edge:Trainer;2")),
    ["@id dtmi:flotilla:edge:Trainer;2 is not the code's MODEL_ID dtmi:flotilla:edge:Trainer;1"],
  );
  assert.deepEqual(
    drift((m) => (m.contents = m.contents.filter((c: Json) => c.name !== "abortRound"))),
    ["direct method abortRound is not a Command in the model"],
  );
  assert.deepEqual(
    drift((m) => (content(m, "maxThreads").name = "threads")),
    [
      "writable property maxThreads (the code's spec) is not a Property in the model",
      "writable Property threads is neither a writable spec nor a desired key of the code",
    ],
  );
  assert.deepEqual(
    drift((m) => (content(m, "maxTrainingMinutes").unit = "second")),
    ["maxTrainingMinutes: unit TimeSpan/second in the model, TimeSpan/minute in the code"],
  );
  assert.deepEqual(
    drift((m) => (content(m, "maxThreads").schema = "long")),
    ['maxThreads: schema "long" in the model, "integer" in the code'],
  );
  assert.deepEqual(
    drift((m) => (content(m, "enabled").writable = false)),
    [
      "enabled: the model's Property is not writable",
      "read-only Property enabled is not a reported key of the code",
    ],
  );
  assert.deepEqual(
    drift((m) => (content(m, "flotillaEvaluate").writable = false)),
    [
      "desired flotillaEvaluate (written by the Function) is not a writable Property in the model",
      "read-only Property flotillaEvaluate is not a reported key of the code",
    ],
  );
  assert.deepEqual(
    drift((m) => (m.contents = m.contents.filter((c: Json) => c.name !== "participation"))),
    ["reported participation is not a Property in the model"],
  );
  assert.deepEqual(
    drift((m) => {
      const c = content(m, "trainingWindows");
      c.schema.fields[0].schema = "integer";
    }),
    [
      'trainingWindows: schema {"@type":"Object","fields":[{"name":"timeZone","schema":"integer"},{"name":"windows","schema":{"@type":"Array","elementSchema":"string"}}]} in the model, {"@type":"Object","fields":[{"name":"timeZone","schema":"string"},{"name":"windows","schema":{"@type":"Array","elementSchema":"string"}}]} in the code',
    ],
  );
  assert.deepEqual(
    drift((m) => (content(m, "dataDir").description = "The data directory.")),
    [
      'dataDir: the model\'s description does not state "default "/data""',
      "dataDir: applies at the next round, the model's description does not say so",
    ],
  );
  // The code drifts: a new method, a new range, a new default, a new unit, a new property.
  assert.deepEqual(
    drift(() => {}, { ...code, methods: [...code.methods, "reboot"] }),
    ["direct method reboot is not a Command in the model"],
  );
  assert.deepEqual(
    drift(() => {}, { ...code, methods: code.methods.filter((m) => m !== "predict") }),
    ["Command predict is not a direct method of the module"],
  );
  const spec = (o: Partial<Parameters<typeof numberProperty>[0]>) =>
    numberProperty({
      name: "maxThreads",
      schema: "integer",
      minimum: 0,
      maximum: 64,
      description: "x",
      default: 0,
      applies: "next-round",
      ...o,
    });
  assert.deepEqual(
    drift(() => {}, { ...code, specs: { ...code.specs, maxThreads: spec({ maximum: 128 }) } }),
    ['maxThreads: the model\'s description does not state "range 0 to 128"'],
  );
  assert.deepEqual(
    drift(() => {}, { ...code, specs: { ...code.specs, maxThreads: spec({ default: 4 }) } }),
    ['maxThreads: the model\'s description does not state "default 4"'],
  );
  assert.deepEqual(
    drift(() => {}, { ...code, specs: { ...code.specs, maxThreads: spec({ unit: ["DataSize", "byte"] }) } }),
    ["maxThreads: unit none/none in the model, DataSize/byte in the code"],
  );
  assert.deepEqual(
    drift(() => {}, { ...code, specs: { ...code.specs, maxThreads: spec({ applies: "now" }) } }),
    ['maxThreads: applies at once, the model\'s description says "next round"'],
  );
  assert.deepEqual(
    drift(() => {}, { ...code, specs: { ...code.specs, maxGpus: spec({ name: "maxGpus" }) } }),
    ["writable property maxGpus (the code's spec) is not a Property in the model"],
  );
  assert.deepEqual(
    drift(() => {}, { ...code, reportedKeys: [...code.reportedKeys, "health"] }),
    ["reported health is not a Property in the model"],
  );
  assert.deepEqual(
    drift(() => {}, { ...code, cloudDesiredKeys: ["flotilla"] }),
    ["writable Property flotillaEvaluate is neither a writable spec nor a desired key of the code"],
  );
});
