import { test } from "@jest/globals";
import { withContext } from "../../helpers/context";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { EventEmitter } from "node:events";
import {
  chmodSync,
  existsSync,
  mkdirSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  writeFileSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import type { Message } from "azure-iot-device";
import type { ModelSpec } from "../../../core/engine/model-spec";
import { countParams, initialWeights, modelLayout } from "../../../core/engine/models";
import { decodeMessage } from "../../../core/protocol/messages";
import { isWritableAck, type WritableAck } from "../../../modules/shared/pnp";
import type { MethodRequestLike, MethodResponseLike, TwinLike } from "../../../modules/shared/module-client";
import {
  InProcessTrainExecutor,
  resolveData,
  type TrainExecutor,
  type TrainJob,
} from "../../../modules/trainer/src/executor";
import { REPORTED_KEYS, parseDataDir, parseDataSchema } from "../../../modules/trainer/src/model";
import { loadTrainerConfig, trainingThreads } from "../../../modules/trainer/src/main";
import { startTrainer, type TrainerHandle, type TrainerOptions } from "../../../modules/trainer/src/trainer";

/**
 * The trainer's writable properties (modules/trainer/src/model.ts, modules/shared/writable.ts): each one applied
 * and acked 200, refused 400 with the reason and the last good value kept, held 202 during a round and applied at
 * its end, restored from the reported acks after a restart; the device policy judged on the device (participation,
 * orders declined with E_POLICY_EXCLUDED), the training-time cap, the data directory and schema, and the retention
 * of per-round artefacts. A fake module client (its twin merges desired patches with a $version and reported
 * patches as the hub does); training through fake executors, or the real one with an injected clock.
 */

const SPEC: ModelSpec = { kind: "mlp", inputShape: [4], numClasses: 2, hidden: [8] };

/** Reported patches merge as the hub merges them: objects recursively, null deletes. */
function merge(into: Record<string, unknown>, patch: Record<string, unknown>): void {
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete into[k];
    else if (typeof v === "object" && !Array.isArray(v)) {
      const cur = into[k];
      const obj =
        typeof cur === "object" && cur !== null && !Array.isArray(cur)
          ? (cur as Record<string, unknown>)
          : {};
      merge(obj, v as Record<string, unknown>);
      into[k] = obj;
    } else into[k] = v;
  }
}

class Twin extends EventEmitter {
  readonly patches: Record<string, unknown>[] = [];
  readonly state: Record<string, unknown> = {};
  properties = {
    desired: { $version: 1 } as Record<string, unknown>,
    reported: {} as Record<string, unknown>,
  };
  constructor() {
    super();
    this.resetReported();
  }
  /** The reported document as a new twin GET returns it (its values, and `update`). */
  resetReported(): void {
    const r: Record<string, unknown> = JSON.parse(JSON.stringify(this.state)) as Record<string, unknown>;
    r.update = (patch: Record<string, unknown>, done: (err?: Error) => void) => {
      this.patches.push(patch);
      merge(this.state, JSON.parse(JSON.stringify(patch)) as Record<string, unknown>);
      setImmediate(() => done());
    };
    this.properties.reported = r;
  }
  /** An operator's desired patch: merged, versioned, and sent to the module as the hub does. */
  desire(patch: Record<string, unknown>): number {
    const v = (this.properties.desired.$version as number) + 1;
    const d = { ...this.properties.desired };
    for (const [k, x] of Object.entries(patch)) {
      if (x === null) delete d[k];
      else d[k] = x;
    }
    d.$version = v;
    this.properties.desired = d;
    this.emit("properties.desired", { ...patch, $version: v });
    return v;
  }
  ack(name: string): WritableAck | undefined {
    const a = this.state[name];
    return isWritableAck(a) ? a : undefined;
  }
}

