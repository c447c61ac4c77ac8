/**
 * Compression spec text <-> CompressionSpec. Grammar (case-insensitive, blanks around parts ignored):
 *
 *   spec        := "none" | sparsifier | [sparsifier "+"] value-codec
 *   sparsifier  := ("topk" | "randk") ":" FRACTION            FRACTION a decimal in (0, 1]
 *   value-codec := "fp16"
 *                | ("int8" | "int4" | "int2") [":" BLOCK | ":tensor"]      BLOCK 0 (= per tensor) .. 2^24, default 256
 *                | "qsgd:" LEVELS [":" BUCKET]              LEVELS 1..127, BUCKET 1..2^24, default 512
 *
 * The canonical text (`spec.text`) drops defaults ("int8:256" -> "int8"), writes per-tensor scales as
 * "int8:tensor" and fractions as JavaScript prints the number ("topk:.010" -> "topk:0.01"); parsing it gives the
 * same spec.
 */
import { fail } from "../errors";
import type { CodecStage, CompressionSpec } from "./api";

export const DEFAULT_INT_BLOCK = 256;
export const DEFAULT_QSGD_BUCKET = 512;
/** Largest block / bucket size (keeps per-block temporaries and header fields small). */
export const MAX_BLOCK = 1 << 24;
export const MAX_QSGD_LEVELS = 127;

