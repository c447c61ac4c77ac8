/**
 * Typed errors with stable codes. Callers branch on `code`, never on message text (the Azure SDK's RestError
 * pattern). Every code is in the catalogue `ERRORS` below, grouped by the component that owns its prefix,
 * each with its one-line meaning; test/core/errors.test.ts fails when a code used in the sources is missing
 * from it or a catalogued code is used nowhere. `FlotillaError`/`fail` take an `ErrorCode`, so tsc rejects an
 * uncatalogued literal code; codes relayed from another process (a device's failure frame, an HTTP error
 * body) are plain strings and pass through as they are.
 *
 * A wrapped error keeps the original as `cause` (ES2022 Error cause, ECMA-262 §20.5.8.1 InstallErrorCause):
 * `new FlotillaError("E_MODEL_DOWNLOAD", "...", { cause: e })`.
 */

/** One catalogued code: the component that owns it and what it means, on one line. */
export interface ErrorEntry {
  readonly group: string;
  readonly meaning: string;
}

export const ERRORS = {
  // ── general ────────────────────────────────────────────────────────────────────────────────────────────
  E_INTERNAL: {
    group: "general",
    meaning: "an unexpected failure with no code of its own (a bug, or a thrown non-error)",
  },
  E_ABORTED: {
    group: "general",
    meaning:
      "work stopped on request: its AbortSignal fired, or the trainer's abortRound method aborted the round",
  },
  E_TIMEOUT: {
    group: "general",
    meaning: "a request (IoT Edge SDK call, twin read, close) got no answer in time",
  },

  // ── config: configuration, CLI flags and module settings ─────────────────────────────────────────────
  E_METRICS: {
    group: "general",
    meaning:
      "a module's Prometheus /metrics endpoint could not start (port in use) or a metric collect failed",
  },
  E_PROMETHEUS: {
    group: "general",
    meaning:
      "the local Prometheus (Debian's package, `--prometheus`) is not installed, exited, or was not ready in time",
  },
  E_CONFIG_BENCH: { group: "config", meaning: "an invalid benchmark option (batch size, steps, ...)" },
  E_BENCH_REFERENCE: {
    group: "config",
    meaning: "bench train --reference pytorch: no Python with torch, or the PyTorch reference run failed",
  },
  E_BENCH_METRICS: {
    group: "config",
    meaning: "bench metrics: an arm's worker process or the scraper process failed or exited early",
  },
  E_CONFIG_THREADS: {
    group: "config",
    meaning: "an invalid training thread count (--threads, FLOTILLA_THREADS, the trainer's threads property)",
  },
  E_CONFIG_CA_CERT: {
    group: "config",
    meaning: "the CA certificate named by FLOTILLA_CA_CERT cannot be read",
  },
  E_CONFIG_CONFLICT: {
    group: "config",
    meaning:
      "two options that exclude each other were both given (e.g. a robust aggregator with secure aggregation)",
  },
  E_CONFIG_AGGREGATOR: { group: "config", meaning: "an invalid --aggregator spec or job aggregator" },
  E_CONFIG_ATTACK: {
    group: "config",
    meaning: "an invalid --attack spec (simulator attacks), or an attack the job's data or model cannot take",
  },
  E_CONFIG_QUALITY: {
    group: "config",
    meaning: "an invalid --quality / --exclude-after value or job quality policy",
  },
  E_CONFIG_DATASET: { group: "config", meaning: "an unknown or unusable dataset name" },
  E_CONFIG_FLEET_TRACE: {
    group: "config",
    meaning: "--fleet-trace does not fit the job (device count, or an option virtual time cannot simulate)",
  },
  E_CONFIG_INVALID: {
    group: "config",
    meaning: "a module setting (environment variable) has an invalid value",
  },
  E_CONFIG_MEMORY: {
    group: "config",
    meaning: "the configured simulation would need more memory than this machine has",
  },
  E_CONFIG_MISSING: {
    group: "config",
    meaning: "a required module setting (environment variable) is missing",
  },
  E_CONFIG_MISSING_ARGUMENT: { group: "config", meaning: "a CLI command or option lacks its argument" },
  E_CONFIG_MISSING_COMMAND: {
    group: "config",
    meaning: "a CLI command group was given without a subcommand",
  },
  E_CONFIG_MISSING_OPTION: { group: "config", meaning: "a mandatory CLI option was not given" },
  E_CONFIG_MODE: {
    group: "config",
    meaning:
      "an invalid round mode or asynchronous option (--mode, --concurrency, --buffer, --max-staleness, --staleness)",
  },
  E_CONFIG_MODEL: { group: "config", meaning: "an unknown model kind or invalid model option" },
  E_CONFIG_OPTIMIZER: {
    group: "config",
    meaning:
      "an invalid on-device optimizer (--optimizer sgd | momentum[:BETA] | adam, a fit config's optimizer)",
  },
  E_CONFIG_OUT: { group: "config", meaning: "the output directory cannot be created or written" },
  E_CONFIG_PARTITION: {
    group: "config",
    meaning: "an invalid data partition spec (iid, dirichlet:α, shards:k)",
  },
  E_CONFIG_RANGE: { group: "config", meaning: "a numeric flag is outside its allowed range" },
  E_CONFIG_SELECTION: {
    group: "config",
    meaning: "an unknown participant selector or an invalid selector option (core/selection)",
  },
  E_CONFIG_SENSORS: { group: "config", meaning: "an invalid option of the synthetic sensors dataset" },
  E_CONFIG_STALENESS: {
    group: "config",
    meaning: "an invalid staleness function spec (poly[:a], hinge:a,b, const) or staleness value",
  },
  E_CONFIG_STRATEGY: { group: "config", meaning: "an unknown strategy or an invalid strategy option" },
  E_CONFIG_TRAIN: {
    group: "config",
    meaning: "an invalid local training option (epochs, batch size, learning rate)",
  },
  E_CONFIG_UNEXPECTED_ARGUMENT: {
    group: "config",
    meaning: "a CLI command got more arguments than it takes",
  },
  E_CONFIG_UNKNOWN_COMMAND: { group: "config", meaning: "an unknown CLI command" },
  E_CONFIG_UNKNOWN_OPTION: { group: "config", meaning: "an unknown CLI option" },
  E_CONFIG_USAGE: { group: "config", meaning: "any other CLI usage error reported by the argument parser" },
  E_CONFIG_VALUE: {
    group: "config",
    meaning: "a configuration value is malformed or contradicts another (not a number, a URL, a known name)",
  },

  // ── trace: fleet device traces (core/fleet, `flotilla fleet-trace`) ──────────────────────────────────
  E_TRACE_FILE: { group: "trace", meaning: "a fleet trace file cannot be read or a line of it is invalid" },
  E_TRACE_SPEC: { group: "trace", meaning: "an invalid synthetic fleet spec (synthetic:KEY=VALUE,...)" },

  // ── data: datasets and loaders ───────────────────────────────────────────────────────────────────────
  E_DATA_COLUMN: {
    group: "data",
    meaning: "a data file lacks a column the data schema names (feature, label, target, group or order)",
  },
  E_DATA_LABEL: {
    group: "data",
    meaning: "a sample's label is outside the model's classes or the data schema's classes",
  },
  E_DATA_NOT_FOUND: { group: "data", meaning: "a data directory or file does not exist" },
  E_DATA_PARSE: { group: "data", meaning: "a data file cannot be parsed (CSV, JSON, sample values)" },
  E_DATA_SCHEMA: {
    group: "data",
    meaning: "a data schema (schema.json) is invalid: the message names the schema file and the field",
  },
  E_DATA_SHAPE: {
    group: "data",
    meaning: "the data's sample shape or size does not fit the model or loader",
  },
  E_DATA_TASK: {
    group: "data",
    meaning: "the data schema's task (regression, binary, ...) or target count does not fit the model's",
  },
  E_DATA_WINDOW: {
    group: "data",
    meaning: "time-series windows cannot be cut: no series is long enough, or a window's labels disagree",
  },

  // ── model and engine: model specs, weights, TensorFlow.js ───────────────────────────────────────────
  E_MODEL_BUSY: { group: "model", meaning: "the model is training and cannot be changed now" },
  E_MODEL_DIR: { group: "model", meaning: "a model directory (spec + weights) is missing or invalid" },
  E_MODEL_DISPOSED: { group: "model", meaning: "the model was disposed and cannot be used" },
  E_MODEL_DIVERGED: {
    group: "model",
    meaning: "the global model became non-finite (NaN/Infinity): the job stops",
  },
  E_MODEL_DOWNLOAD: { group: "model", meaning: "the round's global model cannot be downloaded" },
  E_MODEL_HASH: { group: "model", meaning: "a downloaded global model does not match its sha256" },
  E_MODEL_IMPORT: {
    group: "model",
    meaning:
      "a Keras / tfjs model.json cannot be imported (not a Layers model, several inputs or outputs, shared layers)",
  },
  E_MODEL_INIT: {
    group: "model",
    meaning:
      "a warm-start model (--init-model, a job's initModel) does not fit the job's model (layout, spec)",
  },
  E_MODEL_LAYER: {
    group: "model",
    meaning:
      "a layer graph or an imported model has a layer type or option Flotilla cannot train (the message names the layer and its type)",
  },
  E_MODEL_LOSS: {
    group: "model",
    meaning: "an imported model's loss is unsupported or does not fit its output (activation, width)",
  },
  E_MODEL_WEIGHTS: {
    group: "model",
    meaning:
      "an imported model's weights are missing, misshapen, quantized or not float32, or a weight shard is short",
  },
  E_MODEL_LAYOUT: {
    group: "model",
    meaning: "weights do not match the model's layout (count, tensor sizes)",
  },
  E_MODEL_NOT_FOUND: { group: "model", meaning: "the job has no stored model for that round" },
  E_MODEL_SHAPE: { group: "model", meaning: "the model cannot take samples of the data's shape" },
  E_MODEL_SIZE: { group: "model", meaning: "a global model's envelope or byte size is invalid" },
  E_MODEL_SPEC: { group: "model", meaning: "an invalid model spec (kind, layers, sizes)" },
  E_ENGINE_BACKEND: { group: "engine", meaning: "the TensorFlow.js backend cannot be started" },

  // ── export and inference: ONNX export, ONNX Runtime, the trainer's predict method ────────────────────
  E_EXPORT_FORMAT: {
    group: "export",
    meaning: "the model kind, export format or quantization option cannot be exported to ONNX",
  },
  E_EXPORT_LAYER: {
    group: "export",
    meaning: "a layer, option or activation of the graph has no ONNX mapping (the layer is named)",
  },
  E_EXPORT_WEIGHTS: { group: "export", meaning: "the weights to export do not fit the model spec" },
  E_EXPORT_WRITE: { group: "export", meaning: "the exported ONNX file cannot be written" },
  E_ONNX_HASH: {
    group: "onnx",
    meaning: "a downloaded ONNX model does not match the sha256 in the round order",
  },
  E_ONNX_LOAD: {
    group: "onnx",
    meaning: "ONNX Runtime cannot load the model (empty, malformed, unsupported input, bad options)",
  },
  E_ONNX_RUN: { group: "onnx", meaning: "ONNX Runtime inference failed or the model was closed" },
  E_PREDICT_DISABLED: {
    group: "predict",
    meaning: "the predict method was called on a trainer with inference off",
  },
  E_PREDICT_INPUT: { group: "predict", meaning: "the predict payload's inputs are malformed or too many" },
  E_PREDICT_NO_MODEL: { group: "predict", meaning: "no ONNX model has been published to this device yet" },

  // ── proto: round protocol frames (FLT1) ──────────────────────────────────────────────────────────────
  E_PROTO_HEADER: {
    group: "proto",
    meaning: "a frame's header is not valid JSON, lacks a field or does not fit its payload",
  },
  E_CHUNK_HASH: {
    group: "proto",
    meaning: "a chunk body does not match its chunkSha256, or a reassembled frame its size and sha256",
  },
  E_CHUNK_MALFORMED: {
    group: "proto",
    meaning: "a chunk's properties break the chunk wire contract (names, id rules, index, count, size)",
  },
  E_CHUNK_OVERSIZED: {
    group: "proto",
    meaning: "a chunk body or frame larger than the chunk wire contract allows",
  },
  E_PROTO_MAGIC: { group: "proto", meaning: "a frame does not start with the FLT1 magic" },
  E_PROTO_STALE: { group: "proto", meaning: "a frame for another job or round than the one in progress" },
  E_PROTO_TRUNCATED: { group: "proto", meaning: "a frame is shorter than its header says" },
  E_PROTO_TYPE: { group: "proto", meaning: "an unknown message type, or one the receiver does not take" },

  // ── round: one federated round, server and device side ───────────────────────────────────────────────
  E_ASYNC_CONFIG: {
    group: "round",
    meaning: "an invalid asynchronous-round option (concurrency, buffer, max staleness)",
  },
  E_ASYNC_SECAGG: {
    group: "round",
    meaning:
      "secure aggregation (or distributed DP) was asked for with asynchronous rounds, which cannot run it",
  },
  E_ASYNC_STALE: {
    group: "round",
    meaning: "an asynchronous update is staler than the job's max staleness: refused and counted",
  },
  E_EVAL_INVALID: {
    group: "round",
    meaning:
      "a device's evaluation of a global model is malformed (samples, metric out of range, no metric, payload)",
  },
  E_EVAL_NOT_PARTICIPANT: {
    group: "round",
    meaning:
      "an evaluation from a device that was never sent that model (not in the job's next round, nor ordered to evaluate the last one): refused",
  },
  E_EVAL_ORDER_INVALID: {
    group: "round",
    meaning: "a malformed evaluate-only order (trainer twin's desired flotillaEvaluate): not evaluated",
  },
  E_EVAL_ORDER_VERSION: {
    group: "round",
    meaning: "an evaluate-only order of a version this trainer does not know: not evaluated",
  },
  E_EVAL_ROUND: {
    group: "round",
    meaning: "an evaluation of a model the job never published (no such round record): refused",
  },
  E_EVAL_VERSION: { group: "round", meaning: "an evaluation frame of a version this receiver does not know" },
  E_ROUND_DEADLINE: { group: "round", meaning: "the device could not finish the round before its deadline" },
  E_ROUND_INVALID: { group: "round", meaning: "a malformed round order (startRound payload)" },
  E_ROUND_MISSING: { group: "round", meaning: "an update announced as stored is missing from the store" },
  E_ROUND_SAMPLES: {
    group: "round",
    meaning: "an update's sample count is refused by the job's sample-count policy",
  },
  E_ROUND_SEEN: { group: "round", meaning: "the round was already started on this device (or is older)" },
  E_ROUND_SUPERSEDED: { group: "round", meaning: "a newer round was ordered, so this one was dropped" },
  E_ROUND_TIMEOUT: { group: "round", meaning: "a device sent no update before the round deadline" },
  E_ROUND_UPDATE: { group: "round", meaning: "a device's update could not be read or aggregated" },
  E_DEVICE: { group: "round", meaning: "a device reported a failure without a code of its own" },
  E_DEVICE_INTERNAL: {
    group: "round",
    meaning: "a device's round code failed unexpectedly (no code of its own)",
  },

  // ── strategy: aggregation strategies and their kernels ───────────────────────────────────────────────
  E_STRATEGY_DUPLICATE: { group: "strategy", meaning: "a second update from the same device in one round" },
  E_STRATEGY_KERNEL: {
    group: "strategy",
    meaning: "the requested accumulator kernel (WebAssembly SIMD) is unavailable",
  },
  E_STRATEGY_NONFINITE: { group: "strategy", meaning: "weights or an update contain NaN or Infinity" },
  E_STRATEGY_OPTIONS: { group: "strategy", meaning: "an invalid strategy or accumulator option" },
  E_STRATEGY_ROUND: { group: "strategy", meaning: "an invalid round number" },
  E_ROBUST_DROPPED: {
    group: "strategy",
    meaning:
      "a robust aggregator left a device's update out of the round's aggregate (reason in the round record)",
  },
  E_QUALITY_NORM: {
    group: "strategy",
    meaning: "anomaly: an update's norm is an outlier far above the round's median (modified z-score)",
  },
  E_QUALITY_DIRECTION: {
    group: "strategy",
    meaning: "anomaly: an update points against the round (negative cosine, an outlier of the round's)",
  },
  E_QUALITY_LOSS: {
    group: "strategy",
    meaning: "anomaly: a device's training loss is an outlier far above the round's median",
  },
  E_QUALITY_REJECTED: {
    group: "strategy",
    meaning: "anomaly: a device's update was refused by validation or dropped by a robust rule",
  },
  E_QUALITY_EXCLUDED: {
    group: "strategy",
    meaning:
      "a device flagged in K of its last W contributions is excluded from selection (its reason says why)",
  },
  E_QUALITY_STATE: { group: "strategy", meaning: "a stored contribution-quality state is invalid" },
  E_STRATEGY_SAMPLES: { group: "strategy", meaning: "an update's sample count is not a number > 0" },
  E_STRATEGY_SIZE: { group: "strategy", meaning: "weights, an update or an aggregate have the wrong length" },
  E_STRATEGY_WEIGHT: {
    group: "strategy",
    meaning: "an update's staleness weight (asynchronous rounds) is not a number in (0, 1]",
  },
  E_STRATEGY_STATE: {
    group: "strategy",
    meaning: "a strategy is used out of order, or its saved state is invalid",
  },

  // ── selection: participant selection (core/selection) ────────────────────────────────────────────────
  E_SELECTION_HISTORY: {
    group: "selection",
    meaning: "a stored participant-selection history is not valid (selection.json)",
  },
  E_PROPERTY_INVALID: {
    group: "selection",
    meaning:
      "an operator's writable property (module twin desired, IoT Plug and Play) has a wrong type or is out of range: acked 400, the last good value kept",
  },
  E_PROPERTY_UNKNOWN: {
    group: "selection",
    meaning: "a desired property the module's model does not have: acked 400 'unknown property'",
  },
  E_POLICY_EXCLUDED: {
    group: "selection",
    meaning:
      "the device's policy (participation, training windows, resource floors, training cap, metered link) excludes it from a round: it is not ordered, and declines an order",
  },
  E_SELECTION_WINDOWS: {
    group: "selection",
    meaning:
      "a device's declared availability windows (twin tag flotilla.availability) are not HH:MM-HH:MM UTC",
  },

  // ── transport: the in-memory transport ───────────────────────────────────────────────────────────────
  E_TRANSPORT_CLOSED: { group: "transport", meaning: "the transport is closed" },
  E_TRANSPORT_DUPLICATE: { group: "transport", meaning: "a device connected twice" },
  E_TRANSPORT_OFFLINE: { group: "transport", meaning: "a frame was sent to or from an offline device" },
  E_TRANSPORT_UNKNOWN_DEVICE: { group: "transport", meaning: "a frame names a device that never connected" },

  // ── compress: update codecs, error feedback, the compressed-tensor envelope ──────────────────────────
  E_COMPRESS_INPUT: {
    group: "compress",
    meaning: "a codec got input of the wrong type, or too large for an envelope",
  },
  E_COMPRESS_INTERNAL: { group: "compress", meaning: "compression with error feedback failed unexpectedly" },
  E_COMPRESS_OPTIONS: { group: "compress", meaning: "invalid codec options" },
  E_COMPRESS_RESIDUAL: {
    group: "compress",
    meaning: "an error-feedback residual is invalid or does not fit the model",
  },
  E_COMPRESS_SEGMENTS: {
    group: "compress",
    meaning: "a per-tensor codec lacks (or got invalid) tensor segments",
  },
  E_COMPRESS_SPEC: {
    group: "compress",
    meaning: "an invalid compression spec string (e.g. int8:tensor, topk:0.05+int4)",
  },
  E_ENVELOPE_CHECKSUM: {
    group: "envelope",
    meaning: "a compressed-tensor envelope's checksum does not match",
  },
  E_ENVELOPE_HEADER: { group: "envelope", meaning: "a compressed-tensor envelope's header is malformed" },
  E_ENVELOPE_LAYOUT: {
    group: "envelope",
    meaning: "an envelope's layout hash or length differs from the model's",
  },
  E_ENVELOPE_MAGIC: {
    group: "envelope",
    meaning: "not a compressed-tensor envelope (not bytes, or a bad magic)",
  },
  E_ENVELOPE_PAYLOAD: {
    group: "envelope",
    meaning: "an envelope's payload is malformed (indices, values, sizes)",
  },
  E_ENVELOPE_TRUNCATED: { group: "envelope", meaning: "an envelope is shorter than its header says" },
  E_ENVELOPE_VERSION: { group: "envelope", meaning: "an envelope version this build does not read" },

  // ── dp: differential privacy (mechanisms, accountant, RDP, `flotilla privacy`) ───────────────────────
  E_DP_CONFIG: {
    group: "dp",
    meaning: "an invalid differential-privacy parameter (clip norm, noise, q, δ, ε, steps)",
  },
  E_DP_DUPLICATE: { group: "dp", meaning: "a second update from the same device in one DP round" },
  E_DP_INFINITE: { group: "dp", meaning: "the given parameters give an infinite ε (no privacy)" },
  E_DP_INPUT: {
    group: "dp",
    meaning: "an update or secure aggregate has the wrong length or non-finite values",
  },
  E_DP_STATE: { group: "dp", meaning: "stored DP state (clip norm, privacy ledger) is invalid" },
  E_DP_TOO_FEW: {
    group: "dp",
    meaning: "fewer devices than distributed DP needs are left: the round aborts",
  },
  E_DP_UNREACHABLE: {
    group: "dp",
    meaning: "the target ε is not reachable with any allowed noise multiplier",
  },
  E_DP_WEIGHT: { group: "dp", meaning: "a device advertised a weight other than 1 in a DP secure round" },

  // ── secagg: secure aggregation (SecAgg+) ─────────────────────────────────────────────────────────────
  E_SECAGG_ABORTED: {
    group: "secagg",
    meaning: "too few devices are left for secure aggregation: nothing is unmasked",
  },
  E_SECAGG_ANSWER: {
    group: "secagg",
    meaning: "a device's answer to a secure-aggregation step is not an acceptance",
  },
  E_SECAGG_DECRYPT: { group: "secagg", meaning: "a key-share ciphertext cannot be decoded or decrypted" },
  E_SECAGG_DROPOUT: {
    group: "secagg",
    meaning: "a device did not answer a secure-aggregation step before its deadline",
  },
  E_SECAGG_EXCLUDED: { group: "secagg", meaning: "a device's update is not in the secure sum" },
  E_SECAGG_GRAPH: { group: "secagg", meaning: "an invalid neighbour graph (seed, degree, participants)" },
  E_SECAGG_INPUT: {
    group: "secagg",
    meaning: "invalid secure-aggregation input (an update, a clip range, a masked input or its frame)",
  },
  E_SECAGG_INTERNAL: { group: "secagg", meaning: "a device's secure-aggregation step failed unexpectedly" },
  E_SECAGG_INVALID: { group: "secagg", meaning: "a secure-aggregation method payload is malformed" },
  E_SECAGG_KEY: { group: "secagg", meaning: "a key is malformed or the key agreement failed" },
  E_SECAGG_MESSAGE: { group: "secagg", meaning: "a secure-aggregation message is malformed" },
  E_SECAGG_NO_KEY: {
    group: "secagg",
    meaning: "secure aggregation needs an identity key and the device has none",
  },
  E_SECAGG_PARAMS: {
    group: "secagg",
    meaning: "invalid secure-aggregation parameters (n, k, threshold, clip range)",
  },
  E_SECAGG_PAYLOAD: {
    group: "secagg",
    meaning: "a secure-aggregation method request exceeds the direct-method limit",
  },
  E_SECAGG_PRG: { group: "secagg", meaning: "an invalid mask generator (PRG) seed, kind or mask sign" },
  E_SECAGG_REFUSED: {
    group: "secagg",
    meaning: "a device refuses a step (too few neighbours, a bad request)",
  },
  E_SECAGG_REPLAY: { group: "secagg", meaning: "a message for another job or round than the session's" },
  E_SECAGG_SHARES: { group: "secagg", meaning: "Shamir shares are invalid or too few to reconstruct" },
  E_SECAGG_SIGNATURE: { group: "secagg", meaning: "a key advertisement's signature is missing or invalid" },
  E_SECAGG_STATE: {
    group: "secagg",
    meaning: "a secure-aggregation step arrived out of order for the device's state",
  },
  E_SECAGG_TIMEOUT: { group: "secagg", meaning: "no key shares from a device before the step deadline" },

  // ── key: device identity keys (files, Azure Key Vault) ───────────────────────────────────────────────
  E_KEY_AUTH: { group: "key", meaning: "no Key Vault token, or Key Vault refused access" },
  E_KEY_CORRUPT: { group: "key", meaning: "an identity key file is not a valid private key" },
  E_KEY_DEVICE_ID: { group: "key", meaning: "an invalid device id for an identity key" },
  E_KEY_LOOKUP: { group: "key", meaning: "looking up a device's identity key failed unexpectedly" },
  E_KEY_NOT_FOUND: { group: "key", meaning: "no identity key for the device" },
  E_KEY_STORE: { group: "key", meaning: "an identity key cannot be written" },
  E_KEY_VAULT: { group: "key", meaning: "a Key Vault request failed or returned a key that is not EC P-256" },

  // ── job and store: the cloud aggregator's job API and blob store ─────────────────────────────────────
  E_JOB_COMPRESSION: { group: "job", meaning: "a job's compression spec is invalid" },
  E_JOB_DP: { group: "job", meaning: "a job's differentialPrivacy section is invalid" },
  E_JOB_EXISTS: { group: "job", meaning: "a job with that id exists" },
  E_JOB_FAILED: { group: "job", meaning: "the job ended in the failed state" },
  E_JOB_ID: { group: "job", meaning: "an invalid job id" },
  E_JOB_INVALID: { group: "job", meaning: "a job definition field is missing or invalid" },
  E_JOB_JSON: { group: "job", meaning: "the request body is not valid JSON" },
  E_JOB_MISSING: { group: "job", meaning: "a job being followed vanished from the store" },
  E_JOB_MODEL: { group: "job", meaning: "a job's model spec is invalid" },
  E_JOB_NOT_FOUND: { group: "job", meaning: "no job with that id" },
  E_JOB_ROUND: { group: "job", meaning: "an invalid round number in a job API request" },
  E_JOB_SECAGG: { group: "job", meaning: "a job's secureAggregation section is invalid" },
  E_JOB_SECAGG_COMPRESSION: {
    group: "job",
    meaning: "a job combines secure aggregation with an incompatible codec",
  },
  E_JOB_STATE: {
    group: "job",
    meaning: "the job's state does not allow that transition (e.g. resume a completed job)",
  },
  E_JOB_STRATEGY: {
    group: "job",
    meaning: "a job names an unknown strategy or gives invalid strategy options",
  },
  E_JOB_TOO_LARGE: { group: "job", meaning: "the request body is too large" },
  E_STORE_CONFLICT: {
    group: "store",
    meaning: "a conditional blob write lost a race (ETag mismatch or blob exists)",
  },
  E_STORE_NAME: { group: "store", meaning: "an invalid blob name" },
  E_STORE_RESPONSE: { group: "store", meaning: "the blob service returned an incomplete response (no ETag)" },
  E_STORE_SAS: { group: "store", meaning: "a read SAS cannot be signed (no account key)" },

  // ── hub: the local IoT Hub emulator and service clients ──────────────────────────────────────────────
  E_HUB_AUTH: { group: "hub", meaning: "the IoT Hub refused the credentials (401/403)" },
  E_HUB_BAD_REQUEST: {
    group: "hub",
    meaning: "an invalid request to the hub (identity, key, status, payload)",
  },
  E_HUB_BAD_URI: { group: "hub", meaning: "an HTTP request target that is too long, relative or not a URI" },
  E_HUB_CLOSED: { group: "hub", meaning: "the hub is closing or closed" },
  E_HUB_CONFLICT: { group: "hub", meaning: "the device or module identity exists" },
  E_HUB_CONFIGURATION: {
    group: "hub",
    meaning:
      "an invalid automatic device management configuration (id, content paths, target condition, priority, metrics) or a change the service does not allow",
  },
  E_HUB_CONFIGURATION_NOT_FOUND: {
    group: "hub",
    meaning: "no such automatic device management configuration",
  },
  E_HUB_CONNECTION_STRING: { group: "hub", meaning: "a malformed IoT Hub connection string" },
  E_HUB_DEVICE_NOT_FOUND: { group: "hub", meaning: "no such device identity" },
  E_HUB_DEVICE_NOT_ONLINE: {
    group: "hub",
    meaning: "a direct method to a device or module that is not connected",
  },
  E_HUB_FORBIDDEN_KEY: {
    group: "hub",
    meaning: "a JSON key that is not allowed (__proto__, constructor, prototype)",
  },
  E_HUB_LISTEN: { group: "hub", meaning: "the hub cannot listen on its MQTT or HTTPS port" },
  E_HUB_METHOD_TIMEOUT: { group: "hub", meaning: "a direct method got no answer before its timeout" },
  E_HUB_MODULE_NOT_FOUND: { group: "hub", meaning: "no such module identity" },
  E_HUB_PRECONDITION: { group: "hub", meaning: "an If-Match ETag does not match" },
  E_HUB_QUERY: { group: "hub", meaning: "an invalid or unsupported IoT Hub query" },
  E_HUB_REGISTRY: { group: "hub", meaning: "an IoT Hub registry request failed" },
  E_HUB_ROUTE: { group: "hub", meaning: "an invalid message route" },
  E_HUB_SAS: { group: "hub", meaning: "a malformed SharedAccessSignature (fields, expiry, encoding)" },
  E_HUB_SDK_INTERNALS: {
    group: "hub",
    meaning: "the azure-iothub SDK internals the client patches have changed",
  },
  E_HUB_STATE: {
    group: "hub",
    meaning: "the hub's stored state (registry file, policies) is missing or in an unknown format",
  },
  E_HUB_TLS: { group: "hub", meaning: "the hub's TLS certificates cannot be prepared" },
  E_HUB_TWIN_INVALID: { group: "hub", meaning: "an invalid twin patch (depth, size, key, value)" },

  // ── local stack: Azurite, the Functions host, device and Function processes, the simulator ──────────
  E_AZURITE_START: { group: "stack", meaning: "Azurite (the local storage emulator) did not start" },
  E_DEVICE_PROCESS: { group: "stack", meaning: "a local device process exited, failed or is not running" },
  E_FUNCTION_PROCESS: {
    group: "stack",
    meaning: "the local Function process exited or failed, or was started twice or stopped when not running",
  },
  E_HTTP: { group: "stack", meaning: "an HTTP request to the local stack failed without a coded error body" },
  E_HTTP_INTERNAL: { group: "stack", meaning: "the local Functions host failed to handle a request" },
  E_HTTP_NOT_FOUND: { group: "stack", meaning: "the local Functions host has no such route" },
  E_SIM_WORKER: { group: "stack", meaning: "a simulator worker thread failed or exited" },

  // ── dashboard: local/dashboard (`flotilla dashboard`, `simulate --dashboard`) ─────────────────────────
  E_DASHBOARD_BROWSER: {
    group: "dashboard",
    meaning:
      "headless Chromium is missing or failed (the dashboard's browser test and screenshot script need it)",
  },
  E_DASHBOARD_CONFIG: {
    group: "dashboard",
    meaning:
      "the dashboard has no source (no Function URL, no IoT Hub connection), or its hub info file is unusable",
  },
  E_DASHBOARD_FUNCTION_AUTH: {
    group: "dashboard",
    meaning: "the Function refused the dashboard's request (401/403): a missing or wrong function key",
  },
  E_DASHBOARD_FUNCTION_RESPONSE: {
    group: "dashboard",
    meaning: "the Function's HTTP API answered with an uncoded error or a body that is not the expected JSON",
  },
  E_DASHBOARD_FUNCTION_UNREACHABLE: {
    group: "dashboard",
    meaning: "the Function's HTTP API cannot be reached (connection refused, unknown host, TLS, timeout)",
  },
  E_DASHBOARD_FUNCTION_URL: { group: "dashboard", meaning: "the Function URL is not an http(s) URL" },
  E_DASHBOARD_HUB_UNREACHABLE: {
    group: "dashboard",
    meaning: "the IoT Hub's service API cannot be reached (connection refused, unknown host, TLS, timeout)",
  },
  E_DASHBOARD_LISTEN: { group: "dashboard", meaning: "the dashboard cannot listen on its host and port" },

  // ── fleet: `flotilla fleet` (local/cli/fleet*.ts, docs/operations.md) ─────────────────────────────────
  E_FLEET_HUB: {
    group: "fleet",
    meaning: "flotilla fleet has no IoT hub to talk to, or its hub info file is unusable",
  },
  E_FLEET_HUB_UNREACHABLE: {
    group: "fleet",
    meaning: "the IoT Hub's service API cannot be reached (connection refused, unknown host, TLS, timeout)",
  },
  E_FLEET_MODULE: {
    group: "fleet",
    meaning: "not one of the Flotilla modules (trainer, update-queue, quantizer, profiler)",
  },
  E_FLEET_NO_DEVICES: { group: "fleet", meaning: "the --device or --where selects no device" },
  E_FLEET_ROLLOUT: {
    group: "fleet",
    meaning: "a rollout (ADM configuration) with an invalid id or target, or one whose id exists already",
  },

  // ── manifest: scripts/render-manifest.ts ─────────────────────────────────────────────────────────────
  E_MANIFEST_ARGS: { group: "manifest", meaning: "invalid render-manifest arguments" },
  E_MANIFEST_CREATE_OPTIONS: {
    group: "manifest",
    meaning: "a module's createOptions exceed IoT Edge's size limit",
  },
  E_MANIFEST_MODULE: { group: "manifest", meaning: "a module description file is missing or invalid" },
  E_MANIFEST_SYNTAX: {
    group: "manifest",
    meaning: "the manifest template is not valid JSON (with comments)",
  },
  E_MANIFEST_TEMPLATE: { group: "manifest", meaning: "the manifest template cannot be read" },
  E_MANIFEST_UNRESOLVED: {
    group: "manifest",
    meaning: "placeholders left unresolved in the rendered manifest",
  },

  // ── modules: the shared module host, trainer, quantizer, update queue, profiler ─────────────────────
  E_TWIN: { group: "module", meaning: "the module twin cannot update reported properties" },
  E_TRAINER_INTERNAL: { group: "trainer", meaning: "the trainer failed unexpectedly (no code of its own)" },
  E_TRAINER_STOPPED: {
    group: "trainer",
    meaning: "the trainer is stopping: the round or request was dropped",
  },
  E_UPLOAD: {
    group: "trainer",
    meaning: "sending an update chunk failed after all retries (the trainer and the quantizer alike)",
  },
  E_QUANT_BUSY: { group: "quantizer", meaning: "too many updates are waiting to be sent: one is dropped" },
  E_QUANT_CHECKSUM: { group: "quantizer", meaning: "a reassembled update does not match its size or sha256" },
  E_QUANT_CHUNK: { group: "quantizer", meaning: "an invalid update chunk (index, count, size)" },
  E_QUANT_CONFIG: { group: "quantizer", meaning: "an invalid quantizer setting" },
  E_QUANT_CONFLICT: {
    group: "quantizer",
    meaning: "a chunk disagrees with the chunks of that update received before",
  },
  E_QUANT_ENCODE: { group: "quantizer", meaning: "compressing an update failed" },
  E_QUANT_FRAME: { group: "quantizer", meaning: "a reassembled update is not a valid FLT1 frame" },
  E_QUANT_INTERNAL: { group: "quantizer", meaning: "the quantizer failed unexpectedly (no code of its own)" },
  E_QUANT_LAYOUT: {
    group: "quantizer",
    meaning: "a per-tensor codec needs the job's layout and it is unknown",
  },
  E_QUANT_META_MISMATCH: {
    group: "quantizer",
    meaning: "a chunk's properties differ from its frame's header",
  },
  E_QUANT_RESIDUAL: {
    group: "quantizer",
    meaning: "an error-feedback residual file cannot be read, written or removed",
  },
  E_QUANT_STATE_DIR: { group: "quantizer", meaning: "the quantizer's state directory cannot be created" },
  E_QUANT_STOPPED: { group: "quantizer", meaning: "the quantizer is stopping: the update was not sent" },
  E_QUANT_TOO_LARGE: { group: "quantizer", meaning: "an update exceeds the reassembly size limit" },
  E_QUEUE_CHECKSUM: { group: "queue", meaning: "a reassembled update does not match its size or sha256" },
  E_QUEUE_CONFIG: { group: "queue", meaning: "an invalid update-queue setting (limits, backoff)" },
  E_QUEUE_CONFLICT: { group: "queue", meaning: "an update id is already queued with different content" },
  E_QUEUE_CORRUPT: { group: "queue", meaning: "the queue file or a stored row is damaged" },
  E_QUEUE_DISK_FULL: { group: "queue", meaning: "the disk holding the queue file is full" },
  E_QUEUE_FRAME: { group: "queue", meaning: "an update is not a valid FLT1 frame" },
  E_QUEUE_INVALID: { group: "queue", meaning: "an invalid update or queue request (type, size, id, chunk)" },
  E_QUEUE_FULL: {
    group: "queue",
    meaning:
      "the queue holds its capacity (capacityBytes): a new update is held in memory, the trainer told, until there is room",
  },
  E_QUEUE_IO: { group: "queue", meaning: "any other queue-file I/O failure" },
  E_QUEUE_LOCKED: { group: "queue", meaning: "the queue file is in use by another process" },
  E_QUEUE_META_MISMATCH: { group: "queue", meaning: "an update's metadata differs from its frame's header" },
  E_QUEUE_NOT_FOUND: {
    group: "queue",
    meaning: "the update is not in the queue (unknown, acked or dropped)",
  },
  E_QUEUE_OPEN: { group: "queue", meaning: "the queue file cannot be opened or written" },
  E_QUEUE_SCHEMA: { group: "queue", meaning: "the queue file has a newer schema than this build reads" },
  E_QUEUE_SEND_TIMEOUT: { group: "queue", meaning: "sending a chunk did not settle in time" },
  E_QUEUE_STOPPED: { group: "queue", meaning: "the update queue is stopping or stopped" },
  E_QUEUE_STORE: {
    group: "queue",
    meaning: "the update queue did not store an update (no code in its answer)",
  },
  E_QUEUE_TOO_LARGE: { group: "queue", meaning: "an update exceeds the queue's size limit" },
  E_PROFILER: { group: "profiler", meaning: "a profiler measurement failed" },
  E_PROFILER_STOPPED: { group: "profiler", meaning: "the profiler is stopping or stopped" },
} as const satisfies Record<string, ErrorEntry>;

