/**
 * Fleet-wide evaluation (docs/evaluation.md): each device evaluates a published global model on its own held-out
 * data and reports one `DeviceEvaluation`; the round engine's owner (the simulator, the aggregation Function) folds
 * a model's evaluations into one `FleetEvaluation` in that round's record: the sample-weighted metrics (the number
 * a centralised test set would give if the fleet's held-out data were pooled), their spread across devices and the
 * worst decile (per-device fairness, as in q-FFL, Li et al. 2020, "Fair Resource Allocation in Federated
 * Learning", ICLR, which reports the worst 10% of devices' accuracy).
 */

/** One device's evaluation of one global model (the model published after `round`). */
export interface DeviceEvaluation {
  readonly deviceId: string;
  /** The round whose global model was evaluated (0: the initial model). */
  readonly round: number;
  /** Held-out samples evaluated. */
  readonly samples: number;
  /** Classification / binary tasks. */
  readonly accuracy?: number;
  readonly loss?: number;
  /** Regression / reconstruction tasks. */
  readonly mae?: number;
}

/** Spread of one metric across devices (each device counts once, whatever its sample count). */
export interface MetricSpread {
  readonly min: number;
  readonly p10: number;
  readonly median: number;
  readonly p90: number;
  readonly max: number;
  readonly std: number;
}

/** A global model's evaluation by the fleet, in its round's record. */
export interface FleetEvaluation {
  /** The round whose global model this is. */
  readonly round: number;
  /** Devices whose evaluation is included, and their held-out samples. */
  readonly devices: number;
  readonly samples: number;
  /** Sample-weighted means over the devices. */
  readonly accuracy?: number;
  readonly loss?: number;
  readonly mae?: number;
  /** Spread across devices of the task's main metric (accuracy, else MAE). */
  readonly spread?: MetricSpread;
  /**
   * The worst 10% of devices (at least one) by the main metric: their sample-weighted metric and who they are
   * (lowest accuracy, or highest MAE).
   */
  readonly worstDecile?: { readonly value: number; readonly devices: readonly string[] };
}
