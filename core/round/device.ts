import { createHash } from "node:crypto";
import { decodeTensor, parseCompression } from "../compress";
import { SecAggClient } from "../secagg/client";
import type { IdentitySigner, MaskInputRequest, ShareKeysRequest, UnmaskRequest } from "../secagg/types";
import type { Dataset } from "../data/dataset";
import type { LocalModel } from "../engine/types";
import { FlotillaError, isFlotillaError } from "../errors";
import { GaussianNoise } from "../privacy/mechanism";
import {
  decodeMessage,
  encodeMessage,
  type DeviceMessage,
  type SecAggFrame,
  type TrainRequest,
  type TrainResultMessage,
} from "../protocol/messages";
import { weightsHash } from "../tensor/layout";
import {
  compressUpdate,
  layoutSegments,
  MemoryResidualStore,
  privatizeDelta,
  takeDelta,
  boundDelta,
} from "./update-pipeline";

export interface DeviceProgress {
  (deviceId: string, samplesDone: number, samplesTotal: number): void;
}

/**
 * A device's side of a round: takes a train request frame, checks it, trains the local model on the local data
 * starting from the global weights, and answers with a result frame carrying the delta (or a failure frame with a
 * code and a reason: a device never throws at the server). The edge trainer module runs the same code.
 */
/** A secure-aggregation round in progress on this device: its protocol state and its (unsent) update. */
interface SecAggSessionState {
  readonly client: SecAggClient;
  /** Released once the masked input is sent. */
  update: Float32Array | null;
  readonly numSamples: number;
  readonly metrics: { loss: number; accuracy: number; trainMs: number };
}

/** First word of a device state that carries local BN weights (see DeviceRuntime.exportState). */
const BN_STATE_MARK = 0xffffffff;

export class DeviceRuntime {
  /** Error-feedback residuals by job (uplink sparsification). */
  private readonly residuals = new MemoryResidualStore();
  /** BN policy "local": this device's weights after its last round (only its BN entries are used). */
  private bnLocal: Float32Array | null = null;
  /** Secure-aggregation rounds in progress, by `jobId/round` (in memory only: a restarted device drops out). */
  private readonly secagg = new Map<string, SecAggSessionState>();
  /** Differential-privacy noise (OS CSPRNG). */
  private readonly noise = new GaussianNoise();

  constructor(
    readonly deviceId: string,
    private readonly data: Dataset,
    private readonly model: LocalModel,
    private readonly onProgress?: DeviceProgress,
    /** Signs this device's secure-aggregation key advertisements with its identity key. */
    private readonly signer?: IdentitySigner,
  ) {}

  /**
   * The device's carried state as bytes, so a simulator can move a device between worker threads; `importState`
   * restores it. Undefined when there is none. It holds the error-feedback residuals (uplink sparsification) and,
   * for a model under BN policy "local" (FedBN, graph-spec.ts), the device's own BatchNormalization weights:
   * `u32 0xffffffff, u32 residual bytes, residuals, float32 weights` (a residual record never starts with that
   * word: it is an id length).
   */
  exportState(): Uint8Array | undefined {
    const residuals = this.residuals.toBytes();
    if (!this.bnLocal) return residuals;
    const r = residuals ?? new Uint8Array(0);
    const head = Buffer.alloc(8);
    head.writeUInt32LE(BN_STATE_MARK, 0);
    head.writeUInt32LE(r.length, 4);
    const bn = new Uint8Array(this.bnLocal.buffer, this.bnLocal.byteOffset, this.bnLocal.byteLength);
    return Buffer.concat([head, r, bn]);
  }

  importState(state: Uint8Array | undefined): void {
    this.bnLocal = null;
    if (state && state.length >= 8) {
      const b = Buffer.from(state.buffer, state.byteOffset, state.byteLength);
      if (b.readUInt32LE(0) === BN_STATE_MARK) {
        const rLen = b.readUInt32LE(4);
        const bnBytes = b.subarray(8 + rLen);
        if (bnBytes.length !== this.model.numParams * 4) {
          throw new FlotillaError("E_MODEL_LAYOUT", "the device's local BN state does not fit its model");
        }
        this.bnLocal = new Float32Array(
          bnBytes.buffer.slice(bnBytes.byteOffset, bnBytes.byteOffset + bnBytes.length),
        );
        this.residuals.fromBytes(rLen > 0 ? b.subarray(8, 8 + rLen) : undefined, this.model.numParams);
        return;
      }
    }
    this.residuals.fromBytes(state, this.model.numParams);
  }

