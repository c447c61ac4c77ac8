import type { Dataset } from "../data/dataset";
import type { LocalModel } from "../engine/types";
import { isFlotillaError } from "../errors";
import { decodeMessage, encodeMessage, type DeviceMessage, type TrainRequest } from "../protocol/messages";
import { weightsHash } from "../tensor/layout";

export interface DeviceProgress {
  (deviceId: string, samplesDone: number, samplesTotal: number): void;
}

/**
 * A device's side of a round: takes a train request frame, checks it, trains the local model on the local data
 * starting from the global weights, and answers with a result frame carrying the delta (or a failure frame with a
 * code and a reason: a device never throws at the server). The edge trainer module runs the same code.
 */
export class DeviceRuntime {
  constructor(
    readonly deviceId: string,
    private readonly data: Dataset,
    private readonly model: LocalModel,
    private readonly onProgress?: DeviceProgress,
  ) {}

  get numSamples(): number {
    return this.data.n;
  }

  async handle(frame: Uint8Array): Promise<Uint8Array> {
    let req: TrainRequest | undefined;
    try {
      const msg = decodeMessage(frame);
      if (msg.type !== "train") {
        throw Object.assign(new Error(`device got a '${msg.type}' message`), { code: "E_PROTO_TYPE" });
      }
      req = msg;
      return encodeMessage(await this.train(req));
    } catch (e) {
      const failure: DeviceMessage = {
        type: "failure",
        jobId: req?.jobId ?? "",
        round: req?.round ?? 0,
        deviceId: this.deviceId,
        code: isFlotillaError(e) ? e.code : ((e as { code?: string }).code ?? "E_DEVICE_INTERNAL"),
        reason: e instanceof Error ? e.message : String(e),
      };
      return encodeMessage(failure);
    }
  }

  private async train(req: TrainRequest): Promise<DeviceMessage> {
    if (req.layoutHash !== this.model.layout.hash) {
      throw Object.assign(new Error("the round's model layout differs from this device's model"), {
        code: "E_MODEL_LAYOUT",
      });
    }
    if (weightsHash(req.weights) !== req.modelHash) {
      throw Object.assign(new Error("global model does not match its sha256"), { code: "E_MODEL_HASH" });
    }
    const global = req.weights;
    this.model.setWeights(global);
    const summary = await this.model.train(this.data, {
      epochs: req.config.epochs,
      batchSize: req.config.batchSize,
      lr: req.config.lr,
      mu: req.config.mu,
      seed: req.config.seed,
      onProgress: this.onProgress ? (d, t) => this.onProgress?.(this.deviceId, d, t) : undefined,
    });
    const delta = this.model.getWeights();
    for (let i = 0; i < delta.length; i++) delta[i] -= global[i];
    return {
      type: "result",
      jobId: req.jobId,
      round: req.round,
      deviceId: this.deviceId,
      layoutHash: this.model.layout.hash,
      numSamples: this.data.n,
      metrics: { loss: summary.loss, accuracy: summary.accuracy, trainMs: summary.ms },
      delta,
    };
  }
}
