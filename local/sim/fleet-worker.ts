/**
 * Worker-thread entry: hosts simulated devices. It rebuilds the fleet's data from the config (deterministic), keeps
 * one model on the wasm backend, and trains whichever device a request is addressed to, one request at a time.
 */
import { parentPort, workerData } from "node:worker_threads";
import { initBackend } from "../../core/engine/backend";
import { createModel } from "../../core/engine/models";
import { DeviceRuntime } from "../../core/round/device";
import { deviceName, loadFleetData } from "./data";
import { simThreads } from "./config";
import { simAttack } from "./attacks";
import { poisonFleet } from "./attacks/data";
import { FileKeyProvider } from "../../core/secagg/file-key-provider";
import type { ToWorker, FromWorker, FleetWorkerData } from "./worker-fleet";

async function main(): Promise<void> {
  const port = parentPort;
  if (!port) throw new Error("fleet-worker must run in a worker thread");
  const config = workerData as FleetWorkerData;
  const keys = config.keyDir ? new FileKeyProvider(config.keyDir) : undefined;
  const post = (m: FromWorker, transfer?: ArrayBuffer[]) => port.postMessage(m, transfer);
  try {
    await initBackend({ threads: simThreads(config) });
    // --attack label-flip / backdoor: the attackers' datasets, poisoned as in the main thread (local/sim/attacks).
    const data = poisonFleet(loadFleetData(config), simAttack(config), config);
    const model = await createModel(data.spec, config.seed, { path: config.engine ?? "auto" });
    let lastProgress = 0;
    const runtimes = data.devices.map(
      (d, i) =>
        new DeviceRuntime(
          deviceName(i, config.devices),
          d,
          model,
          (deviceId, done, total) => {
            const now = Date.now();
            if (now - lastProgress >= 100 || done === total) {
              lastProgress = now;
              post({ kind: "progress", deviceId, done, total });
            }
          },
          keys?.signer(deviceName(i, config.devices)),
        ),
    );
    const byName = new Map(runtimes.map((r) => [r.deviceId, r]));
    let queue: Promise<void> = Promise.resolve();
    port.on("message", (m: ToWorker) => {
      if (m.kind !== "train") return;
      queue = queue
        .then(async () => {
          const rt = byName.get(m.deviceId);
          if (!rt) return;
          try {
            rt.importState(m.state);
          } catch {
            rt.importState(undefined); // a damaged residual restarts error feedback from zero
          }
          const reply = await rt.handle(m.frame);
          const state = rt.exportState();
          rt.importState(undefined); // the state lives with the fleet, not in this worker
          const buf = reply.buffer as ArrayBuffer;
          post({ kind: "reply", deviceId: m.deviceId, frame: reply, state }, [buf]);
        })
        .catch((e: unknown) => {
          // Never let one request break the queue (every later request would be silently dropped).
          process.stderr.write(
            `fleet-worker: request for ${m.deviceId} failed: ${e instanceof Error ? e.stack : String(e)}\n`,
          );
        });
    });
    post({
      kind: "ready",
      devices: runtimes.map((r) => ({ deviceId: r.deviceId, numSamples: r.numSamples })),
    });
  } catch (e) {
    post({
      kind: "error",
      message: e instanceof Error ? e.message : String(e),
      code: (e as { code?: string }).code,
    });
  }
}

void main();
