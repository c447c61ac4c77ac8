/** Update codecs (issue 4): compressed updates on the wire. The contract is api.ts; see envelope.ts for bytes. */
export * from "./api";
export { parseCompression, specFromStages, keptCount } from "./spec";
export {
  encodeTensor,
  readEnvelope,
  decodeTensorInto,
  decodeTensor,
  isEnvelope,
  ENVELOPE_MAGIC,
  ENVELOPE_VERSION,
} from "./envelope";
export { ErrorFeedback } from "./error-feedback";
export { benchCodecs, DEFAULT_BENCH_SPECS, DEFAULT_BENCH_SIZE, type CodecBench } from "./bench";
