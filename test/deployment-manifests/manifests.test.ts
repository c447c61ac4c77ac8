/**
 * The deployment manifests, the module projects (module.json) and their Dockerfiles.
 *
 * Rendered manifests are validated against the public SchemaStore schemas Microsoft's tools use, vendored in
 * `deployment-manifests/schemas/` (source and licence in its README).
 */
import { test } from "@jest/globals";
import { withContext } from "../helpers/context";
import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import * as fs from "node:fs";
import * as os from "node:os";
import * as path from "node:path";
import Ajv from "ajv-draft-04";
import type { ValidateFunction } from "ajv-draft-04";
import { matchRoutes, parseRoutes } from "../../local/hub/routes";
import { loadQuantizerConfig } from "../../modules/quantizer/src/config";
import { METRICS_PATH, METRICS_PORT } from "../../modules/shared/metrics";
import { loadConfig } from "../../modules/update-queue/src/config";
import { updateQueueProperties } from "../../modules/update-queue/src/model";
import {
  CREATE_OPTIONS_CHUNK_CHARS,
  CREATE_OPTIONS_MAX_CHARS,
  renderManifest,
  splitCreateOptions,
  stripJsonComments,
} from "../../scripts/render-manifest";

type Json = Record<string, unknown>;

const repoRoot = path.resolve(__dirname, "..", "..", "..");
const schemasDir = path.join(repoRoot, "deployment-manifests", "schemas");
const manifestsDir = path.join(repoRoot, "deployment-manifests");
const baseTemplateFile = path.join(manifestsDir, "deployment.template.json");
const layeredTemplateFile = path.join(manifestsDir, "layered", "flotilla-trainers.template.json");
const renderScript = path.join(repoRoot, "dist", "scripts", "render-manifest.js");

const MODULES = ["trainer", "quantizer", "update-queue", "profiler"] as const;
const PLATFORMS = {
  amd64: "./Dockerfile.amd64",
  "amd64.debug": "./Dockerfile.amd64.debug",
  arm64v8: "./Dockerfile.arm64v8",
};
const HUB_RESOURCE_ID =
  "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/flotilla/providers/Microsoft.Devices/IotHubs/flotilla-hub";
/** Microsoft's metrics-collector module (deployed by the base template beside the Flotilla modules). */
const COLLECTOR = "metricsCollector";
const VARS = {
  CONTAINER_REGISTRY: "flotillaacr.azurecr.io",
  CONTAINER_REGISTRY_USERNAME: "flotillaacr",
  CONTAINER_REGISTRY_PASSWORD: 'pa$$"word\\', // characters JSON must escape survive substitution
  FLOTILLA_FLEET: "pilot-7",
  IOTHUB_RESOURCE_ID: HUB_RESOURCE_ID,
};
const packageVersion = (JSON.parse(fs.readFileSync(path.join(repoRoot, "package.json"), "utf8")) as Json)
  .version;

const readJson = (file: string): Json => JSON.parse(fs.readFileSync(file, "utf8")) as Json;
const obj = (value: unknown, what: string): Json => {
  assert.ok(typeof value === "object" && value !== null && !Array.isArray(value), `${what} is an object`);
  return value as Json;
};
const render = (file: string, platform = "amd64", vars: Json = VARS): Json =>
  renderManifest(fs.readFileSync(file, "utf8"), vars as Record<string, string>, { platform }) as Json;

// ---------------------------------------------------------------------------------------------------------------
// Schemas

const DRAFT_04 = "http://json-schema.org/draft-04/schema#";
const SCHEMA_ID = (file: string) => `https://json.schemastore.org/${file}`;

/**
 * One Ajv (draft-04 build) holding every vendored draft-04 schema, so their cross-file `$ref`s
 * (the templates point into the edgeAgent 1.1 and edgeHub 1.2 schemas) resolve. Strict mode stays on, with
 * two allowances the SchemaStore files need: `examples` (draft-06) and `contentMediaType` (draft-07) are
 * registered as annotation-only keywords, and `allowUnionTypes` accepts their `"type": [..]` unions, which
 * draft-04 allows. The three 1.0 schemas are draft-07 and unused here, so they are not loaded.
 */
function loadSchemas(): (file: string) => ValidateFunction {
  assert.ok(
    fs.existsSync(schemasDir),
    `schemas not found at ${schemasDir}: they are vendored in deployment-manifests/schemas/`,
  );
  const ajv = new Ajv({ allErrors: true, allowUnionTypes: true });
  ajv.addVocabulary(["examples", "contentMediaType"]);
  for (const file of fs.readdirSync(schemasDir).filter((f) => f.endsWith(".json"))) {
    const schema = readJson(path.join(schemasDir, file));
    if (schema.$schema === DRAFT_04) ajv.addSchema(schema);
  }
  return (file) => {
    const validate = ajv.getSchema(SCHEMA_ID(file));
    assert.ok(validate, `${file} is loaded`);
    return validate;
  };
}
const schema = loadSchemas();

function assertValid(file: string, data: unknown, what: string): void {
  const validate = schema(file);
  const ok = validate(data);
  assert.ok(ok, `${what} against ${file}: ${JSON.stringify(validate.errors, null, 1)}`);
}
function assertInvalid(file: string, data: unknown, what: string): void {
  assert.equal(schema(file)(data), false, `${what} should fail ${file}`);
}

function validateDeployment(manifest: Json, what: string): void {
  const content = obj(manifest.modulesContent, "modulesContent");
  assertValid("azure-iot-edge-deployment-2.0.json", manifest, what);
  assertValid(
    "azure-iot-edgeagent-deployment-1.1.json",
    { $edgeAgent: content.$edgeAgent },
    `${what} $edgeAgent`,
  );
  assertValid("azure-iot-edgehub-deployment-1.2.json", { $edgeHub: content.$edgeHub }, `${what} $edgeHub`);
}

// ---------------------------------------------------------------------------------------------------------------
// Manifest accessors

const agentDesired = (m: Json) =>
  obj(
    obj(obj(m.modulesContent, "modulesContent").$edgeAgent, "$edgeAgent")["properties.desired"],
    "$edgeAgent desired",
  );
const hubDesired = (m: Json) =>
  obj(
    obj(obj(m.modulesContent, "modulesContent").$edgeHub, "$edgeHub")["properties.desired"],
    "$edgeHub desired",
  );
const modulesOf = (m: Json) => obj(agentDesired(m).modules, "modules");
const routesOf = (m: Json): string[] =>
  Object.values(obj(hubDesired(m).routes, "routes")).map((r) =>
    typeof r === "string" ? r : String(obj(r, "route").route),
  );
const createOptionsOf = (module: unknown): Json => {
  const settings = obj(obj(module, "module").settings, "settings");
  const keys = Object.keys(settings).filter((k) => k.startsWith("createOptions"));
  return JSON.parse(
    keys
      .sort()
      .map((k) => settings[k])
      .join(""),
  ) as Json;
};

