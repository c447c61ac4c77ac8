/**
 * The on-device optimizer of a round's fit config (graph-spec.ts OptimizerConfig) as the CLI's `--optimizer`
 * text (`sgd`, `momentum[:BETA]`, `adam`) and as untrusted JSON (a job definition's `strategyOptions.fit.optimizer`,
 * a round order's `config.optimizer`): one parser, one validator, E_CONFIG_OPTIMIZER on anything else.
 */
import { fail } from "../errors";
import { OPTIMIZERS, type OptimizerConfig } from "./graph-spec";

/** tf.train.momentum's and PyTorch's usual β when `momentum` is given without one. */
export const DEFAULT_MOMENTUM = 0.9;

function beta(v: unknown, what: string, openTop: boolean): number {
  if (typeof v !== "number" || !Number.isFinite(v) || v < 0 || (openTop ? v >= 1 : v > 1))
    fail(
      "E_CONFIG_OPTIMIZER",
      `${what} must be a number in [0, 1${openTop ? ")" : "]"}, got ${JSON.stringify(v)}`,
    );
  return v;
}

/** `sgd` | `momentum[:BETA]` | `adam` → an OptimizerConfig. */
export function parseOptimizer(text: string): OptimizerConfig {
  const t = text.trim().toLowerCase();
  const [name, arg, ...rest] = t.split(":");
  if (rest.length > 0)
    fail("E_CONFIG_OPTIMIZER", `--optimizer '${text}': expected sgd, momentum[:BETA] or adam`);
  if (name === "sgd" && arg === undefined) return { name: "sgd" };
  if (name === "adam" && arg === undefined) return { name: "adam" };
  if (name === "momentum") {
    if (arg === undefined) return { name: "momentum", momentum: DEFAULT_MOMENTUM };
    const b = arg.trim() === "" ? NaN : Number(arg);
    return { name: "momentum", momentum: beta(b, `--optimizer momentum:BETA`, true) };
  }
  return fail("E_CONFIG_OPTIMIZER", `--optimizer '${text}': expected sgd, momentum[:BETA] or adam`);
}

/** The text form of an optimizer (parseOptimizer's input; adam's non-default options shown as JSON). */
export function formatOptimizer(o: OptimizerConfig): string {
  if (o.name === "momentum")
    return `momentum:${o.momentum ?? DEFAULT_MOMENTUM}${o.nesterov ? " (nesterov)" : ""}`;
  if (o.name === "adam" && (o.beta1 !== undefined || o.beta2 !== undefined || o.epsilon !== undefined))
    return `adam ${JSON.stringify(o)}`;
  return o.name;
}

/** Checks untrusted JSON (a job definition, a round order) and returns the optimizer with only its known fields. */
export function validateOptimizer(v: unknown, what = "optimizer"): OptimizerConfig {
  if (typeof v === "string") return parseOptimizer(v);
  if (typeof v !== "object" || v === null || Array.isArray(v))
    return fail("E_CONFIG_OPTIMIZER", `${what} must be an object {name: ${OPTIMIZERS.join(" | ")}}`);
  const o = v as Record<string, unknown>;
  const known = new Set(["name", "momentum", "nesterov", "beta1", "beta2", "epsilon"]);
  const extra = Object.keys(o).find((k) => !known.has(k));
  if (extra !== undefined) fail("E_CONFIG_OPTIMIZER", `${what} has an unknown field '${extra}'`);
  switch (o.name) {
    case "sgd":
      if (Object.keys(o).length > 1) fail("E_CONFIG_OPTIMIZER", `${what}: sgd takes no options`);
      return { name: "sgd" };
    case "momentum":
      if (o.beta1 !== undefined || o.beta2 !== undefined || o.epsilon !== undefined)
        fail("E_CONFIG_OPTIMIZER", `${what}: momentum takes momentum and nesterov only`);
      if (o.nesterov !== undefined && typeof o.nesterov !== "boolean")
        fail("E_CONFIG_OPTIMIZER", `${what}.nesterov must be true or false`);
      return {
        name: "momentum",
        momentum: o.momentum === undefined ? DEFAULT_MOMENTUM : beta(o.momentum, `${what}.momentum`, true),
        ...(o.nesterov === true ? { nesterov: true } : {}),
      };
    case "adam": {
      if (o.momentum !== undefined || o.nesterov !== undefined)
        fail("E_CONFIG_OPTIMIZER", `${what}: adam takes beta1, beta2 and epsilon only`);
      const eps = o.epsilon;
      if (eps !== undefined && (typeof eps !== "number" || !Number.isFinite(eps) || eps <= 0 || eps > 1))
        fail("E_CONFIG_OPTIMIZER", `${what}.epsilon must be a number in (0, 1], got ${JSON.stringify(eps)}`);
      return {
        name: "adam",
        ...(o.beta1 !== undefined ? { beta1: beta(o.beta1, `${what}.beta1`, true) } : {}),
        ...(o.beta2 !== undefined ? { beta2: beta(o.beta2, `${what}.beta2`, true) } : {}),
        ...(eps !== undefined ? { epsilon: eps as number } : {}),
      };
    }
    default:
      return fail(
        "E_CONFIG_OPTIMIZER",
        `${what}.name must be one of ${OPTIMIZERS.join(", ")}, got ${JSON.stringify(o.name)}`,
      );
  }
}