/** A catalogued error code. */
export type ErrorCode = keyof typeof ERRORS;

/**
 * The code parameter: a catalogued code where a literal is passed (tsc rejects `"E_TYPO"`), any string where
 * the code is a plain `string` (relayed from a device frame, an HTTP body, a Node error).
 */
export type CodeArg<C extends string> = string extends C ? C : C extends ErrorCode ? C : ErrorCode;

/** True for a code in the catalogue. */
export function isErrorCode(code: string): code is ErrorCode {
  return Object.prototype.hasOwnProperty.call(ERRORS, code);
}

/** Options of a FlotillaError: the error it wraps (ES2022 Error cause). */
export interface FlotillaErrorOptions {
  readonly cause?: unknown;
}

const FlotillaErrorClass = class FlotillaError extends Error {
  override readonly name = "FlotillaError";
  constructor(
    readonly code: string,
    message: string,
    options?: FlotillaErrorOptions,
  ) {
    super(message, options);
  }
};

/** A coded error; `cause` holds the error it wraps, if any. */
export type FlotillaError = InstanceType<typeof FlotillaErrorClass>;

/** `new FlotillaError(code, message, { cause })`; the code is checked against the catalogue (see CodeArg). */
export const FlotillaError: {
  new <C extends string>(code: CodeArg<C>, message: string, options?: FlotillaErrorOptions): FlotillaError;
  readonly prototype: FlotillaError;
} = FlotillaErrorClass;

/** Works across package copies: checks the name, not the prototype. */
export function isFlotillaError(e: unknown): e is FlotillaError {
  return typeof e === "object" && e !== null && (e as { name?: unknown }).name === "FlotillaError";
}

export function fail<C extends string>(
  code: CodeArg<C>,
  message: string,
  options?: FlotillaErrorOptions,
): never {
  throw new FlotillaErrorClass(code, message, options);
}

/** The stable code of any thrown value: a FlotillaError's, a Node error's string `code`, else E_INTERNAL. */
export function errorCode(e: unknown): string {
  if (isFlotillaError(e)) return e.code;
  const c = (e as { code?: unknown } | null)?.code;
  return typeof c === "string" ? c : "E_INTERNAL";
}

/** The one-line message of any thrown value. */
export function errorMessage(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}
