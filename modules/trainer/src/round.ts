import { FlotillaError } from "../../../core/errors";
import { validateSpec, type ModelSpec } from "../../../core/engine/model-spec";
import { validateOptimizer } from "../../../core/engine/optimizer-config";
import type { OptimizerConfig } from "../../../core/engine/graph-spec";
import type { FitConfig } from "../../../core/strategies/strategy";

import type { RoundOrder, SecAggOrder } from "../../../core/protocol/round-order";
import type { DpOrder } from "../../../core/protocol/messages";

export type { RoundOrder, SecAggOrder };

/** undefined = idle (`null`, or no jobId); throws E_ROUND_INVALID naming the first bad field. */
export function parseRoundOrder(value: unknown): RoundOrder | undefined {
  if (value === null || value === undefined) return undefined;
  if (typeof value !== "object" || Array.isArray(value)) bad("flotilla must be an object");
  const o = value as Record<string, unknown>;
  if (o.jobId === undefined || o.jobId === null) return undefined;
  if (typeof o.jobId !== "string" || o.jobId === "") bad("jobId must be a non-empty string");
  if (!Number.isSafeInteger(o.round) || (o.round as number) < 0) bad("round must be an integer ≥ 0");
  if (typeof o.modelUrl !== "string" || !/^https?:\/\//i.test(o.modelUrl))
    bad("modelUrl must be an http(s) URL");
  if (typeof o.modelSha256 !== "string" || !/^[0-9a-f]{64}$/i.test(o.modelSha256))
    bad("modelSha256 must be 64 hex digits");
  if (typeof o.layoutHash !== "string" || o.layoutHash === "") bad("layoutHash must be a string");
  let modelSpec: ModelSpec;
  try {
    // Keys a twin patch cleared arrive as null (fleet.ts STALE_SPEC_KEYS): absent.
    modelSpec = validateSpec(withoutNulls(o.modelSpec));
  } catch (e) {
    return bad(`modelSpec: ${e instanceof Error ? e.message : String(e)}`);
  }
  const c = o.config;
  if (typeof c !== "object" || c === null) return bad("config must be an object");
  const cfg = c as Record<string, unknown>;
  if (!Number.isSafeInteger(cfg.epochs) || (cfg.epochs as number) < 1)
    bad("config.epochs must be an integer ≥ 1");
  if (!Number.isSafeInteger(cfg.batchSize) || (cfg.batchSize as number) < 1)
    bad("config.batchSize must be an integer ≥ 1");
  if (typeof cfg.lr !== "number" || !(cfg.lr > 0) || !Number.isFinite(cfg.lr)) bad("config.lr must be > 0");
  if (cfg.mu !== undefined && cfg.mu !== null && (typeof cfg.mu !== "number" || !(cfg.mu >= 0)))
    bad("config.mu must be ≥ 0");
  let optimizer: OptimizerConfig | undefined;
  if (cfg.optimizer !== undefined && cfg.optimizer !== null) {
    try {
      optimizer = validateOptimizer(withoutNulls(cfg.optimizer), "config.optimizer");
    } catch (e) {
      return bad(e instanceof Error ? e.message : String(e));
    }
  }
  const seed = cfg.seed === undefined || cfg.seed === null ? 0 : cfg.seed;
  if (!Number.isSafeInteger(seed)) bad("config.seed must be an integer");
  const deadline = o.deadline === undefined || o.deadline === null ? 0 : o.deadline;
  if (typeof deadline !== "number" || !Number.isFinite(deadline) || deadline < 0)
    bad("deadline must be ms since epoch");
  const enc = o.modelEncoding;
  if (enc !== undefined && enc !== null && enc !== "flz") bad("modelEncoding must be 'flz' or absent");
  let onnx: RoundOrder["onnx"];
  if (o.onnx !== undefined && o.onnx !== null) {
    const x = o.onnx as Record<string, unknown>;
    const url = (k: string) => typeof x[k] === "string" && /^https?:\/\//i.test(x[k] as string);
    const hex = (k: string) => typeof x[k] === "string" && /^[0-9a-f]{64}$/i.test(x[k] as string);
    if (typeof x !== "object" || !url("url") || !hex("sha256"))
      bad("onnx must have an http(s) url and a sha256");
    onnx = {
      url: x.url as string,
      sha256: (x.sha256 as string).toLowerCase(),
      ...(url("int8Url") && hex("int8Sha256")
        ? { int8Url: x.int8Url as string, int8Sha256: (x.int8Sha256 as string).toLowerCase() }
        : {}),
    };
  }
  let secagg: SecAggOrder | undefined;
  if (o.secagg !== undefined && o.secagg !== null && o.secagg !== false) {
    const x = o.secagg as Record<string, unknown>;
    if (typeof x !== "object" || Array.isArray(x)) bad("secagg must be an object");
    const step = x.stepSeconds === undefined || x.stepSeconds === null ? 30 : x.stepSeconds;
    if (typeof step !== "number" || !Number.isFinite(step) || step <= 0 || step > 3600)
      bad("secagg.stepSeconds must be a number of seconds in (0, 3600]");
    secagg = { stepSeconds: step };
  }
  const dp = parseDpOrder(o.dp);
  if (o.normBound !== undefined && o.normBound !== null) {
    const b = o.normBound;
    if (typeof b !== "number" || !Number.isFinite(b) || !(b > 0)) bad("normBound must be a number > 0");
  }
  const normBound = typeof o.normBound === "number" ? o.normBound : undefined;
  const config: FitConfig = {
    epochs: cfg.epochs as number,
    batchSize: cfg.batchSize as number,
    lr: cfg.lr as number,
    seed: seed as number,
    ...(typeof cfg.mu === "number" && cfg.mu > 0 ? { mu: cfg.mu } : {}),
    ...(optimizer ? { optimizer } : {}),
  };
  return {
    jobId: o.jobId as string,
    round: o.round as number,
    modelUrl: o.modelUrl as string,
    modelSha256: (o.modelSha256 as string).toLowerCase(),
    layoutHash: o.layoutHash as string,
    modelSpec,
    config,
    deadline: deadline as number,
    ...(enc === "flz" ? { modelEncoding: "flz" as const } : {}),
    ...(onnx ? { onnx } : {}),
    ...(secagg ? { secagg } : {}),
    ...(dp ? { dp } : {}),
    ...(normBound !== undefined ? { normBound } : {}),
  };
}

/**
 * The round order's `dp` (differential privacy, core/privacy/dp.ts): absent/null = none; else `clip` > 0,
 * `noiseStd` ≥ 0 and an optional `clipBitNoiseStd` ≥ 0 (adaptive clipping), all finite. E_ROUND_INVALID otherwise:
 * a trainer never trains a DP round it cannot privatize as told.
 */
function parseDpOrder(v: unknown): DpOrder | undefined {
  if (v === undefined || v === null) return undefined;
  if (typeof v !== "object" || Array.isArray(v)) bad("dp must be an object");
  const x = v as Record<string, unknown>;
  const known = ["clip", "noiseStd", "clipBitNoiseStd"];
  const extra = Object.keys(x).find((k) => !known.includes(k) && x[k] !== null);
  if (extra !== undefined) bad(`dp.${extra} is unknown`);
  const finite = (k: string) => typeof x[k] === "number" && Number.isFinite(x[k]);
  if (!finite("clip") || !((x.clip as number) > 0)) bad("dp.clip must be a number > 0");
  if (!finite("noiseStd") || !((x.noiseStd as number) >= 0)) bad("dp.noiseStd must be a number ≥ 0");
  const bit = x.clipBitNoiseStd;
  if (bit !== undefined && bit !== null && (!finite("clipBitNoiseStd") || !((bit as number) >= 0)))
    bad("dp.clipBitNoiseStd must be a number ≥ 0");
  return {
    clip: x.clip as number,
    noiseStd: x.noiseStd as number,
    ...(typeof bit === "number" ? { clipBitNoiseStd: bit } : {}),
  };
}

/** An object's top-level keys without the null ones (what a twin patch cleared); anything else as it is. */
function withoutNulls(v: unknown): unknown {
  if (typeof v !== "object" || v === null || Array.isArray(v)) return v;
  return Object.fromEntries(Object.entries(v).filter(([, x]) => x !== null));
}

function bad(message: string): never {
  throw new FlotillaError("E_ROUND_INVALID", `round order: ${message}`);
}