class Client extends EventEmitter {
  readonly outputs: Message[] = [];
  readonly methods = new Map<string, (req?: MethodRequestLike, res?: MethodResponseLike) => void>();
  constructor(readonly twin = new Twin()) {
    super();
  }
  async open(): Promise<unknown> {
    return {};
  }
  async close(): Promise<unknown> {
    return {};
  }
  async sendOutputEvent(_output: string, msg: Message): Promise<unknown> {
    this.outputs.push(msg);
    return {};
  }
  async getTwin(): Promise<TwinLike> {
    return this.twin as unknown as TwinLike;
  }
  onMethod(name: string, cb: (req?: MethodRequestLike, res?: MethodResponseLike) => void): void {
    this.methods.set(name, cb);
  }
  invoke(name: string, payload: unknown): Promise<{ status: number; payload: Record<string, unknown> }> {
    const handler = this.methods.get(name);
    if (!handler) return Promise.resolve({ status: 404, payload: {} });
    return new Promise((resolve) =>
      handler(
        { payload },
        { send: async (status, body) => resolve({ status, payload: body as Record<string, unknown> }) },
      ),
    );
  }
  /** The frames sent on the updates output (one chunk each here: small models). */
  frames(): ReturnType<typeof decodeMessage>[] {
    return this.outputs.map((m) => decodeMessage(new Uint8Array(m.data as Buffer)));
  }
}

/** A training gate: jobs wait until `release()`. */
class GatedExecutor implements TrainExecutor {
  readonly jobs: TrainJob[] = [];
  private gate: { promise: Promise<void>; open: () => void } | undefined;
  hold(): void {
    let open!: () => void;
    const promise = new Promise<void>((r) => (open = r));
    this.gate = { promise, open };
  }
  release(): void {
    this.gate?.open();
    this.gate = undefined;
  }
  async run(job: TrainJob) {
    this.jobs.push(job);
    await this.gate?.promise;
    return {
      delta: new Float32Array(job.weights.length).fill(0.01),
      numSamples: 10,
      metrics: { loss: 0.5, accuracy: 0.5, trainMs: 1 },
    };
  }
}

const WEIGHTS = new Uint8Array(countParams(SPEC) * 4);
const SHA = createHash("sha256").update(WEIGHTS).digest("hex");

function order(round: number, jobId = "job-1"): Record<string, unknown> {
  return {
    jobId,
    round,
    modelUrl: "http://blob.local/model.f32",
    modelSha256: SHA,
    layoutHash: modelLayout(SPEC).hash,
    modelSpec: SPEC,
    config: { epochs: 2, batchSize: 4, lr: 0.1, seed: 1 },
    deadline: 0,
  };
}

function dataDir(rows = 12): string {
  const dir = mkdtempSync(join(tmpdir(), "flotilla-props-"));
  const lines = ["a,b,c,d,label"];
  for (let i = 0; i < rows; i++) lines.push(`${(i % 3) / 3},${i / 12},${(i * 7) % 5},${i % 2},${i % 2}`);
  writeFileSync(join(dir, "local.csv"), lines.join("\n") + "\n");
  return dir;
}

async function start(
  client: Client,
  over: Partial<TrainerOptions> = {},
): Promise<{ trainer: TrainerHandle; logs: string[] }> {
  const logs: string[] = [];
  const trainer = await startTrainer({
    client,
    deviceId: "dev-1",
    inference: "off",
    fetch: async () => ({ ok: true, status: 200, arrayBuffer: async () => WEIGHTS.buffer.slice(0) }),
    log: (level, message) => logs.push(`${level} ${message}`),
    ...over,
  });
  return { trainer, logs };
}

/** Lets the twin patches and acks go out. */
async function settle(trainer: TrainerHandle): Promise<void> {
  await trainer.idle();
  for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
}

