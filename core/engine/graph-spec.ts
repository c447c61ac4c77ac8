/**
 * The layer graph every Flotilla model is (issue 14): a JSON description close to a Keras / TensorFlow.js Layers
 * model config, so an imported Keras model (`core/engine/keras.ts`) and the built-in kinds (presets, see
 * `model-spec.ts`) are the same thing. Pure types and constants: no tfjs.
 *
 * Conventions:
 * - Layer `type` is the Keras class name; options use the tfjs-layers camelCase names (kernelSize, poolSize, ...),
 *   with 2-D sizes always as [h, w] pairs.
 * - Tensors are channels-last (NHWC for images, [time, channels] for sequences), like Keras.
 * - `inputs` names the layers a layer reads (graph edges); absent = the previous layer in `layers` (the model's
 *   input for the first). The model input is called `INPUT_NODE`. Add and Concatenate take 2+ inputs, every other
 *   layer exactly one.
 * - The model's output is `output` (default: the last layer). Its activation is part of the graph (softmax for a
 *   classifier, sigmoid for binary, linear for regression); losses are computed stably from the pre-activation.
 * - Weights: one flat Float32Array, one layout entry per weight tensor, in layer order then Keras weight order
 *   (Dense: kernel [in, out], bias; Conv: kernel [k.., in, out], bias; DepthwiseConv2D: depthwise_kernel
 *   [kh, kw, in, mult], bias; SeparableConv2D: depthwise_kernel, pointwise_kernel [1, 1, in·mult, out], bias;
 *   BatchNormalization: gamma, beta, moving_mean, moving_variance; LSTM: kernel [in, 4u], recurrent_kernel
 *   [u, 4u], bias [4u] (gates i, f, c, o); GRU: kernel [in, 3u], recurrent_kernel [u, 3u], bias [3u], or [2, 3u]
 *   with resetAfter (gates z, r, h); Embedding: embeddings [inputDim, outputDim]). Entry names are
 *   `<layer name>/<weight name>`.
 */

export const INPUT_NODE = "input";

export type ActivationName =
  | "linear"
  | "relu"
  | "relu6"
  | "elu"
  | "selu"
  | "sigmoid"
  | "hard_sigmoid"
  | "tanh"
  | "softmax"
  | "softplus"
  | "softsign"
  | "swish";

export type Padding = "same" | "valid";

interface Base {
  /** Unique within the graph; not `INPUT_NODE`. */
  readonly name: string;
  readonly inputs?: readonly string[];
}

export interface DenseLayer extends Base {
  readonly type: "Dense";
  readonly units: number;
  readonly activation?: ActivationName;
  readonly useBias?: boolean;
}
export interface Conv1DLayer extends Base {
  readonly type: "Conv1D";
  readonly filters: number;
  readonly kernelSize: number;
  readonly strides?: number;
  readonly padding?: Padding;
  readonly dilationRate?: number;
  readonly activation?: ActivationName;
  readonly useBias?: boolean;
}
export interface Conv2DLayer extends Base {
  readonly type: "Conv2D";
  readonly filters: number;
  readonly kernelSize: readonly [number, number];
  readonly strides?: readonly [number, number];
  readonly padding?: Padding;
  readonly dilationRate?: readonly [number, number];
  readonly activation?: ActivationName;
  readonly useBias?: boolean;
}
export interface DepthwiseConv2DLayer extends Base {
  readonly type: "DepthwiseConv2D";
  readonly kernelSize: readonly [number, number];
  readonly strides?: readonly [number, number];
  readonly padding?: Padding;
  readonly depthMultiplier?: number;
  readonly activation?: ActivationName;
  readonly useBias?: boolean;
}
export interface SeparableConv2DLayer extends Base {
  readonly type: "SeparableConv2D";
  readonly filters: number;
  readonly kernelSize: readonly [number, number];
  readonly strides?: readonly [number, number];
  readonly padding?: Padding;
  readonly depthMultiplier?: number;
  readonly activation?: ActivationName;
  readonly useBias?: boolean;
}
export interface Pool1DLayer extends Base {
  readonly type: "MaxPooling1D" | "AveragePooling1D";
  readonly poolSize: number;
  /** Default poolSize. */
  readonly strides?: number;
  readonly padding?: Padding;
}
export interface Pool2DLayer extends Base {
  readonly type: "MaxPooling2D" | "AveragePooling2D";
  readonly poolSize: readonly [number, number];
  readonly strides?: readonly [number, number];
  readonly padding?: Padding;
}
export interface GlobalPoolLayer extends Base {
  readonly type: "GlobalAveragePooling1D" | "GlobalAveragePooling2D";
}
export interface FlattenLayer extends Base {
  readonly type: "Flatten";
}
export interface ReshapeLayer extends Base {
  readonly type: "Reshape";
  /** Per-sample target shape; one entry may be -1. */
  readonly targetShape: readonly number[];
}
export interface DropoutLayer extends Base {
  readonly type: "Dropout";
  readonly rate: number;
}
export interface BatchNormLayer extends Base {
  readonly type: "BatchNormalization";
  /** Only the last (channel) axis is supported, as Keras's default. */
  readonly axis?: -1;
  readonly momentum?: number;
  readonly epsilon?: number;
  readonly center?: boolean;
  readonly scale?: boolean;
}
export interface ActivationLayer extends Base {
  readonly type: "Activation";
  readonly activation: ActivationName;
}
export interface LstmLayer extends Base {
  readonly type: "LSTM";
  readonly units: number;
  readonly activation?: ActivationName;
  readonly recurrentActivation?: ActivationName;
  readonly returnSequences?: boolean;
  readonly useBias?: boolean;
  readonly unitForgetBias?: boolean;
}
export interface GruLayer extends Base {
  readonly type: "GRU";
  readonly units: number;
  readonly activation?: ActivationName;
  readonly recurrentActivation?: ActivationName;
  readonly returnSequences?: boolean;
  readonly useBias?: boolean;
  /** Keras 2+ default true (CuDNN-compatible, bias [2, 3u]); tfjs-layers' default false. */
  readonly resetAfter?: boolean;
}
export interface EmbeddingLayer extends Base {
  readonly type: "Embedding";
  readonly inputDim: number;
  readonly outputDim: number;
}
export interface AddLayer extends Base {
  readonly type: "Add";
}
export interface ConcatenateLayer extends Base {
  readonly type: "Concatenate";
  /** Only the last axis (-1) is supported. */
  readonly axis?: -1;
}

