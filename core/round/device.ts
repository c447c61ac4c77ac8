import { createHash } from "node:crypto";
import { decodeTensor, ErrorFeedback, parseCompression } from "../compress";
import type { Dataset } from "../data/dataset";
import type { LocalModel } from "../engine/types";
import { isFlotillaError } from "../errors";
import {
  decodeMessage,
  encodeMessage,
  type DeviceMessage,
  type TrainRequest,
  type TrainResultMessage,
} from "../protocol/messages";
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
  /** Error-feedback residuals by job (uplink sparsification). */
  private readonly residuals = new Map<string, ErrorFeedback>();

  constructor(
    readonly deviceId: string,
    private readonly data: Dataset,
    private readonly model: LocalModel,
    private readonly onProgress?: DeviceProgress,
  ) {}

  /**
   * The device's carried state (its error-feedback residuals) as bytes, so a simulator can move a device between
   * worker threads; `importState` restores it. Undefined when there is none.
   */
  exportState(): Uint8Array | undefined {
    if (this.residuals.size === 0) return undefined;
    const parts: Uint8Array[] = [];
    for (const [jobId, ef] of this.residuals) {
      const id = Buffer.from(jobId, "utf8");
      const body = ef.toBytes();
      const head = Buffer.alloc(8);
      head.writeUInt32LE(id.length, 0);
      head.writeUInt32LE(body.length, 4);
      parts.push(head, id, body);
    }
    return Buffer.concat(parts);
  }

  importState(state: Uint8Array | undefined): void {
    this.residuals.clear();
    if (!state) return;
    const b = Buffer.from(state.buffer, state.byteOffset, state.byteLength);
    for (let o = 0; o + 8 <= b.length;) {
      const idLen = b.readUInt32LE(o);
      const bodyLen = b.readUInt32LE(o + 4);
      const jobId = b.toString("utf8", o + 8, o + 8 + idLen);
      const body = b.subarray(o + 8 + idLen, o + 8 + idLen + bodyLen);
      this.residuals.set(jobId, ErrorFeedback.fromBytes(body, this.model.numParams));
      o += 8 + idLen + bodyLen;
    }
  }

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
    const carried = req.weights;
    const hash =
      carried instanceof Float32Array
        ? weightsHash(carried)
        : createHash("sha256").update(carried.bytes).digest("hex");
    if (hash !== req.modelHash) {
      throw Object.assign(new Error("global model does not match its sha256"), { code: "E_MODEL_HASH" });
    }
    // A compressed global model (downlink codec) is decoded once; training starts from what was received and
    // the delta is taken against it.
    const global =
      carried instanceof Float32Array
        ? carried
        : decodeTensor(carried.bytes, { layoutHash: this.model.layout.hash, length: this.model.numParams });
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
      ...this.resultHeader(req, summary),
      delta: req.uplink ? { encoding: "flz", bytes: this.compress(req, delta) } : delta,
    };
  }

  /**
   * The uplink codec, as the quantizer module applies it on a real device: with a sparsifier, the part of the
   * update that was not sent stays in this device's error-feedback residual for its next round of the job
   * (Stich et al. 2018, "Sparsified SGD with Memory").
   */
  private compress(req: TrainRequest, delta: Float32Array): Uint8Array {
    const spec = parseCompression(req.uplink ?? "none");
    let ef = this.residuals.get(req.jobId);
    if (!ef || ef.residual.length !== delta.length) {
      ef = new ErrorFeedback(delta.length);
      this.residuals.set(req.jobId, ef);
    }
    const seed = createHash("sha256")
      .update(`${this.deviceId}/${req.jobId}/${req.round}`)
      .digest()
      .readUInt32LE(0);
    return ef.compress(delta, spec, {
      layoutHash: this.model.layout.hash,
      segments: this.model.layout.entries.map((e) => e.size),
      seed,
    });
  }

  private resultHeader(
    req: TrainRequest,
    summary: { loss: number; accuracy: number; ms: number },
  ): Omit<TrainResultMessage, "delta"> {
    return {
      type: "result",
      jobId: req.jobId,
      round: req.round,
      deviceId: this.deviceId,
      layoutHash: this.model.layout.hash,
      numSamples: this.data.n,
      metrics: { loss: summary.loss, accuracy: summary.accuracy, trainMs: summary.ms },
    };
  }
}