test(
  "trainer properties: valid values applied and acked 200; wrong type, out of range and unknown keys refused 400 with the last good value",
  withContext(async (t) => {
    const dir = dataDir();
    const other = dataDir();
    t.after(() => [dir, other].forEach((d) => rmSync(d, { recursive: true, force: true })));
    const client = new Client();
    const { trainer } = await start(client, { dataDir: dir, trainExecutor: new GatedExecutor() });
    t.after(() => trainer.stop());
    const twin = client.twin;

    const valid: Record<string, unknown> = {
      enabled: true,
      maxTrainingMinutes: 12.5,
      maxThreads: 2,
      minFreeDiskBytes: 1024,
      minFreeMemoryBytes: 2048,
      trainingWindows: { timeZone: "Europe/Berlin", windows: ["00:00-23:59"] },
      dataDir: other,
      dataSchema: '{"label": "label"}',
      artifactRetentionHours: 48,
    };
    const v1 = twin.desire(valid);
    await settle(trainer);
    for (const [name, value] of Object.entries(valid))
      assert.deepEqual(twin.ack(name), { value, ac: 200, av: v1 }, name);
    assert.deepEqual(trainer.properties(), valid);
    // The Function's own keys are never acked; the module's reported keys are not writable.
    assert.equal(twin.ack("flotilla"), undefined);
    assert.deepEqual([...REPORTED_KEYS], ["flotilla", "participation"]);

    const bad: [string, unknown, RegExp][] = [
      ["enabled", "no", /enabled must be true or false/],
      ["maxTrainingMinutes", "ten", /maxTrainingMinutes must be a number from 0 to 1440/],
      ["maxTrainingMinutes", 1441, /out of range \(0 to 1440\)/],
      ["maxThreads", 2.5, /maxThreads must be an integer/],
      ["maxThreads", 65, /out of range \(0 to 64\)/],
      ["minFreeDiskBytes", -1, /out of range/],
      ["minFreeMemoryBytes", "1GB", /must be an integer/],
      ["trainingWindows", { timeZone: "Mars/Olympus", windows: ["22:00-06:00"] }, /not an IANA time zone/],
      ["trainingWindows", { timeZone: "UTC", windows: ["25:00-06:00"] }, /trainingWindows.windows/],
      ["dataDir", "relative/dir", /not an absolute path/],
      ["dataDir", join(dir, "missing"), /does not exist/],
      ["dataDir", join(dir, "local.csv"), /is not a directory/],
      ["dataDir", 42, /absolute directory path/],
      ["dataSchema", "{not json", /not valid JSON/],
      ["dataSchema", '{"task": "dance"}', /E_DATA_SCHEMA.*task/],
      ["dataSchema", join(dir, "nope.json"), /cannot read the data schema/],
      ["dataSchema", "schema.json", /neither JSON text nor an absolute/],
      ["artifactRetentionHours", 9000, /out of range \(0 to 8760\)/],
    ];
    for (const [name, value, why] of bad) {
      const v = twin.desire({ [name]: value });
      await settle(trainer);
      const ack = twin.ack(name);
      assert.equal(ack?.ac, 400, `${name} = ${JSON.stringify(value)}`);
      assert.equal(ack?.av, v);
      assert.deepEqual(ack?.value, valid[name], `${name}: the last good value stays`);
      assert.match(ack?.ad ?? "", /^E_PROPERTY_INVALID: /);
      assert.match(ack?.ad ?? "", why, `${name}: ${ack?.ad}`);
      assert.doesNotMatch(ack?.ad ?? "", /\n/, "one line");
    }
    assert.deepEqual(trainer.properties(), valid, "nothing refused replaced a good value");

    // An unknown key is refused; a participation written as desired is ignored (it is the module's own report).
    const v2 = twin.desire({ maxTrianingMinutes: 5, participation: { state: "enabled" } });
    await settle(trainer);
    // (Its ack's value is null, which the twin drops: the hub deletes null members of a reported patch.)
    const unknown = twin.state.maxTrianingMinutes as Partial<WritableAck> | undefined;
    assert.equal(unknown?.ac, 400);
    assert.equal(unknown?.av, v2);
    assert.match(unknown?.ad ?? "", /E_PROPERTY_UNKNOWN: unknown property 'maxTrianingMinutes'/);
    assert.equal((twin.state.participation as { state: string }).state, "enabled");
    assert.equal(isWritableAck(twin.state.participation), false);

    // null: back to the default (the data directory the module was started with).
    const v3 = twin.desire({ dataDir: null, maxThreads: null });
    await settle(trainer);
    assert.deepEqual(twin.ack("maxThreads"), { value: 0, ac: 200, av: v3 });
    assert.equal(trainer.properties().dataDir, dir);
  }),
);