const INTEGER = /^\d+$/;
const DECIMAL = /^(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?$/;

export function parseCompression(text: string): CompressionSpec {
  if (typeof text !== "string")
    fail("E_COMPRESS_SPEC", `compression spec must be a string, got ${typeof text}`);
  const whole = text.trim().toLowerCase();
  const bad = (why: string): never => fail("E_COMPRESS_SPEC", `compression spec "${text}": ${why}`);
  if (whole === "") bad('empty (use "none" for raw float32)');
  if (whole === "none") return specFromStages([]);
  const stages: CodecStage[] = [];
  for (const raw of whole.split("+")) {
    const part = raw.trim();
    if (part === "") bad("empty stage between '+'");
    const [name, ...params] = part.split(":").map((p) => p.trim());
    const arity = (min: number, max: number): void => {
      if (params.length < min || params.length > max) {
        const want = min === max ? `${min}` : `${min} to ${max}`;
        bad(`'${part}' takes ${want} parameter${max === 1 ? "" : "s"}, got ${params.length}`);
      }
    };
    const integer = (s: string, what: string, lo: number, hi: number): number => {
      const v = INTEGER.test(s) ? Number(s) : NaN;
      if (!(v >= lo && v <= hi)) bad(`${what} '${s}' in '${part}' must be an integer in ${lo}..${hi}`);
      return v;
    };
    let stage: CodecStage;
    switch (name) {
      case "topk":
      case "randk": {
        arity(1, 1);
        const f = DECIMAL.test(params[0]) ? Number(params[0]) : NaN;
        if (!(f > 0 && f <= 1)) bad(`fraction '${params[0]}' in '${part}' must be a number in (0, 1]`);
        stage = { kind: name, fraction: f };
        break;
      }
      case "fp16":
        arity(0, 0);
        stage = { kind: "fp16" };
        break;
      case "int8":
      case "int4":
      case "int2": {
        arity(0, 1);
        const bits = Number(name.slice(3)) as 8 | 4 | 2;
        let block = DEFAULT_INT_BLOCK;
        if (params.length === 1) {
          block = params[0] === "tensor" ? 0 : integer(params[0], "block size", 0, MAX_BLOCK);
        }
        stage = { kind: "int", bits, block };
        break;
      }
      case "qsgd": {
        arity(1, 2);
        const levels = integer(params[0], "level count", 1, MAX_QSGD_LEVELS);
        const bucket =
          params.length === 2 ? integer(params[1], "bucket size", 1, MAX_BLOCK) : DEFAULT_QSGD_BUCKET;
        stage = { kind: "qsgd", levels, bucket };
        break;
      }
      case "none":
        return bad("'none' cannot be combined with other stages");
      default:
        return bad(
          `unknown stage '${part}' (expected topk:F, randk:F, fp16, int8, int4, int2 or qsgd:LEVELS)`,
        );
    }
    stages.push(stage);
  }
  const problem = chainProblem(stages);
  if (problem) bad(problem);
  return specFromStages(stages);
}

/**
 * A CompressionSpec for a chain of stages, validated (E_COMPRESS_SPEC), with its canonical text. Used by the
 * parser, by the envelope reader, and by the encoder on specs built by hand.
 */
export function specFromStages(stages: readonly CodecStage[]): CompressionSpec {
  if (!Array.isArray(stages)) fail("E_COMPRESS_SPEC", "compression spec has no stage list");
  const copy: CodecStage[] = stages.map(checkStage);
  const problem = chainProblem(copy);
  if (problem) fail("E_COMPRESS_SPEC", `compression chain '${copy.map(stageText).join("+")}': ${problem}`);
  const frozen = Object.freeze(copy.map((s) => Object.freeze(s)));
  return Object.freeze({
    stages: frozen,
    text: frozen.length === 0 ? "none" : frozen.map(stageText).join("+"),
    sparse: frozen.some(isSparsifier),
    lossless: frozen.length === 0,
  });
}

export function isSparsifier(s: CodecStage): s is Extract<CodecStage, { kind: "topk" | "randk" }> {
  return s.kind === "topk" || s.kind === "randk";
}

/** Number of values a sparsifier with `fraction` keeps out of n: max(1, round(fraction * n)), 0 when n = 0. */
export function keptCount(fraction: number, n: number): number {
  return n === 0 ? 0 : Math.max(1, Math.min(n, Math.round(fraction * n)));
}

export function stageText(s: CodecStage): string {
  switch (s.kind) {
    case "fp16":
      return "fp16";
    case "int":
      return s.block === DEFAULT_INT_BLOCK
        ? `int${s.bits}`
        : s.block === 0
          ? `int${s.bits}:tensor`
          : `int${s.bits}:${s.block}`;
    case "qsgd":
      return s.bucket === DEFAULT_QSGD_BUCKET ? `qsgd:${s.levels}` : `qsgd:${s.levels}:${s.bucket}`;
    case "topk":
    case "randk":
      return `${s.kind}:${String(s.fraction)}`;
  }
}

/** Validates one stage object (which may come from outside TypeScript) and returns a clean copy. */
function checkStage(s: CodecStage): CodecStage {
  const bad = (why: string): never => fail("E_COMPRESS_SPEC", `compression stage ${describe(s)}: ${why}`);
  const int = (v: unknown, lo: number, hi: number): boolean =>
    typeof v === "number" && Number.isInteger(v) && v >= lo && v <= hi;
  if (typeof s !== "object" || s === null) return bad("not an object");
  switch (s.kind) {
    case "fp16":
      return { kind: "fp16" };
    case "int":
      if (s.bits !== 8 && s.bits !== 4 && s.bits !== 2) bad("bits must be 8, 4 or 2");
      if (!int(s.block, 0, MAX_BLOCK)) bad(`block must be an integer in 0..${MAX_BLOCK}`);
      return { kind: "int", bits: s.bits, block: s.block };
    case "qsgd":
      if (!int(s.levels, 1, MAX_QSGD_LEVELS)) bad(`levels must be an integer in 1..${MAX_QSGD_LEVELS}`);
      if (!int(s.bucket, 1, MAX_BLOCK)) bad(`bucket must be an integer in 1..${MAX_BLOCK}`);
      return { kind: "qsgd", levels: s.levels, bucket: s.bucket };
    case "topk":
    case "randk":
      if (!(typeof s.fraction === "number" && s.fraction > 0 && s.fraction <= 1))
        bad("fraction must be in (0, 1]");
      return { kind: s.kind, fraction: s.fraction };
    default:
      return bad("unknown kind");
  }
}

function describe(s: unknown): string {
  try {
    return JSON.stringify(s) ?? String(s);
  } catch {
    return String(s);
  }
}

/** Why a chain is not "[sparsifier] [value codec]", or null when it is. */
function chainProblem(stages: readonly CodecStage[]): string | null {
  const sparsifiers = stages.filter(isSparsifier);
  if (sparsifiers.length > 1)
    return `at most one sparsifier, got '${sparsifiers.map(stageText).join("' and '")}'`;
  const values = stages.filter((s) => !isSparsifier(s));
  if (values.length > 1) return `at most one value codec, got '${values.map(stageText).join("' and '")}'`;
  if (sparsifiers.length === 1 && !isSparsifier(stages[0])) {
    return `sparsifier '${stageText(sparsifiers[0])}' must come first`;
  }
  return null;
}