export type LayerSpec =
  | DenseLayer
  | Conv1DLayer
  | Conv2DLayer
  | DepthwiseConv2DLayer
  | SeparableConv2DLayer
  | Pool1DLayer
  | Pool2DLayer
  | GlobalPoolLayer
  | FlattenLayer
  | ReshapeLayer
  | DropoutLayer
  | BatchNormLayer
  | ActivationLayer
  | LstmLayer
  | GruLayer
  | EmbeddingLayer
  | AddLayer
  | ConcatenateLayer;

export type LayerType = LayerSpec["type"];

export const LAYER_TYPES: readonly LayerType[] = [
  "Dense",
  "Conv1D",
  "Conv2D",
  "DepthwiseConv2D",
  "SeparableConv2D",
  "MaxPooling1D",
  "MaxPooling2D",
  "AveragePooling1D",
  "AveragePooling2D",
  "GlobalAveragePooling1D",
  "GlobalAveragePooling2D",
  "Flatten",
  "Reshape",
  "Dropout",
  "BatchNormalization",
  "Activation",
  "LSTM",
  "GRU",
  "Embedding",
  "Add",
  "Concatenate",
];

/**
 * - categorical_crossentropy: integer labels one-hot encoded by the engine, softmax output.
 * - sparse_categorical_crossentropy: integer labels, softmax output (the same loss; both names are accepted).
 * - binary_crossentropy: labels 0/1, one sigmoid output.
 * - mse: regression against `Dataset.targets`, or (task "reconstruction") against the input.
 */
export type LossName =
  "categorical_crossentropy" | "sparse_categorical_crossentropy" | "binary_crossentropy" | "mse";

/**
 * What the model does, which fixes the metrics in results: classification (accuracy), binary (accuracy, AUC),
 * regression (MAE), reconstruction (anomaly accuracy of the reconstruction error, label 0 = normal; and MAE).
 */
export type Task = "classification" | "binary" | "regression" | "reconstruction";

/**
 * BatchNormalization in federation. "aggregate" (default): γ, β and the running mean/variance travel with the
 * model and are averaged like every other weight, so the published global model is complete and usable on any
 * device and in ONNX. "local": FedBN (Li et al., ICLR 2021, "FedBN: Federated Learning on Non-IID Features via
 * Local Batch Normalization") keeps every BatchNormalization weight on the device (a device applies its own on top
 * of each global model; its upload's BN deltas are zero), for fleets whose devices see shifted features.
 */
export type BnPolicy = "aggregate" | "local";

export interface GraphSpec {
  readonly kind: "graph";
  /** Display name (e.g. the imported Keras model's name). */
  readonly name?: string;
  /** Per-sample input shape (no batch dimension). */
  readonly inputShape: readonly number[];
  /** "int32" for models whose first layer is an Embedding (token ids); default float32. */
  readonly inputDtype?: "float32" | "int32";
  readonly layers: readonly LayerSpec[];
  /** The output layer; default the last layer. */
  readonly output?: string;
  readonly loss: LossName;
  readonly task: Task;
  /** Classes for classification (output width), 2 for binary, the output width for regression/reconstruction. */
  readonly numClasses: number;
  readonly bnPolicy?: BnPolicy;
}

/** On-device optimizer of a round's local training (FitConfig.optimizer, TrainOptions.optimizer). Default sgd. */
export type OptimizerConfig =
  | { readonly name: "sgd" }
  /** Heavy-ball momentum as tf.train.momentum / torch.optim.SGD(momentum): v ← βv + g, w ← w − lr·v. */
  | { readonly name: "momentum"; readonly momentum?: number; readonly nesterov?: boolean }
  /** Kingma & Ba 2015; defaults β1 0.9, β2 0.999, ε 1e-7 (Keras). State starts fresh each round. */
  | { readonly name: "adam"; readonly beta1?: number; readonly beta2?: number; readonly epsilon?: number };

export const OPTIMIZERS: readonly OptimizerConfig["name"][] = ["sgd", "momentum", "adam"];