test(
  "trainer properties: a next-round change during a round is acked 202 and applies (200) when the round ends",
  withContext(async (t) => {
    const dir = dataDir();
    const other = dataDir();
    t.after(() => [dir, other].forEach((d) => rmSync(d, { recursive: true, force: true })));
    const client = new Client();
    const executor = new GatedExecutor();
    const threads: number[] = [];
    const { trainer } = await start(client, {
      dataDir: dir,
      trainExecutor: executor,
      onMaxThreads: (n) => threads.push(n),
    });
    t.after(() => trainer.stop());
    const twin = client.twin;

    executor.hold();
    assert.equal((await client.invoke("startRound", order(1))).status, 200);
    for (let i = 0; i < 50 && executor.jobs.length === 0; i++) await new Promise((r) => setImmediate(r));
    assert.equal(executor.jobs.length, 1, "the round is training");
    assert.equal(executor.jobs[0].data.kind === "dir" && executor.jobs[0].data.dir, dir);

    const v = twin.desire({ dataDir: other, maxThreads: 3, maxTrainingMinutes: 7, minFreeDiskBytes: 5 });
    for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
    assert.deepEqual(twin.ack("dataDir"), {
      value: other,
      ac: 202,
      av: v,
      ad: "applies when the running round ends",
    });
    assert.equal(twin.ack("maxThreads")?.ac, 202);
    assert.equal(twin.ack("maxTrainingMinutes")?.ac, 202);
    // A property that applies at once does so during the round too.
    assert.deepEqual(twin.ack("minFreeDiskBytes"), { value: 5, ac: 200, av: v });
    assert.equal(trainer.properties().dataDir, dir, "not yet: the running round reads the old one");
    assert.deepEqual(threads, []);

    executor.release();
    await settle(trainer);
    assert.equal(trainer.state().status, "done");
    assert.deepEqual(twin.ack("dataDir"), { value: other, ac: 200, av: v });
    assert.deepEqual(twin.ack("maxThreads"), { value: 3, ac: 200, av: v });
    assert.deepEqual(twin.ack("maxTrainingMinutes"), { value: 7, ac: 200, av: v });
    assert.deepEqual(threads, [3], "the thread setting is handed on when it takes effect");

    // The next round reads the new directory, with the cap.
    assert.equal((await client.invoke("startRound", order(2))).status, 200);
    await settle(trainer);
    const job = executor.jobs[1];
    assert.equal(job.data.kind === "dir" && job.data.dir, other);
    assert.equal(job.maxTrainMs, 7 * 60_000);
  }),
);

test(
  "trainer properties: after a restart the last good values stand when desired is invalid, and absent ones go back to defaults",
  withContext(async (t) => {
    const dir = dataDir();
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const twin = new Twin();
    const first = await start(new Client(twin), { dataDir: dir, trainExecutor: new GatedExecutor() });
    const v1 = twin.desire({ maxThreads: 4, enabled: false, artifactRetentionHours: 2 });
    await settle(first.trainer);
    assert.deepEqual(twin.ack("maxThreads"), { value: 4, ac: 200, av: v1 });
    await first.trainer.stop();

    // While the module is down the operator sets an invalid value and removes another.
    twin.properties.desired = { ...twin.properties.desired, maxThreads: "lots", $version: v1 + 1 };
    delete twin.properties.desired.artifactRetentionHours;
    twin.resetReported();
    const second = await start(new Client(twin), { dataDir: dir, trainExecutor: new GatedExecutor() });
    t.after(() => second.trainer.stop());
    await settle(second.trainer);
    const ack = twin.ack("maxThreads");
    assert.equal(ack?.ac, 400);
    assert.equal(ack?.value, 4, "the last good value, read back from the reported ack");
    assert.equal(ack?.av, v1 + 1);
    assert.equal(second.trainer.properties().maxThreads, 4);
    assert.equal(second.trainer.properties().enabled, false, "unchanged values stay too");
    assert.equal(second.trainer.properties().artifactRetentionHours, 24, "absent: the default");
    assert.equal(twin.ack("artifactRetentionHours")?.value, 24);
    assert.equal(second.trainer.participation().state, "disabled");
  }),
);