  get numSamples(): number {
    return this.data.n;
  }

  async handle(frame: Uint8Array): Promise<Uint8Array> {
    let req: TrainRequest | undefined;
    try {
      const msg = decodeMessage(frame);
      if (msg.type === "secagg" && msg.direction === "down") {
        req = { jobId: msg.jobId, round: msg.round } as TrainRequest;
        return encodeMessage(this.secaggStep(msg));
      }
      if (msg.type !== "train") {
        throw new FlotillaError("E_PROTO_TYPE", `device got a '${msg.type}' message`);
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
    if (req.secagg && !this.signer) {
      throw new FlotillaError(
        "E_SECAGG_NO_KEY",
        "secure aggregation needs an identity key and this device has none",
      );
    }
    if (req.layoutHash !== this.model.layout.hash) {
      throw new FlotillaError("E_MODEL_LAYOUT", "the round's model layout differs from this device's model");
    }
    const carried = req.weights;
    const hash =
      carried instanceof Float32Array
        ? weightsHash(carried)
        : createHash("sha256").update(carried.bytes).digest("hex");
    if (hash !== req.modelHash) {
      throw new FlotillaError("E_MODEL_HASH", "global model does not match its sha256");
    }
    // A compressed global model (downlink codec) is decoded once; training starts from what was received and
    // the delta is taken against it.
    const global =
      carried instanceof Float32Array
        ? carried
        : decodeTensor(carried.bytes, { layoutHash: this.model.layout.hash, length: this.model.numParams });
    this.model.setWeights(global);
    // BN policy "local" (FedBN): this device's own BN weights over the global model's; a device that has not
    // trained yet starts from the global ones (the model may be shared by several simulated devices).
    this.model.restoreLocalState?.(this.bnLocal ?? global);
    const summary = await this.model.train(this.data, {
      epochs: req.config.epochs,
      batchSize: req.config.batchSize,
      lr: req.config.lr,
      mu: req.config.mu,
      ...(req.config.optimizer !== undefined ? { optimizer: req.config.optimizer } : {}),
      seed: req.config.seed,
      onProgress: this.onProgress ? (d, t) => this.onProgress?.(this.deviceId, d, t) : undefined,
    });
    // The update pipeline (core/round/update-pipeline.ts): delta, then differential privacy (clip and noise before
    // anything leaves the device), then the uplink codec.
    this.bnLocal = this.model.localState?.() ?? null;
    const delta = takeDelta(this.model.getWeights(), global);
    boundDelta(delta, req.normBound);
    const dp = privatizeDelta(delta, req.dp, this.noise);
    if (req.secagg) return this.advertise(req, delta, summary, dp?.clipBit);
    return {
      ...this.resultHeader(req, summary),
      delta: req.uplink ? { encoding: "flz", bytes: await this.compress(req, delta) } : delta,
      ...(dp?.clipBit !== undefined ? { dpClipBit: dp.clipBit } : {}),
    };
  }

  /**
   * The uplink codec (update-pipeline.ts, the same call as the quantizer module's on a real device): with a
   * sparsifier, the part of the update that was not sent stays in this device's error-feedback residual for its
   * next round of the job (Stich et al. 2018, "Sparsified SGD with Memory").
   */
  private compress(req: TrainRequest, delta: Float32Array): Promise<Uint8Array> {
    return compressUpdate(
      delta,
      parseCompression(req.uplink ?? "none"),
      {
        jobId: req.jobId,
        round: req.round,
        deviceId: this.deviceId,
        layoutHash: this.model.layout.hash,
        segments: layoutSegments(this.model.layout),
      },
      this.residuals,
    );
  }

  /**
   * Secure aggregation, step 1: the update stays on the device; the device answers with its signed key
   * advertisement. With an uplink codec the update is what the codec would deliver (error feedback included), so
   * codecs and secure aggregation compose: the masked vector carries the codec's values in fixed point.
   */
  private async advertise(
    req: TrainRequest,
    delta: Float32Array,
    summary: { loss: number; accuracy: number; ms: number },
    dpClipBit?: number,
  ): Promise<SecAggFrame> {
    if (!this.signer) {
      throw new FlotillaError(
        "E_SECAGG_NO_KEY",
        "secure aggregation needs an identity key and this device has none",
      );
    }
    const coded = req.uplink
      ? decodeTensor(await this.compress(req, delta), {
          layoutHash: this.model.layout.hash,
          length: delta.length,
        })
      : delta;
    // Adaptive clipping: the clip indicator rides as one extra value, so the server sees only its sum.
    let update = coded;
    if (dpClipBit !== undefined) {
      update = new Float32Array(coded.length + 1);
      update.set(coded);
      update[coded.length] = dpClipBit;
    }
    const session = { jobId: req.jobId, round: req.round };
    // Under DP every update weighs the same (a sample count would scale its sensitivity).
    const { client, advertisement } = await SecAggClient.start(
      session,
      this.deviceId,
      req.dp ? 1 : this.data.n,
      this.signer,
    );
    // One round of a job at a time: older sessions of the job are dropped.
    for (const key of this.secagg.keys()) if (key.startsWith(`${req.jobId}/`)) this.secagg.delete(key);
    this.secagg.set(`${req.jobId}/${req.round}`, {
      client,
      update,
      ...this.reported(req, summary),
    });
    return { ...this.secaggHeader(req.jobId, req.round, "advertise"), body: advertisement };
  }

  /** Secure aggregation, steps 2-4 (core/secagg/client.ts does the protocol; errors become failure frames). */
  private secaggStep(msg: SecAggFrame): SecAggFrame {
    const key = `${msg.jobId}/${msg.round}`;
    const st = this.secagg.get(key);
    if (!st) {
      throw new FlotillaError(
        "E_SECAGG_STATE",
        `no secure-aggregation round ${key} in progress on this device`,
      );
    }
    const head = this.secaggHeader(msg.jobId, msg.round, msg.step);
    switch (msg.step) {
      case "share":
        return { ...head, body: st.client.shareKeys(msg.body as ShareKeysRequest) };
      case "mask": {
        if (!st.update) {
          throw new FlotillaError("E_SECAGG_STATE", `round ${key}: the masked input was already sent`);
        }
        const masked = st.client.maskInput(msg.body as MaskInputRequest, st.update);
        st.update = null;
        const { masked: vector, ...rest } = masked;
        return { ...head, body: rest, masked: vector, numSamples: st.numSamples, metrics: st.metrics };
      }
      case "unmask":
        // The session stays until the job's next round, so a second, conflicting request is refused by the
        // client's record of what it revealed (never answered from a fresh state).
        return { ...head, body: st.client.unmask(msg.body as UnmaskRequest) };
      default:
        throw new FlotillaError("E_PROTO_TYPE", `unexpected secure-aggregation step '${msg.step}'`);
    }
  }

  private secaggHeader(jobId: string, round: number, step: SecAggFrame["step"]): Omit<SecAggFrame, "body"> {
    return { type: "secagg", step, direction: "up", jobId, round, deviceId: this.deviceId };
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
      ...this.reported(req, summary),
    };
  }

  /**
   * What the device says about its training beside the update. When it noises its own update (distributed and local
   * DP) the server is not trusted, so the sample count and the training loss and accuracy, which the noise does not
   * cover, are withheld (count 1, metrics NaN, sent as null): the DP guarantee then covers all the device sends.
   */
  private reported(
    req: TrainRequest,
    summary: { loss: number; accuracy: number; ms: number },
  ): { numSamples: number; metrics: { loss: number; accuracy: number; trainMs: number } } {
    if (req.dp && req.dp.noiseStd > 0)
      return { numSamples: 1, metrics: { loss: NaN, accuracy: NaN, trainMs: summary.ms } };
    return {
      numSamples: this.data.n,
      metrics: { loss: summary.loss, accuracy: summary.accuracy, trainMs: summary.ms },
    };
  }
}
