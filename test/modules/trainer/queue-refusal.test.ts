import { test } from "@jest/globals";
import { withContext } from "../../helpers/context";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { EventEmitter } from "node:events";
import type { Message } from "azure-iot-device";
import type { ModelSpec } from "../../../core/engine/model-spec";
import { countParams, modelLayout } from "../../../core/engine/models";
import type { MethodRequestLike, MethodResponseLike, TwinLike } from "../../../modules/shared/module-client";
import type { TrainExecutor } from "../../../modules/trainer/src/executor";
import { startTrainer } from "../../../modules/trainer/src/trainer";

/**
 * The trainer's side of a refused store (modules/update-queue/src/main.ts, holdRefused): its own output succeeded
 * (edgeHub took the message), so it learns of the refusal only through the update-queue's module-to-module direct
 * methods `updateNotStored` / `updateStored`, and reports it in its state.
 */

const SPEC: ModelSpec = { kind: "mlp", inputShape: [4], numClasses: 2, hidden: [8] };

class Twin extends EventEmitter {
  readonly patches: Record<string, unknown>[] = [];
  properties = {
    desired: {} as Record<string, unknown>,
    reported: {
      update: (patch: Record<string, unknown>, done: (err?: Error) => void) => {
        this.patches.push(patch);
        setImmediate(() => done());
      },
    } as Record<string, unknown>,
  };
}

class Client extends EventEmitter {
  readonly outputs: Message[] = [];
  readonly methods = new Map<string, (req?: MethodRequestLike, res?: MethodResponseLike) => void>();
  readonly twin = new Twin();
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
  invoke(name: string, payload: unknown): Promise<{ status: number; payload: unknown }> {
    const handler = this.methods.get(name);
    if (!handler) return Promise.resolve({ status: 404, payload: null });
    return new Promise((resolve) =>
      handler({ payload }, { send: async (status, body) => resolve({ status, payload: body }) }),
    );
  }
}

const executor: TrainExecutor = {
  run: async (job) => ({
    delta: new Float32Array(job.weights.length).fill(0.01),
    numSamples: 10,
    metrics: { loss: 0.5, accuracy: 0.5, trainMs: 1 },
  }),
};

test(
  "the trainer reports an update the update-queue could not store, and clears it once stored",
  withContext(async (t) => {
    const weights = new Uint8Array(countParams(SPEC) * 4);
    const modelSha256 = createHash("sha256").update(weights).digest("hex");
    const client = new Client();
    const logged: string[] = [];
    const trainer = await startTrainer({
      client,
      deviceId: "dev-1",
      trainExecutor: executor,
      inference: "off",
      fetch: async () => ({ ok: true, status: 200, arrayBuffer: async () => weights.buffer.slice(0) }),
      log: (level, message) => logged.push(`${level} ${message}`),
    });
    t.after(() => trainer.stop());
    assert.ok(
      trainer.startRound({
        jobId: "job-1",
        round: 1,
        modelUrl: "http://blob.local/model.f32",
        modelSha256,
        layoutHash: modelLayout(SPEC).hash,
        modelSpec: SPEC,
        config: { epochs: 1, batchSize: 4, lr: 0.1, seed: 1 },
        deadline: 0,
      }),
    );
    await trainer.idle();
    const { status, updateId } = trainer.state();
    assert.equal(status, "done");
    assert.ok(updateId);

    // Another update's refusal is logged but does not touch this round's state.
    assert.deepEqual(
      await client.invoke("updateNotStored", {
        updateId: "someone-else",
        code: "E_QUEUE_DISK_FULL",
        message: "x",
      }),
      { status: 200, payload: { known: false } },
    );
    assert.equal(trainer.state().status, "done");

    const refusal = {
      updateId,
      jobId: "job-1",
      round: 1,
      code: "E_QUEUE_DISK_FULL",
      message: "enqueueing update: the disk is full",
      held: true,
    };
    assert.deepEqual(await client.invoke("updateNotStored", refusal), {
      status: 200,
      payload: { known: true },
    });
    const s = trainer.state();
    assert.equal(s.status, "error");
    assert.equal(s.error?.code, "E_QUEUE_DISK_FULL");
    assert.match(s.error?.message ?? "", /update-queue could not store it \(held in memory and retried\)/);
    assert.ok(logged.some((l) => l.startsWith("error ") && l.includes(updateId)));
    await trainer.idle();
    assert.ok(
      client.twin.patches.some(
        (p) => (p.flotilla as { error?: { code?: string } } | undefined)?.error?.code === "E_QUEUE_DISK_FULL",
      ),
      "reported to the cloud",
    );

    assert.deepEqual(await client.invoke("updateStored", { updateId }), {
      status: 200,
      payload: { known: true },
    });
    assert.equal(trainer.state().status, "done");
    assert.equal(trainer.state().error, null);
  }),
);