test(
  "a disabled trainer declines every order with E_POLICY_EXCLUDED (method and desired), reports why, and finishes a running round",
  withContext(async (t) => {
    const dir = dataDir();
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const client = new Client();
    const executor = new GatedExecutor();
    const { trainer, logs } = await start(client, { dataDir: dir, trainExecutor: executor });
    t.after(() => trainer.stop());
    const twin = client.twin;
    await settle(trainer);
    assert.deepEqual(twin.state.participation, {
      state: "enabled",
      reason: "the policy allows training now",
    });

    // A round runs; the operator disables the device: the round finishes and its update goes out.
    executor.hold();
    assert.equal((await client.invoke("startRound", order(1))).status, 200);
    for (let i = 0; i < 50 && executor.jobs.length === 0; i++) await new Promise((r) => setImmediate(r));
    const v = twin.desire({ enabled: false });
    for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r));
    assert.deepEqual(twin.ack("enabled"), { value: false, ac: 200, av: v });
    assert.deepEqual(twin.state.participation, {
      state: "disabled",
      reason: "participation is disabled by the operator",
    });
    // An order meanwhile is declined without disturbing the running round.
    const during = await client.invoke("startRound", order(1, "job-2"));
    assert.equal(during.status, 403);
    assert.equal(during.payload.code, "E_POLICY_EXCLUDED");
    assert.equal(trainer.state().status, "training");
    executor.release();
    await settle(trainer);
    assert.equal(trainer.state().status, "done");
    assert.equal(trainer.state().jobId, "job-1");

    // The next order, by method: 403 with the reason; a failure frame tells the Function; the state says it.
    const r = await client.invoke("startRound", order(2));
    assert.deepEqual(r, {
      status: 403,
      payload: {
        accepted: false,
        code: "E_POLICY_EXCLUDED",
        message: "disabled: participation is disabled by the operator",
      },
    });
    await settle(trainer);
    assert.equal(executor.jobs.length, 1, "never trained");
    const failures = client.frames().filter((f) => f.type === "failure");
    assert.deepEqual(
      failures.map((f) => f.type === "failure" && [f.jobId, f.round, f.code, f.reason]),
      [
        ["job-2", 1, "E_POLICY_EXCLUDED", "disabled: participation is disabled by the operator"],
        ["job-1", 2, "E_POLICY_EXCLUDED", "disabled: participation is disabled by the operator"],
      ],
    );
    assert.equal(trainer.state().status, "error");
    assert.equal(trainer.state().error?.code, "E_POLICY_EXCLUDED");
    assert.equal(trainer.state().round, 2);
    assert.ok(
      logs.some((l) => /^warn trainer: round 2 of job-1 from startRound declined: E_POLICY_EXCLUDED/.test(l)),
      logs.join("\n"),
    );
    // The same order again (the desired twin copy of it): declined once, the method answers the same.
    assert.equal((await client.invoke("startRound", order(2))).status, 403);
    twin.desire({ flotilla: order(2) });
    // A desired order is declined too.
    twin.desire({ flotilla: order(3) });
    await settle(trainer);
    assert.equal(executor.jobs.length, 1);
    assert.deepEqual(
      client
        .frames()
        .filter((f) => f.type === "failure")
        .map((f) => f.round),
      [1, 2, 3],
    );

    // Enabled again: participation says so and the next order trains.
    twin.desire({ enabled: true });
    await settle(trainer);
    assert.deepEqual(twin.state.participation, {
      state: "enabled",
      reason: "the policy allows training now",
    });
    assert.equal((await client.invoke("startRound", order(4))).status, 200);
    await settle(trainer);
    assert.equal(executor.jobs.length, 2);
    assert.equal(trainer.state().status, "done");
  }),
);

