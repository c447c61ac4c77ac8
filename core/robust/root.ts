/**
 * FLTrust's server update (Cao, Fang, Liu, Gong, "FLTrust: Byzantine-robust Federated Learning via Trust
 * Bootstrapping", NDSS 2021, Algorithm 1, ServerUpdate): each round the server trains the current global model on
 * its own small clean root dataset (the paper uses ~100 samples) exactly as a device would — the job's local
 * training config, the same engine — and the resulting delta g₀ is what every device's update is compared with
 * (core/robust/rules.ts flTrust). Used by the simulator; any server holding a root dataset can use it.
 */
import type { Dataset } from "../data/dataset";
import type { LocalModel } from "../engine/types";
import { fail } from "../errors";
import type { FitConfig } from "../strategies/strategy";
import { allFinite } from "../strategies/fedavg";

/** The device id the root update's fit config is drawn for (its own per-round seed, like any device's). */
export const ROOT_DEVICE_ID = "fltrust-root";

/**
 * A `JobOptions.rootUpdate`: `(global, round) => g₀`, training `model` (shared: its weights are set each call) on
 * `root` with `fitConfig(round)` from `global`.
 *
 * FLTrust's server and clients run the same number of local SGD iterations (Algorithm 1: R_l for both), and g₀'s
 * norm is the norm every trusted update is rescaled to. Our fit config counts epochs, so with `deviceSamples` (a
 * typical device's sample count) the root set is trained for epochs × max(1, round(deviceSamples / root size)):
 * about as many steps as a device takes, so the aggregate moves as far as a device's update would.
 */
export function rootUpdater(
  model: LocalModel,
  root: Dataset,
  fitConfig: (round: number) => FitConfig,
  deviceSamples?: number,
): (global: Float32Array, round: number) => Promise<Float32Array> {
  if (root.n < 1) fail("E_CONFIG_AGGREGATOR", "fltrust: the root dataset is empty");
  const scale =
    deviceSamples !== undefined && deviceSamples > 0 ? Math.max(1, Math.round(deviceSamples / root.n)) : 1;
  return async (global, round) => {
    if (global.length !== model.numParams)
      fail(
        "E_STRATEGY_SIZE",
        `fltrust: the global model has ${global.length} values, the root model ${model.numParams}`,
      );
    const c = fitConfig(round);
    model.setWeights(global);
    await model.train(root, {
      epochs: c.epochs * scale,
      batchSize: c.batchSize,
      lr: c.lr,
      ...(c.mu !== undefined ? { mu: c.mu } : {}),
      ...(c.optimizer !== undefined ? { optimizer: c.optimizer } : {}),
      seed: c.seed,
    });
    const w = model.getWeights();
    const delta = new Float32Array(global.length);
    for (let i = 0; i < delta.length; i++) delta[i] = w[i]! - global[i]!;
    // A diverged root update would trust nobody (cosine 0) or everybody at random: say so instead.
    if (!allFinite(delta))
      fail("E_MODEL_DIVERGED", `fltrust: the server's root update of round ${round} is not finite`);
    return delta;
  };
}