/** Every `settings` object in a rendered document (system modules, modules, layered module entries). */
function allSettings(node: unknown, where = "$"): Array<{ where: string; settings: Json }> {
  if (typeof node !== "object" || node === null) return [];
  const found: Array<{ where: string; settings: Json }> = [];
  for (const [key, value] of Object.entries(node)) {
    if (key === "settings" && typeof value === "object" && value !== null && "image" in value) {
      found.push({ where, settings: value as Json });
    }
    found.push(...allSettings(value, `${where}.${key}`));
  }
  return found;
}

const ROUTE =
  /^FROM \/messages\/modules\/([A-Za-z0-9_-]+)\/outputs\/(\*|[A-Za-z0-9_-]+) INTO (\$upstream|BrokeredEndpoint\("\/modules\/([A-Za-z0-9_-]+)\/inputs\/([A-Za-z0-9_-]+)"\))$/;

function assertRoutesReferenceModules(routes: string[], moduleNames: string[], what: string): void {
  assert.ok(routes.length > 0, `${what} has routes`);
  for (const route of routes) {
    const m = ROUTE.exec(route);
    assert.ok(m, `${what}: route "${route}" is FROM a module output INTO $upstream or a module input`);
    assert.ok(moduleNames.includes(m[1]), `${what}: route source module "${m[1]}" is deployed`);
    if (m[4] !== undefined)
      assert.ok(moduleNames.includes(m[4]), `${what}: route target module "${m[4]}" is deployed`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// module.json

test("each module.json follows the IoT Edge module project convention", () => {
  for (const name of MODULES) {
    const dir = path.join(repoRoot, "modules", name);
    const project = readJson(path.join(dir, "module.json"));
    assert.equal(project["$schema-version"], "0.0.1", name);
    assert.equal(typeof project.description, "string", name);
    const image = obj(project.image, `${name} image`);
    assert.equal(image.repository, `\${CONTAINER_REGISTRY}/flotilla-${name}`, name);
    const tag = obj(image.tag, `${name} tag`);
    assert.equal(tag.version, packageVersion, `${name}: image version is the package version`);
    assert.deepEqual(tag.platforms, PLATFORMS, name);
    assert.deepEqual(image.buildOptions, [], name);
    assert.equal(typeof image.contextPath, "string", name);
    const context = path.resolve(dir, image.contextPath as string);
    assert.equal(context, repoRoot, `${name}: the build context is the repository root`);
    assert.ok(fs.existsSync(path.join(context, "package.json")), `${name}: the context holds package.json`);
    for (const [platform, file] of Object.entries(obj(tag.platforms, "platforms"))) {
      assert.ok(fs.existsSync(path.join(dir, String(file))), `${name} ${platform}: ${String(file)} exists`);
    }
  }
});

test("the base template deploys exactly the modules that have a module.json", () => {
  const template = readJson(baseTemplateFile);
  const packaged = fs
    .readdirSync(path.join(repoRoot, "modules"))
    .filter((d) => fs.existsSync(path.join(repoRoot, "modules", d, "module.json")))
    .sort();
  const ours = Object.keys(modulesOf(template)).filter((name) => name !== COLLECTOR);
  assert.deepEqual(ours.sort(), packaged, "Flotilla's modules (besides Microsoft's metrics-collector)");
  assert.deepEqual([...MODULES].sort(), packaged);
  for (const [name, module] of Object.entries(modulesOf(template)).filter(([n]) => n !== COLLECTOR)) {
    assert.equal(obj(obj(module, name).settings, name).image, `\${MODULES.${name}}`, name);
  }
});

// ---------------------------------------------------------------------------------------------------------------
// Base deployment

test("the base template is a valid deployment template (schema template 4.0)", () => {
  assertValid(
    "azure-iot-edge-deployment-template-4.0.json",
    readJson(baseTemplateFile),
    "deployment.template.json",
  );
});

test("the rendered base deployment is valid for every platform (deployment 2.0, edgeAgent 1.1, edgeHub 1.2)", () => {
  for (const platform of Object.keys(PLATFORMS)) {
    const manifest = render(baseTemplateFile, platform);
    validateDeployment(manifest, `deployment ${platform}`);
    assert.equal(agentDesired(manifest).schemaVersion, "1.1");
    assert.equal(hubDesired(manifest).schemaVersion, "1.2");
    for (const name of MODULES) {
      const settings = obj(obj(modulesOf(manifest)[name], name).settings, name);
      assert.equal(settings.image, `flotillaacr.azurecr.io/flotilla-${name}:${packageVersion}-${platform}`);
    }
    assert.deepEqual(
      obj(obj(agentDesired(manifest).runtime, "runtime").settings, "runtime settings").registryCredentials,
      {
        flotilla: {
          username: "flotillaacr",
          password: VARS.CONTAINER_REGISTRY_PASSWORD,
          address: "flotillaacr.azurecr.io",
        },
      },
    );
  }
});

test("the schemas reject broken manifests (the validators are live)", () => {
  const manifest = render(baseTemplateFile);
  const noRestart = structuredClone(manifest);
  delete obj(obj(agentDesired(noRestart).systemModules, "systemModules").edgeHub, "edgeHub").restartPolicy;
  assertInvalid("azure-iot-edge-deployment-2.0.json", noRestart, "edgeHub without restartPolicy");
  assertInvalid(
    "azure-iot-edgeagent-deployment-1.1.json",
    { $edgeAgent: obj(noRestart.modulesContent, "mc").$edgeAgent },
    "edgeHub without restartPolicy",
  );
  const oldHub = structuredClone(manifest);
  hubDesired(oldHub).schemaVersion = "1.1";
  assertInvalid(
    "azure-iot-edgehub-deployment-1.2.json",
    { $edgeHub: obj(oldHub.modulesContent, "mc").$edgeHub },
    "edgeHub 1.1",
  );
  const badEnv = structuredClone(readJson(baseTemplateFile));
  obj(modulesOf(badEnv).trainer, "trainer").env = { FLOTILLA_DATA_DIR: { val: "/data" } };
  assertInvalid(
    "azure-iot-edge-deployment-template-4.0.json",
    badEnv,
    "env without value (a $ref into edgeAgent 1.1)",
  );
});

test("routes: trainer updates go through the quantizer to the update queue, the queue and the profiler go upstream", () => {
  const manifest = render(baseTemplateFile);
  const routes = routesOf(manifest);
  assertRoutesReferenceModules(routes, Object.keys(modulesOf(manifest)), "deployment");
  assert.deepEqual(
    routes.sort(),
    [
      'FROM /messages/modules/trainer/outputs/updates INTO BrokeredEndpoint("/modules/quantizer/inputs/updates")',
      'FROM /messages/modules/quantizer/outputs/updates INTO BrokeredEndpoint("/modules/update-queue/inputs/updates")',
      "FROM /messages/modules/profiler/outputs/* INTO $upstream",
      "FROM /messages/modules/update-queue/outputs/* INTO $upstream",
      "FROM /messages/modules/metricsCollector/outputs/metricOutput INTO $upstream",
    ].sort(),
  );
  assert.deepEqual(Object.keys(obj(hubDesired(manifest).routes, "routes")).sort(), [
    "metricsCollectorToUpstream",
    "profilerToUpstream",
    "quantizerToQueue",
    "queueToUpstream",
    "trainerToQuantizer",
  ]);
  assert.deepEqual(hubDesired(manifest).storeAndForwardConfiguration, { timeToLiveSecs: 7 * 24 * 3600 });
});

/** Where the local hub's edgeHub router (the one `npm start` runs) delivers a module output under these routes. */
function sinksOf(routes: Json, moduleId: string, output: string): string[] {
  return matchRoutes(parseRoutes(routes), {
    moduleId,
    outputName: output,
    properties: {},
    system: {},
    body: Buffer.alloc(0),
  })
    .map((s) => (s.kind === "upstream" ? "$upstream" : `${s.moduleId}/${s.input}`))
    .sort();
}

test("routes: an update takes exactly one path, trainer → quantizer → update-queue → $upstream (base and layered)", () => {
  const base = render(baseTemplateFile);
  const layer = obj(render(layeredTemplateFile).content, "content");
  const layered = applyLayer(
    { modulesContent: { $edgeHub: { "properties.desired": { schemaVersion: "1.2", routes: {} } } } },
    layer,
  );
  for (const [what, manifest] of [
    ["base", base],
    ["layered", layered],
  ] as const) {
    const routes = obj(hubDesired(manifest).routes, "routes");
    assert.deepEqual(
      sinksOf(routes, "trainer", "updates"),
      ["quantizer/updates"],
      `${what}: trainer updates`,
    );
    assert.deepEqual(sinksOf(routes, "quantizer", "updates"), ["update-queue/updates"], `${what}: quantizer`);
    assert.deepEqual(sinksOf(routes, "update-queue", "upstream"), ["$upstream"], `${what}: update-queue`);
    // Nothing reaches the update-queue but the quantizer's output (a direct trainer route would send updates twice).
    for (const text of routesOf(manifest)) {
      if (text.includes("/modules/update-queue/inputs/"))
        assert.match(text, /^FROM \/messages\/modules\/quantizer\/outputs\/updates /, `${what}: ${text}`);
    }
  }
});

test("metrics-collector: pinned image, the IoT Hub's resource id, every module's :9600/metrics, both upload targets", () => {
  const template = readJson(baseTemplateFile);
  const rawEnv = obj(obj(modulesOf(template)[COLLECTOR], COLLECTOR).env, "env");
  // The Log Analytics key is a placeholder filled at render time (like the registry password), never a literal.
  assert.equal(obj(rawEnv.LogAnalyticsSharedKey, "key").value, "${LOG_ANALYTICS_SHARED_KEY:-}");
  assert.equal(obj(rawEnv.ResourceId, "ResourceId").value, "${IOTHUB_RESOURCE_ID}");

  const manifest = render(baseTemplateFile);
  const collector = obj(modulesOf(manifest)[COLLECTOR], COLLECTOR);
  const image = String(obj(collector.settings, "settings").image);
  assert.match(image, /^mcr\.microsoft\.com\/azureiotedge-metrics-collector:\d+\.\d+(\.\d+)?$/, "pinned tag");
  assert.equal(collector.status, "running");
  assert.equal(collector.restartPolicy, "always");
  const env = Object.fromEntries(
    Object.entries(obj(collector.env, "env")).map(([k, v]) => [k, obj(v, k).value as string]),
  );
  assert.equal(env.ResourceId, HUB_RESOURCE_ID);
  assert.match(
    env.ResourceId,
    /^\/subscriptions\/[^/]+\/resourceGroups\/[^/]+\/providers\/Microsoft\.Devices\/IotHubs\/[^/]+$/,
  );
  assert.equal(env.UploadTarget, "AzureMonitor", "default upload target: Log Analytics (InsightsMetrics)");
  assert.equal(env.ScrapeFrequencyInSecs, "300");
  assert.equal(env.LogAnalyticsWorkspaceId, "");
  assert.equal(env.LogAnalyticsSharedKey, "");
  // Every module the manifest runs (but the collector) and the two system modules, on the port the modules serve.
  const endpoints = env.MetricsEndpointsCSV.split(",");
  const expected = [
    "edgeHub",
    "edgeAgent",
    ...Object.keys(modulesOf(manifest)).filter((m) => m !== COLLECTOR),
  ].map((m) => `http://${m}:${METRICS_PORT}${METRICS_PATH}`);
  assert.deepEqual([...endpoints].sort(), [...expected].sort());
  for (const m of MODULES) assert.ok(endpoints.includes(`http://${m}:9600/metrics`), m);

  const iot = render(baseTemplateFile, "amd64", {
    ...VARS,
    METRICS_UPLOAD_TARGET: "IoTMessage",
    METRICS_SCRAPE_SECONDS: "60",
    LOG_ANALYTICS_WORKSPACE_ID: "11111111-2222-3333-4444-555555555555",
    LOG_ANALYTICS_SHARED_KEY: "c2VjcmV0",
  });
  validateDeployment(iot, "deployment with UploadTarget=IoTMessage");
  const iotEnv = obj(obj(modulesOf(iot)[COLLECTOR], COLLECTOR).env, "env");
  assert.equal(obj(iotEnv.UploadTarget, "UploadTarget").value, "IoTMessage");
  assert.equal(obj(iotEnv.ScrapeFrequencyInSecs, "ScrapeFrequencyInSecs").value, "60");
  assert.equal(obj(iotEnv.LogAnalyticsSharedKey, "key").value, "c2VjcmV0");
  // UploadTarget=IoTMessage: the collector's `metricOutput` goes upstream (to IoT Hub), and nowhere else.
  const routes = obj(hubDesired(manifest).routes, "routes");
  assert.deepEqual(sinksOf(routes, COLLECTOR, "metricOutput"), ["$upstream"]);
  const route = obj(routes.metricsCollectorToUpstream, "route");
  assert.ok((route.priority as number) > 0, "metrics yield to model updates when the link is scarce");
  assert.ok((route.timeToLiveSecs as number) <= 86400, "stale metrics are not kept for a week offline");
});

test("a route to a module that is not deployed is caught", () => {
  assert.throws(
    () =>
      assertRoutesReferenceModules(
        ["FROM /messages/modules/quantizer/outputs/* INTO $upstream"],
        ["trainer"],
        "x",
      ),
    /quantizer/,
  );
  assert.throws(
    () =>
      assertRoutesReferenceModules(
        ['FROM /messages/modules/trainer/outputs/u INTO BrokeredEndpoint("/modules/q/inputs/u")'],
        ["trainer"],
        "x",
      ),
    /"q"/,
  );
});

test("createOptions: valid JSON, 512-character chunks, at most 4 KB per module", () => {
  for (const file of [baseTemplateFile, layeredTemplateFile]) {
    for (const platform of Object.keys(PLATFORMS)) {
      const found = allSettings(render(file, platform));
      assert.ok(found.length >= 2, `${file} has modules`);
      for (const { where, settings } of found) {
        const keys = Object.keys(settings).filter((k) => k.toLowerCase().startsWith("createoptions"));
        assert.ok(keys.length >= 1 && keys.length <= 8, `${where}: ${keys.length} createOptions keys`);
        keys
          .sort()
          .forEach((k, i) => assert.equal(k, i === 0 ? "createOptions" : `createOptions0${i}`, where));
        const chunks = keys.map((k) => settings[k]);
        for (const chunk of chunks) {
          assert.equal(typeof chunk, "string", `${where}: createOptions is a string`);
          assert.ok(
            (chunk as string).length <= CREATE_OPTIONS_CHUNK_CHARS,
            `${where}: chunk ≤ 512 characters`,
          );
        }
        const joined = chunks.join("");
        assert.ok(
          Buffer.byteLength(joined) <= 4096,
          `${where}: createOptions is ${Buffer.byteLength(joined)} bytes`,
        );
        assert.doesNotThrow(() => JSON.parse(joined), `${where}: createOptions is JSON`);
      }
    }
  }
});

test("edgeHub and edgeAgent keep their state on the host; edgeHub publishes 5671, 8883 and 443", () => {
  const system = obj(agentDesired(render(baseTemplateFile)).systemModules, "systemModules");
  assert.equal(
    obj(obj(system.edgeAgent, "edgeAgent").settings, "s").image,
    "mcr.microsoft.com/azureiotedge-agent:1.5",
  );
  assert.equal(
    obj(obj(system.edgeHub, "edgeHub").settings, "s").image,
    "mcr.microsoft.com/azureiotedge-hub:1.5",
  );
  for (const name of ["edgeAgent", "edgeHub"]) {
    const module = obj(system[name], name);
    const folder = obj(obj(module.env, "env").StorageFolder, "StorageFolder").value;
    const binds = obj(createOptionsOf(module).HostConfig, "HostConfig").Binds as string[];
    assert.ok(
      binds.some((b) => b.split(":")[1] === folder),
      `${name}: StorageFolder ${String(folder)} is bound to the host`,
    );
  }
  const ports = obj(
    obj(createOptionsOf(system.edgeHub).HostConfig, "HostConfig").PortBindings,
    "PortBindings",
  );
  assert.deepEqual(Object.keys(ports).sort(), ["443/tcp", "5671/tcp", "8883/tcp"]);
});

test("module containers: memory limits, init, no capabilities, volumes where their env says", () => {
  const manifest = render(baseTemplateFile);
  for (const name of MODULES) {
    const module = obj(modulesOf(manifest)[name], name);
    assert.equal(module.type, "docker");
    assert.equal(module.status, "running");
    assert.equal(module.restartPolicy, "always");
    const host = obj(createOptionsOf(module).HostConfig, `${name} HostConfig`);
    assert.ok(
      Number.isInteger(host.Memory) && (host.Memory as number) >= 64 * 2 ** 20,
      `${name}: memory limit`,
    );
    assert.equal(host.Init, true, `${name}: an init process forwards signals to node`);
    assert.deepEqual(host.CapDrop, ["ALL"], name);
  }
  const env = (name: string) => obj(obj(modulesOf(manifest)[name], name).env, `${name} env`);
  const trainerHost = obj(createOptionsOf(modulesOf(manifest).trainer).HostConfig, "trainer HostConfig");
  const dataDir = obj(env("trainer").FLOTILLA_DATA_DIR, "FLOTILLA_DATA_DIR").value;
  assert.equal(dataDir, "/data");
  assert.deepEqual(
    trainerHost.Binds,
    [
      "/srv/flotilla/data:/data:ro",
      "flotilla-keys:/var/lib/flotilla/keys",
      "flotilla-trainer-work:/var/lib/flotilla/work",
    ],
    "device data is mounted read-only; the identity key (file-backed default) and the local training artefacts live on named volumes",
  );
  assert.equal(obj(env("trainer").FLOTILLA_KEY_DIR, "FLOTILLA_KEY_DIR").value, "/var/lib/flotilla/keys");
  const queueHost = obj(
    createOptionsOf(modulesOf(manifest)["update-queue"]).HostConfig,
    "update-queue HostConfig",
  );
  const queueDir = obj(env("update-queue").FLOTILLA_QUEUE_DIR, "FLOTILLA_QUEUE_DIR").value;
  assert.deepEqual(queueHost.Mounts, [{ Type: "volume", Source: "flotilla-queue", Target: queueDir }]);
  const quantizerHost = obj(
    createOptionsOf(modulesOf(manifest).quantizer).HostConfig,
    "quantizer HostConfig",
  );
  const quantizerDir = obj(env("quantizer").FLOTILLA_QUANTIZER_DIR, "FLOTILLA_QUANTIZER_DIR").value;
  assert.equal(quantizerDir, "/var/lib/flotilla/quantizer");
  assert.deepEqual(quantizerHost.Mounts, [
    { Type: "volume", Source: "flotilla-quantizer", Target: quantizerDir },
  ]);
  // The update-queue accepts the environment the deployment gives it, plus what edgeAgent adds on a device.
  const edgeAgentAdds = {
    IOTEDGE_WORKLOADURI: "unix:///var/run/iotedge/workload.sock",
    IOTEDGE_DEVICEID: "device-1",
    IOTEDGE_MODULEID: "update-queue",
    IOTEDGE_IOTHUBHOSTNAME: "hub.azure-devices.net",
    IOTEDGE_AUTHSCHEME: "sasToken",
    IOTEDGE_MODULEGENERATIONID: "gen-1",
  };
  const queueEnv = Object.fromEntries(
    Object.entries(env("update-queue")).map(([k, v]) => [k, String(obj(v, k).value)]),
  );
  assert.equal(loadConfig({ ...queueEnv, ...edgeAgentAdds }).queueDir, queueDir);
  const quantizerEnv = Object.fromEntries(
    Object.entries(env("quantizer")).map(([k, v]) => [k, String(obj(v, k).value)]),
  );
  assert.equal(
    loadQuantizerConfig({ ...quantizerEnv, ...edgeAgentAdds, IOTEDGE_MODULEID: "quantizer" }).stateDir,
    quantizerDir,
  );
  const custom = render(baseTemplateFile, "amd64", { ...VARS, FLOTILLA_HOST_DATA_DIR: "/mnt/plant-data" });
  const customHost = obj(createOptionsOf(modulesOf(custom).trainer).HostConfig, "trainer HostConfig");
  assert.deepEqual(customHost.Binds, [
    "/mnt/plant-data:/data:ro",
    "flotilla-keys:/var/lib/flotilla/keys",
    "flotilla-trainer-work:/var/lib/flotilla/work",
  ]);
});

test("module twins: the documented defaults, within IoT Hub's twin limits", () => {
  const content = obj(render(baseTemplateFile).modulesContent, "modulesContent");
  const desired = (name: string) => obj(obj(content[name], name)["properties.desired"], `${name} desired`);
  assert.deepEqual(desired("trainer"), { job: null, round: 0 });
  assert.deepEqual(desired("profiler"), { scheduleMinutes: 60 });
  // The quantizer starts with no job to compress: every update passes through until the cloud configures a job.
  assert.deepEqual(desired("quantizer"), { flotilla: { jobs: {} } });
  // Every key deployed to the update-queue is one of its writable properties (./model.ts), with a valid value.
  const queue = desired("update-queue");
  assert.deepEqual(Object.keys(queue).sort(), ["maxChunkBytes", "resendAfterMs"]);
  const specs = updateQueueProperties({ maxChunkBytes: 1, resendAfterMs: 1, capacityBytes: 1 });
  for (const [k, v] of Object.entries(queue))
    assert.equal(specs[k as keyof typeof specs].parse(v), v, `the update-queue takes ${k} = ${String(v)}`);
  assert.ok(
    (queue.maxChunkBytes as number) <= 256 * 1024 - 4096,
    "a chunk and its properties fit one D2C message",
  );
  // Twin documents: desired ≤ 32 KB; keys without '.', '$' or spaces; at most 10 levels (iot-hub-devguide-device-twins).
  const depth = (v: unknown): number =>
    typeof v === "object" && v !== null ? 1 + Math.max(0, ...Object.values(v).map(depth)) : 0;
  const keys = (v: unknown): string[] =>
    typeof v === "object" && v !== null ? Object.entries(v).flatMap(([k, c]) => [k, ...keys(c)]) : [];
  for (const name of MODULES) {
    const d = desired(name);
    assert.ok(Buffer.byteLength(JSON.stringify(d)) <= 32 * 1024, name);
    assert.ok(depth(d) <= 10, name);
    for (const key of keys(d)) assert.doesNotMatch(key, /[.$ ]/, `${name}: twin key "${key}"`);
  }
});

// ---------------------------------------------------------------------------------------------------------------
// Layered deployment

/** What IoT Hub does with a layered deployment: each `properties.desired.<path>` key sets that path. */
function applyLayer(base: Json, layerContent: Json): Json {
  const merged = structuredClone(base);
  const content = obj(merged.modulesContent, "modulesContent");
  for (const [twin, entries] of Object.entries(obj(layerContent.modulesContent, "layer modulesContent"))) {
    const target = (content[twin] ??= { "properties.desired": {} }) as Json;
    for (const [key, value] of Object.entries(obj(entries, twin))) {
      const parts = key.split(".");
      assert.deepEqual(parts.slice(0, 2), ["properties", "desired"], `${twin}: layered key ${key}`);
      if (parts.length === 2) {
        target["properties.desired"] = structuredClone(value);
        continue;
      }
      let node = obj(target["properties.desired"], `${twin} desired`);
      for (const part of parts.slice(2, -1)) node = (node[part] ??= {}) as Json;
      node[parts[parts.length - 1]] = structuredClone(value);
    }
  }
  return merged;
}

test("the layered trainers deployment: user modules only, dot-path keys, fleet target, priority, labels", () => {
  const layered = render(layeredTemplateFile);
  assert.deepEqual(Object.keys(layered).sort(), [
    "content",
    "id",
    "labels",
    "metrics",
    "priority",
    "targetCondition",
  ]);
  const content = obj(obj(layered.content, "content").modulesContent, "modulesContent");
  for (const key of Object.keys(obj(content.$edgeAgent, "$edgeAgent"))) {
    assert.match(
      key,
      /^properties\.desired\.(modules\.[A-Za-z0-9_-]+|runtime\.settings\.registryCredentials\.[^.$# ]+)$/,
    );
  }
  for (const key of Object.keys(obj(content.$edgeHub, "$edgeHub"))) {
    assert.match(key, /^properties\.desired\.routes\.[^.$# ]+$/);
  }
  for (const [twin, entries] of Object.entries(content).filter(([k]) => !k.startsWith("$"))) {
    for (const key of Object.keys(obj(entries, twin))) {
      // A whole "properties.desired" would replace what the cloud writes there (the update-queue's acks).
      assert.match(
        key,
        /^properties\.desired\.[^.$ ]+$/,
        `${twin}: layered twin key ${key} sets one property`,
      );
    }
  }
  assert.equal(content.trainer, undefined, "the layer leaves the trainer's job and round to the coordinator");
  assert.equal(content.quantizer, undefined, "the layer leaves the quantizer's jobs to the coordinator");
  assert.equal(layered.targetCondition, "tags.flotilla.role='trainer' AND tags.flotilla.fleet='pilot-7'");
  assert.ok(Number.isInteger(layered.priority) && (layered.priority as number) > 0);
  assert.match(String(layered.id), /^[a-z0-9\-:+%_#*?!(),=@;']{1,128}$/, "deployment id");
  // Configuration labels: ASCII alphanumerics and - : . + % _ # * ? ! ( ) , = @ ; ' , up to 128 characters.
  for (const [k, v] of Object.entries(obj(layered.labels, "labels"))) {
    for (const s of [k, String(v)]) assert.match(s, /^[A-Za-z0-9\-:.+%_#*?!(),=@;']{1,128}$/, `label ${k}`);
  }
  assert.equal(obj(layered.labels, "labels").fleet, "pilot-7");
});

test("the layered deployment on a base without the training stack gives the base deployment back, valid", () => {
  for (const platform of Object.keys(PLATFORMS)) {
    const full = render(baseTemplateFile, platform);
    const layer = obj(render(layeredTemplateFile, platform).content, "content");
    const stackModules = Object.keys(obj(obj(layer.modulesContent, "mc").$edgeAgent, "$edgeAgent"))
      .filter((k) => k.startsWith("properties.desired.modules."))
      .map((k) => k.slice("properties.desired.modules.".length));
    assert.deepEqual(stackModules.sort(), ["quantizer", "trainer", "update-queue"]);
    const base = structuredClone(full);
    const baseRoutes = obj(hubDesired(base).routes, "routes");
    for (const name of stackModules) {
      delete modulesOf(base)[name];
      delete obj(base.modulesContent, "mc")[name];
      for (const [route, value] of Object.entries(baseRoutes)) {
        if (JSON.stringify(value).includes(`/modules/${name}/`)) delete baseRoutes[route];
      }
    }
    delete obj(obj(agentDesired(base).runtime, "runtime").settings, "settings").registryCredentials;
    assertRoutesReferenceModules(routesOf(base), Object.keys(modulesOf(base)), "base without the stack");
    const merged = applyLayer(base, layer);
    validateDeployment(merged, `base + layered ${platform}`);
    assertRoutesReferenceModules(routesOf(merged), Object.keys(modulesOf(merged)), "base + layered");
    // The two templates describe the training stack once each: they must not drift apart. The layer leaves the
    // trainer's and the quantizer's twins (state the coordinator writes) alone; everything else must match the base.
    delete obj(full.modulesContent, "mc").trainer;
    delete obj(full.modulesContent, "mc").quantizer;
    assert.deepEqual(
      merged,
      full,
      "layered trainer stack == the base template's (modules, routes, twins, credentials)",
    );
  }
});

// ---------------------------------------------------------------------------------------------------------------
// Renderer

test("unresolved placeholders fail with one line naming every one", () => {
  const err = (fn: () => unknown): Error & { code?: string } => {
    try {
      fn();
    } catch (e) {
      return e as Error & { code?: string };
    }
    return assert.fail("expected an error");
  };
  const e = err(() => render(baseTemplateFile, "amd64", {}));
  assert.equal(e.code, "E_MANIFEST_UNRESOLVED");
  assert.doesNotMatch(e.message, /\n/);
  for (const name of [
    "CONTAINER_REGISTRY",
    "CONTAINER_REGISTRY_USERNAME",
    "CONTAINER_REGISTRY_PASSWORD",
    "IOTHUB_RESOURCE_ID",
  ]) {
    assert.ok(e.message.includes(`\${${name}}`), `${name} named in: ${e.message}`);
  }
  const layered = err(() => render(layeredTemplateFile, "amd64", { ...VARS, FLOTILLA_FLEET: undefined }));
  assert.match(layered.message, /\$\{FLOTILLA_FLEET\}/);
  const noModule = err(() => renderManifest({ image: "${MODULES.no-such-module}", other: "${NOPE}" }, VARS));
  assert.match(noModule.message, /\$\{MODULES\.no-such-module\}/);
  assert.match(noModule.message, /\$\{NOPE\}/);
  const noPlatform = err(() => render(baseTemplateFile, "arm32v7"));
  assert.match(noPlatform.message, /\$\{MODULES\.trainer\}.*\$\{MODULES\.update-queue\}/);
  assert.match(noPlatform.message, /trainer \(arm32v7\)/);
});

test("placeholders: defaults, repeated and embedded uses, explicit module platforms, keys", () => {
  const out = renderManifest(
    {
      a: "${A}",
      b: "${B:-fallback}",
      c: "${C:-fallback}",
      d: "x-${A}-${A}",
      image: "${MODULES.trainer.arm64v8}",
      debug: "${MODULES.profiler}",
      "key-${A}": ["${A}", 3, true, null],
    },
    { A: "1", B: "", C: "set", CONTAINER_REGISTRY: "r.example.io" },
    { platform: "amd64.debug" },
  );
  assert.deepEqual(out, {
    a: "1",
    b: "fallback",
    c: "set",
    d: "x-1-1",
    image: `r.example.io/flotilla-trainer:${packageVersion}-arm64v8`,
    debug: `r.example.io/flotilla-profiler:${packageVersion}-amd64.debug`,
    "key-1": ["1", 3, true, null],
  });
});

test("comments are stripped outside strings; $schema-template is dropped", () => {
  const text = [
    "{",
    '  "$schema-template": "4.0.0", // the tool version',
    "  /* a block",
    '     comment */ "url": "https://example.com/a//b", "star": "/* not a comment */",',
    '  "quote": "say \\"//\\" here" // trailing',
    "}",
  ].join("\n");
  assert.deepEqual(JSON.parse(stripJsonComments(text)), {
    "$schema-template": "4.0.0",
    url: "https://example.com/a//b",
    star: "/* not a comment */",
    quote: 'say "//" here',
  });
  assert.deepEqual(renderManifest(text, {}), {
    url: "https://example.com/a//b",
    star: "/* not a comment */",
    quote: 'say "//" here',
  });
  assert.throws(() => renderManifest('{"a": 1 /* open', {}), { code: "E_MANIFEST_SYNTAX" });
  assert.throws(() => renderManifest("{ not json", {}), { code: "E_MANIFEST_SYNTAX" });
});

test("createOptions: objects are serialised, long ones chunked in order, over 4 KB refused", () => {
  const long = {
    HostConfig: { Binds: Array.from({ length: 40 }, (_, i) => `/srv/volume-${i}:/mnt/volume-${i}:ro`) },
  };
  const settings = obj(
    obj(renderManifest({ m: { settings: { image: "i", createOptions: long } } }, {}), "m").m,
    "m",
  ).settings as Json;
  const keys = Object.keys(settings);
  assert.deepEqual(keys[0], "image", "key order is kept");
  assert.ok(keys.length > 3, "chunked");
  assert.deepEqual(
    JSON.parse(
      keys
        .slice(1)
        .map((k) => settings[k])
        .join(""),
    ),
    long,
  );
  assert.deepEqual(Object.keys(splitCreateOptions("x".repeat(1025))), [
    "createOptions",
    "createOptions01",
    "createOptions02",
  ]);
  assert.deepEqual(splitCreateOptions("{}"), { createOptions: "{}" });
  assert.equal(Object.keys(splitCreateOptions("y".repeat(CREATE_OPTIONS_MAX_CHARS))).length, 8);
  assert.throws(() => splitCreateOptions("y".repeat(CREATE_OPTIONS_MAX_CHARS + 1)), {
    code: "E_MANIFEST_CREATE_OPTIONS",
  });
  const huge = { HostConfig: { Binds: Array.from({ length: 200 }, (_, i) => `/srv/v-${i}:/mnt/v-${i}`) } };
  assert.throws(() => renderManifest({ settings: { image: "i", createOptions: huge } }, {}), {
    code: "E_MANIFEST_CREATE_OPTIONS",
  });
});

// ---------------------------------------------------------------------------------------------------------------
// CLI

function cli(args: string[], env: Record<string, string> = {}) {
  // Only PATH from the outside: the test's own environment must not fill placeholders.
  const r = spawnSync(process.execPath, [renderScript, ...args], {
    encoding: "utf8",
    env: { PATH: process.env.PATH ?? "", ...env },
    cwd: repoRoot,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

test("CLI: --set wins over the environment, --platform picks the tag, --out writes the file", () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "flotilla-manifest-"));
  try {
    const out = path.join(dir, "nested", "deployment.arm64v8.json");
    const r = cli(
      [
        "deployment-manifests/deployment.template.json",
        "--platform",
        "arm64v8",
        "--set",
        "CONTAINER_REGISTRY=flotillaacr.azurecr.io",
        "--set",
        "CONTAINER_REGISTRY_PASSWORD=from-set",
        "--set",
        `IOTHUB_RESOURCE_ID=${HUB_RESOURCE_ID}`,
        "--out",
        out,
      ],
      { CONTAINER_REGISTRY_USERNAME: "flotillaacr", CONTAINER_REGISTRY_PASSWORD: "from-env" },
    );
    assert.equal(r.code, 0, r.stderr);
    assert.equal(r.stdout, "");
    const written = readJson(out);
    validateDeployment(written, "CLI output");
    assert.deepEqual(
      written,
      render(baseTemplateFile, "arm64v8", { ...VARS, CONTAINER_REGISTRY_PASSWORD: "from-set" }),
    );
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test("CLI: errors are one line on stderr with a non-zero exit", () => {
  const cases: Array<[string[], RegExp]> = [
    [
      ["deployment-manifests/deployment.template.json"],
      /^render-manifest: E_MANIFEST_UNRESOLVED: .*\$\{CONTAINER_REGISTRY\}/,
    ],
    [["deployment-manifests/missing.json"], /^render-manifest: E_MANIFEST_TEMPLATE: cannot read .*ENOENT/],
    [[], /^render-manifest: E_MANIFEST_ARGS: expected one template file/],
    [["x.json", "--set", "NOEQUALS"], /^render-manifest: E_MANIFEST_ARGS: --set expects VAR=value/],
    [["x.json", "--bogus"], /^render-manifest: E_MANIFEST_ARGS: .*bogus/],
  ];
  for (const [args, pattern] of cases) {
    const r = cli(args);
    assert.equal(r.code, 1, args.join(" "));
    const lines = r.stderr.trim().split("\n");
    assert.equal(lines.length, 1, r.stderr);
    assert.match(lines[0], pattern);
    assert.equal(r.stdout, "");
  }
});

// ---------------------------------------------------------------------------------------------------------------
// Dockerfiles (read as text)

interface Instruction {
  op: string;
  args: string;
}

/** Dockerfile instructions by stage: comments dropped, `\` continuations joined. */
function parseDockerfile(text: string): Instruction[][] {
  const stages: Instruction[][] = [];
  const logical = text
    .split("\n")
    .filter((l) => !/^\s*#/.test(l))
    .join("\n")
    .replace(/\\\n/g, " ")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "");
  for (const line of logical) {
    const m = /^(\S+)\s*(.*)$/.exec(line);
    assert.ok(m);
    const instruction = { op: m[1].toUpperCase(), args: m[2].replace(/\s+/g, " ") };
    if (instruction.op === "FROM") stages.push([]);
    assert.ok(stages.length > 0, `instruction before FROM: ${line}`);
    stages[stages.length - 1].push(instruction);
  }
  return stages;
}

const BASE_IMAGE: Record<string, RegExp> = {
  amd64: /^(--platform=linux\/amd64 )?(docker\.io\/)?(library\/|amd64\/)?node:20-bookworm-slim\b/,
  "amd64.debug": /^(--platform=linux\/amd64 )?(docker\.io\/)?(library\/|amd64\/)?node:20-bookworm-slim\b/,
  arm64v8:
    /^(--platform=linux\/arm64(\/v8)? (docker\.io\/)?(library\/)?node|(docker\.io\/)?arm64v8\/node):20-bookworm-slim\b/,
};

function dockerfiles(): Array<{ name: string; platform: string; file: string; stages: Instruction[][] }> {
  return MODULES.flatMap((name) =>
    Object.entries(PLATFORMS).map(([platform, rel]) => {
      const file = path.join(repoRoot, "modules", name, rel);
      return { name, platform, file, stages: parseDockerfile(fs.readFileSync(file, "utf8")) };
    }),
  );
}

test("Dockerfiles: node 20 bookworm-slim for the platform, multi-stage build, production dependencies only", () => {
  for (const { name, platform, stages } of dockerfiles()) {
    const where = `${name} ${platform}`;
    assert.ok(stages.length >= 2, `${where}: multi-stage`);
    for (const stage of stages) assert.match(stage[0].args, BASE_IMAGE[platform], `${where}: base image`);
    const build = stages.find((s) => / AS build$/i.test(s[0].args));
    assert.ok(build, `${where}: a stage named build`);
    const runs = build
      .filter((i) => i.op === "RUN")
      .map((i) => i.args)
      .join(" && ");
    const ci = runs.search(/\bnpm ci\b/);
    const compile = runs.search(/\bnpm run build\b/);
    const prune = runs.search(/\bnpm prune --omit=dev\b/);
    assert.ok(
      ci >= 0 && compile > ci && prune > compile,
      `${where}: npm ci, then npm run build, then npm prune --omit=dev`,
    );
    assert.ok(
      build.some((i) => i.op === "ENV" && /\bONNXRUNTIME_NODE_INSTALL=skip\b/.test(i.args)),
      `${where}: onnxruntime-node's install download is off`,
    );
    for (const copy of build.filter((i) => i.op === "COPY" && !i.args.startsWith("--from"))) {
      for (const src of copy.args.split(" ").slice(0, -1)) {
        assert.ok(
          fs.existsSync(path.join(repoRoot, src)),
          `${where}: COPY source ${src} exists in the build context`,
        );
      }
    }
    const runtime = stages[stages.length - 1];
    assert.notEqual(runtime, build, `${where}: the runtime is not the build stage`);
    const runtimeRuns = runtime
      .filter((i) => i.op === "RUN")
      .map((i) => i.args)
      .join(" ");
    assert.doesNotMatch(runtimeRuns, /\bnpm (ci|install|i)\b/, `${where}: the runtime installs nothing`);
    const copies = runtime.filter((i) => i.op === "COPY").map((i) => i.args);
    assert.ok(
      copies.includes("--from=build /app/node_modules ./node_modules"),
      `${where}: pruned node_modules`,
    );
    assert.ok(copies.includes("--from=build /app/dist ./dist"), `${where}: compiled dist/`);
    assert.ok(
      copies.every((c) => c.startsWith("--from=build ")),
      `${where}: nothing from the context at runtime`,
    );
    assert.ok(
      runtime.some((i) => i.op === "ENV" && /\bNODE_ENV=production\b/.test(i.args)),
      `${where}: NODE_ENV=production`,
    );
  }
});

test("Dockerfiles: run as a non-root user, CMD starts the module's own entry point, expose /metrics, debug adds the inspector", () => {
  for (const { name, platform, stages } of dockerfiles()) {
    const where = `${name} ${platform}`;
    const runtime = stages[stages.length - 1];
    const userAt = runtime.map((i) => i.op).lastIndexOf("USER");
    const cmdAt = runtime.map((i) => i.op).lastIndexOf("CMD");
    assert.ok(userAt >= 0 && cmdAt > userAt, `${where}: USER before CMD`);
    const user = runtime[userAt].args.split(":")[0];
    assert.ok(!["root", "0"].includes(user), `${where}: USER ${user} is not root`);
    assert.ok(!runtime.some((i) => i.op === "ENTRYPOINT"), `${where}: no ENTRYPOINT overrides CMD`);
    const cmd = JSON.parse(runtime[cmdAt].args) as string[];
    assert.ok(Array.isArray(cmd), `${where}: exec-form CMD`);
    assert.equal(cmd[0], "node", where);
    assert.equal(cmd[cmd.length - 1], `dist/modules/${name}/src/main.js`, `${where}: entry point`);
    const exposes = runtime.filter((i) => i.op === "EXPOSE").map((i) => i.args);
    if (platform.endsWith(".debug")) {
      assert.ok(cmd.includes("--inspect=0.0.0.0:9229"), `${where}: inspector`);
      assert.deepEqual(exposes, ["9229", "9600"], where);
    } else {
      assert.ok(!cmd.some((a) => a.startsWith("--inspect")), `${where}: no inspector in release images`);
      // Prometheus /metrics (modules/shared/metrics.ts METRICS_PORT; docs/metrics.md)
      assert.deepEqual(exposes, ["9600"], where);
    }
  }
});

test("Dockerfiles: update-queue compiles better-sqlite3 and owns its queue volume, quantizer its residuals; trainer has /data", () => {
  const manifest = render(baseTemplateFile);
  const envValue = (name: string, key: string) =>
    obj(obj(obj(modulesOf(manifest)[name], name).env, "env")[key], key).value as string;
  const queueDir = envValue("update-queue", "FLOTILLA_QUEUE_DIR");
  const dataDir = envValue("trainer", "FLOTILLA_DATA_DIR");
  const quantizerDir = envValue("quantizer", "FLOTILLA_QUANTIZER_DIR");
  for (const { name, platform, stages } of dockerfiles()) {
    const where = `${name} ${platform}`;
    const build = stages.find((s) => / AS build$/i.test(s[0].args)) ?? [];
    const buildRuns = build
      .filter((i) => i.op === "RUN")
      .map((i) => i.args)
      .join(" && ");
    const runtimeRuns = stages[stages.length - 1]
      .filter((i) => i.op === "RUN")
      .map((i) => i.args)
      .join(" && ");
    if (name === "update-queue") {
      assert.match(
        buildRuns,
        /apt-get install [^&]*\bpython3\b[^&]*\bmake\b[^&]*\bg\+\+/,
        `${where}: node-gyp toolchain`,
      );
      assert.match(
        buildRuns,
        /npm rebuild better-sqlite3\b/,
        `${where}: better-sqlite3 built for the platform`,
      );
      assert.ok(runtimeRuns.includes(`mkdir -p ${queueDir}`), `${where}: creates ${queueDir}`);
      assert.ok(runtimeRuns.includes(`chown node:node ${queueDir}`), `${where}: ${queueDir} owned by node`);
    }
    if (name === "trainer")
      assert.ok(runtimeRuns.includes(`mkdir -p ${dataDir}`), `${where}: creates ${dataDir}`);
    if (name === "quantizer") {
      assert.ok(runtimeRuns.includes(`mkdir -p ${quantizerDir}`), `${where}: creates ${quantizerDir}`);
      assert.ok(
        runtimeRuns.includes(`chown node:node ${quantizerDir}`),
        `${where}: ${quantizerDir} owned by node`,
      );
      assert.doesNotMatch(buildRuns, /better-sqlite3/, `${where}: no native build`);
    }
  }
});

/** Relative imports of a TypeScript file, resolved to files. */
function localImports(file: string): string[] {
  const text = fs.readFileSync(file, "utf8");
  const specs = [
    ...text.matchAll(/(?:\bfrom\s+|\bimport\s*\(\s*|\brequire\s*\(\s*|^\s*import\s+)["']([^"']+)["']/gm),
  ].map((m) => m[1]);
  const resolved: string[] = [];
  for (const spec of specs.filter((s) => s.startsWith("."))) {
    const base = path.resolve(path.dirname(file), spec);
    const candidates = [base, `${base}.ts`, base.replace(/\.js$/, ".ts"), path.join(base, "index.ts")];
    const hit = candidates.find((c) => fs.existsSync(c) && fs.statSync(c).isFile());
    assert.ok(hit, `${path.relative(repoRoot, file)} imports ${spec}, which does not exist`);
    resolved.push(hit);
  }
  return resolved;
}

test(
  "each module's sources live in folders its Dockerfiles copy into the build",
  withContext(async (t) => {
    for (const name of MODULES) {
      const entry = path.join(repoRoot, "modules", name, "src", "main.ts");
      await t.test(name, () => {
        assert.ok(fs.existsSync(entry), `modules/${name}/src/main.ts is missing`);
        const seen = new Set<string>([entry]);
        const queue = [entry];
        while (queue.length > 0) {
          for (const next of localImports(queue.pop() as string)) {
            if (seen.has(next)) continue;
            seen.add(next);
            queue.push(next);
          }
        }
        for (const { platform, stages } of dockerfiles().filter((d) => d.name === name)) {
          const build = stages.find((s) => / AS build$/i.test(s[0].args)) ?? [];
          const copied = build
            .filter((i) => i.op === "COPY" && !i.args.startsWith("--from"))
            .flatMap((i) => i.args.split(" ").slice(0, -1));
          for (const file of seen) {
            const rel = path.relative(repoRoot, file);
            assert.ok(
              copied.some((src) => rel === src || rel.startsWith(`${src}/`)),
              `${name} ${platform}: ${rel} is imported but the Dockerfile does not copy it`,
            );
          }
        }
      });
    }
  }),
);

test(".dockerignore sends the daemon every path the Dockerfiles COPY from the build context", () => {
  // The context is the repository root and .dockerignore excludes everything ("*") but what it re-includes
  // ("!path"): a folder a Dockerfile copies but .dockerignore does not re-include is silently empty in the build.
  const lines = fs
    .readFileSync(path.join(repoRoot, ".dockerignore"), "utf8")
    .split("\n")
    .map((l) => l.trim())
    .filter((l) => l !== "" && !l.startsWith("#"));
  assert.ok(lines.includes("*"), ".dockerignore excludes everything by default");
  for (const { name, platform, stages } of dockerfiles()) {
    const build = stages.find((s) => / AS build$/i.test(s[0].args)) ?? [];
    for (const copy of build.filter((i) => i.op === "COPY" && !i.args.startsWith("--from"))) {
      for (const src of copy.args.split(" ").slice(0, -1)) {
        assert.ok(
          lines.includes(`!${src}`),
          `${name} ${platform}: COPY ${src}, but .dockerignore does not list !${src}`,
        );
      }
    }
  }
});