test(
  "the device judges its own policy at order time: training windows in its time zone, free disk and memory floors",
  withContext(async (t) => {
    const dir = dataDir();
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const client = new Client();
    const executor = new GatedExecutor();
    // 2026-01-15 23:30 UTC = 00:30 in Berlin (UTC+1 in winter).
    let clock = Date.UTC(2026, 0, 15, 23, 30);
    let resources = { freeDiskBytes: 10 * 2 ** 30, freeMemoryBytes: 4 * 2 ** 30 };
    const { trainer } = await start(client, {
      dataDir: dir,
      trainExecutor: executor,
      now: () => clock,
      resources: () => resources,
    });
    t.after(() => trainer.stop());
    const twin = client.twin;

    twin.desire({ trainingWindows: { timeZone: "Europe/Berlin", windows: ["01:00-05:00"] } });
    await settle(trainer);
    assert.deepEqual(trainer.participation(), {
      state: "outside-window",
      reason: "outside its training windows (01:00-05:00 Europe/Berlin)",
    });
    const r = await client.invoke("startRound", order(1));
    assert.equal(r.status, 403);
    assert.match(String(r.payload.message), /^window: outside its training windows/);

    // 00:30 UTC = 01:30 in Berlin: inside; judged again at the next order.
    clock = Date.UTC(2026, 0, 16, 0, 30);
    assert.equal((await client.invoke("startRound", order(2))).status, 200);
    await settle(trainer);
    assert.equal(trainer.participation().state, "enabled");

    // Floors: the figures measured at the order decide.
    twin.desire({ minFreeDiskBytes: 20 * 2 ** 30, minFreeMemoryBytes: 2 ** 30 });
    await settle(trainer);
    assert.equal(trainer.participation().state, "low-disk");
    assert.match(trainer.participation().reason ?? "", /free disk 10240 MiB is below its floor of 20480 MiB/);
    assert.equal((await client.invoke("startRound", order(3))).status, 403);
    resources = { freeDiskBytes: 30 * 2 ** 30, freeMemoryBytes: 2 ** 29 };
    const mem = await client.invoke("startRound", order(4));
    assert.equal(mem.status, 403);
    assert.match(String(mem.payload.message), /^memory: free memory 512 MiB is below its floor of 1024 MiB/);
    assert.equal(trainer.participation().state, "low-memory");
    await settle(trainer);
    assert.equal((twin.state.participation as { state: string }).state, "low-memory");
    resources = { freeDiskBytes: 30 * 2 ** 30, freeMemoryBytes: 2 ** 31 };
    assert.equal((await client.invoke("startRound", order(5))).status, 200);
    await settle(trainer);
    assert.deepEqual(
      executor.jobs.map((j) => j.round),
      [2, 5],
    );
  }),
);

test(
  "the real free-disk and free-memory figures are measured when none are injected (a floor no device meets declines)",
  withContext(async (t) => {
    const dir = dataDir();
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    const client = new Client();
    const { trainer } = await start(client, { dataDir: dir, trainExecutor: new GatedExecutor() });
    t.after(() => trainer.stop());
    client.twin.desire({ minFreeDiskBytes: Number.MAX_SAFE_INTEGER });
    await settle(trainer);
    assert.equal(trainer.participation().state, "low-disk");
    client.twin.desire({ minFreeDiskBytes: 0, minFreeMemoryBytes: Number.MAX_SAFE_INTEGER });
    await settle(trainer);
    assert.equal(trainer.participation().state, "low-memory");
    client.twin.desire({ minFreeDiskBytes: 1, minFreeMemoryBytes: 1 });
    await settle(trainer);
    assert.equal(trainer.participation().state, "enabled");
  }),
);

test(
  "maxTrainingMinutes: training stops after the batch that reaches the cap and the update of the steps done goes out",
  withContext(async (t) => {
    const dir = dataDir(12);
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    // The executor's clock moves a minute each time it is read: the 1-minute cap is reached after the first batch.
    let minutes = 0;
    const executor = new InProcessTrainExecutor(() => minutes++ * 60_000);
    const client = new Client();
    const global = initialWeights(SPEC, 3);
    const blob = new Uint8Array(global.buffer.slice(0));
    const sha = createHash("sha256").update(blob).digest("hex");
    const { trainer, logs } = await start(client, {
      dataDir: dir,
      trainExecutor: executor,
      fetch: async () => ({
        ok: true,
        status: 200,
        arrayBuffer: async () => blob.buffer.slice(0) as ArrayBuffer,
      }),
    });
    t.after(() => trainer.stop());
    client.twin.desire({ maxTrainingMinutes: 1 });
    await settle(trainer);
    assert.equal((await client.invoke("startRound", { ...order(1), modelSha256: sha })).status, 200);
    await settle(trainer);
    assert.equal(trainer.state().status, "done", JSON.stringify(trainer.state().error));
    const result = client.frames().find((f) => f.type === "result");
    assert.ok(result && result.type === "result");
    // One batch of 4 of 12 samples × 2 epochs: the update weighs the 4 samples it was trained on.
    assert.equal(result.numSamples, 4);
    assert.ok(
      (result.delta as Float32Array).some((x) => x !== 0),
      "the steps done are in the update",
    );
    assert.ok(
      logs.some((l) => /training stopped at the 1 min cap after 1 steps \(4 of 24 samples\)/.test(l)),
      logs.join("\n"),
    );

    // Without a cap the same round trains every batch (and weighs the whole dataset).
    client.twin.desire({ maxTrainingMinutes: 0 });
    await settle(trainer);
    assert.equal((await client.invoke("startRound", { ...order(2), modelSha256: sha })).status, 200);
    await settle(trainer);
    const full = client.frames().filter((f) => f.type === "result")[1];
    assert.ok(full && full.type === "result");
    assert.equal(full.numSamples, 12);
  }),
);

test(
  "dataDir and dataSchema: the parsers, and a round reading the directory and inline schema in effect",
  withContext(async (t) => {
    const dir = mkdtempSync(join(tmpdir(), "flotilla-props-schema-"));
    t.after(() => rmSync(dir, { recursive: true, force: true }));
    // Column names the loader does not know without a schema: the label is `y`, features f1..f4.
    const rows = ["f1,f2,f3,f4,y"];
    for (let i = 0; i < 9; i++) rows.push(`${i},${i / 9},${i % 3},${i % 2},${i % 2}`);
    writeFileSync(join(dir, "x.csv"), rows.join("\n") + "\n");
    const schema = { label: "y", features: ["f1", "f2", "f3", "f4"] };
    const schemaFile = join(dir, "other-schema.json");
    writeFileSync(schemaFile, JSON.stringify(schema));

    assert.equal(parseDataDir(dir), dir);
    assert.equal(parseDataSchema(""), "");
    assert.equal(parseDataSchema(schemaFile), schemaFile);
    assert.equal(parseDataSchema(JSON.stringify(schema)), JSON.stringify(schema));
    assert.throws(() => parseDataSchema(JSON.stringify({ label: "y", bogus: 1 })), {
      code: "E_PROPERTY_INVALID",
      message: /bogus: unknown field/,
    });
    if (process.getuid?.() !== 0) {
      const locked = join(dir, "locked");
      mkdirSync(locked);
      chmodSync(locked, 0o000);
      t.after(() => chmodSync(locked, 0o700));
      assert.throws(() => parseDataDir(locked), { message: /is not readable/ });
    }

    const seen: number[] = [];
    const executor: TrainExecutor = {
      run: async (job) => {
        const data = resolveData(job.data, job.spec);
        seen.push(data.n);
        return {
          delta: new Float32Array(job.weights.length).fill(0.01),
          numSamples: data.n,
          metrics: { loss: 0.5, accuracy: 0.5, trainMs: 1 },
        };
      },
    };
    const client = new Client();
    const { trainer } = await start(client, { dataDir: "/nonexistent", trainExecutor: executor });
    t.after(() => trainer.stop());
    // Without the schema the directory cannot be read: the round fails with the loader's error.
    client.twin.desire({ dataDir: dir });
    await settle(trainer);
    assert.equal((await client.invoke("startRound", order(1))).status, 200);
    await settle(trainer);
    assert.equal(trainer.state().status, "error");
    assert.match(trainer.state().error?.code ?? "", /^E_DATA_/);
    // The inline schema, then the schema file.
    client.twin.desire({ dataSchema: JSON.stringify(schema) });
    await settle(trainer);
    assert.equal((await client.invoke("startRound", order(2))).status, 200);
    await settle(trainer);
    assert.equal(trainer.state().status, "done", JSON.stringify(trainer.state().error));
    client.twin.desire({ dataSchema: schemaFile });
    await settle(trainer);
    assert.equal((await client.invoke("startRound", order(3))).status, 200);
    await settle(trainer);
    assert.equal(trainer.state().status, "done");
    assert.deepEqual(seen, [9, 9]);
  }),
);

test(
  "artifactRetentionHours: each round's log and trained local model are kept under the work dir, pruned by age; 0 keeps none",
  withContext(async (t) => {
    const dir = dataDir();
    const workDir = mkdtempSync(join(tmpdir(), "flotilla-props-work-"));
    t.after(() => [dir, workDir].forEach((d) => rmSync(d, { recursive: true, force: true })));
    let clock = Date.UTC(2026, 5, 1, 12, 0);
    const client = new Client();
    const { trainer } = await start(client, {
      dataDir: dir,
      workDir,
      trainExecutor: new GatedExecutor(),
      now: () => clock,
    });
    t.after(() => trainer.stop());
    const rounds = join(workDir, "rounds");
    const kept = () => (existsSync(rounds) ? readdirSync(rounds).sort() : []);
    /** Waits for the artefact writes queued at a round's end. */
    const flush = async () => {
      await settle(trainer);
      for (let i = 0; i < 20; i++) await new Promise((r) => setImmediate(r));
    };

    assert.equal((await client.invoke("startRound", order(1))).status, 200);
    await flush();
    const first = `${Date.UTC(2026, 5, 1, 12, 0)}-job-1-r1`;
    assert.deepEqual(kept(), [first]);
    const log = JSON.parse(readFileSync(join(rounds, first, "round.json"), "utf8")) as Record<
      string,
      unknown
    >;
    assert.equal(log.status, "done");
    assert.equal(log.jobId, "job-1");
    assert.equal(log.numSamples, 10);
    assert.equal(log.modelSha256, SHA);
    assert.deepEqual(log.data, { dir, schema: "" });
    assert.equal(typeof log.updateId, "string");
    // The trained local model: the global (zeros here) plus the update (0.01 everywhere).
    const w = new Float32Array(new Uint8Array(readFileSync(join(rounds, first, "weights.f32"))).buffer);
    assert.equal(w.length, countParams(SPEC));
    assert.ok(w.every((x) => Math.abs(x - 0.01) < 1e-7));

    // A failed round leaves its log (no weights); 25 hours later the first round's artefacts are gone.
    clock += 25 * 3_600_000;
    const failing = { ...order(2), modelSha256: "0".repeat(64) };
    assert.equal((await client.invoke("startRound", failing)).status, 200);
    await flush();
    const second = `${clock}-job-1-r2`;
    assert.deepEqual(kept(), [second]);
    const failed = JSON.parse(readFileSync(join(rounds, second, "round.json"), "utf8")) as {
      status: string;
      error: { code: string };
    };
    assert.equal(failed.status, "error");
    assert.equal(failed.error.code, "E_MODEL_HASH");
    assert.equal(existsSync(join(rounds, second, "weights.f32")), false);
    // Something else in the work dir is never touched.
    writeFileSync(join(rounds, "notes.txt"), "mine");

    // Retention 0: what is kept goes at once, and rounds leave nothing.
    const v = client.twin.desire({ artifactRetentionHours: 0 });
    await flush();
    assert.deepEqual(client.twin.ack("artifactRetentionHours"), { value: 0, ac: 200, av: v });
    assert.deepEqual(kept(), ["notes.txt"]);
    assert.equal((await client.invoke("startRound", order(3))).status, 200);
    await flush();
    assert.equal(trainer.state().status, "done");
    assert.deepEqual(kept(), ["notes.txt"]);
  }),
);

test("maxThreads caps the container's training threads (FLOTILLA_THREADS or its default); FLOTILLA_WORK_DIR is read", () => {
  assert.equal(trainingThreads(4, 0), 4);
  assert.equal(trainingThreads(4, 2), 2);
  assert.equal(trainingThreads(2, 8), 2, "a cap above the setting changes nothing");
  assert.ok(trainingThreads(undefined, 1) === 1);
  assert.ok(trainingThreads(undefined, 0) >= 1);
  const cs = "HostName=h.azure-devices.net;DeviceId=d1;ModuleId=trainer;SharedAccessKey=aGk=";
  assert.equal(
    loadTrainerConfig({ FLOTILLA_CONNECTION_STRING: cs, FLOTILLA_WORK_DIR: "/var/lib/flotilla/work" })
      .workDir,
    "/var/lib/flotilla/work",
  );
  assert.equal(loadTrainerConfig({ FLOTILLA_CONNECTION_STRING: cs }).workDir, undefined);
});
