import type { Command } from "commander";
import { fail } from "../../core/errors";
import {
  DEFAULT_ORDERS,
  computeRdp,
  epsilonFromRdp,
  solveNoiseMultiplier,
  type RdpConversion,
} from "../../core/privacy/rdp";

type RawOptions = Record<string, string | boolean | undefined>;

function num(flag: string, raw: string | boolean | undefined): number {
  if (typeof raw !== "string" || raw.trim() === "") fail("E_DP_CONFIG", `--${flag} is required`);
  const v = Number(raw);
  if (!Number.isFinite(v)) fail("E_DP_CONFIG", `--${flag} must be a number, got '${raw}'`);
  return v;
}

function conversionOf(raw: string | boolean | undefined): RdpConversion {
  const c = raw === undefined ? "tight" : raw;
  if (c !== "tight" && c !== "classic") {
    fail("E_DP_CONFIG", `--conversion must be tight or classic, got '${String(c)}'`);
  }
  return c;
}

/** Runs `flotilla privacy` on parsed options; returns the text it prints. Exported for tests. */
export function runPrivacy(o: RawOptions): string {
  const q = num("sampling-rate", o.samplingRate);
  const steps = num("rounds", o.rounds);
  const delta = num("delta", o.delta);
  const conversion = conversionOf(o.conversion);
  const json = Boolean(o.json);
  if (o.targetEpsilon !== undefined) {
    if (o.noiseMultiplier !== undefined) {
      fail("E_DP_CONFIG", "give either --noise-multiplier or --target-epsilon, not both");
    }
    const targetEpsilon = num("target-epsilon", o.targetEpsilon);
    const r = solveNoiseMultiplier({ targetEpsilon, q, steps, delta, conversion });
    return json
      ? JSON.stringify({ noiseMultiplier: r.noiseMultiplier, epsilon: r.epsilon, order: r.order, delta })
      : `noise multiplier ${r.noiseMultiplier.toPrecision(7)} gives ε = ${r.epsilon.toPrecision(6)} ` +
          `at δ = ${delta} (target ${targetEpsilon}, order ${r.order}, ${conversion} conversion, ` +
          `q = ${q}, ${steps} rounds)`;
  }
  const sigma = num("noise-multiplier", o.noiseMultiplier);
  const rdp = computeRdp(q, sigma, steps, DEFAULT_ORDERS);
  const r = epsilonFromRdp(DEFAULT_ORDERS, rdp, delta, conversion);
  // JSON has no Infinity (JSON.stringify would print null): an unbounded ε is a coded error in both output modes.
  if (!Number.isFinite(r.epsilon)) {
    fail(
      "E_DP_INFINITE",
      `ε is infinite (no privacy) for noise multiplier ${sigma} at δ = ${delta} ` +
        `(q = ${q}, ${steps} rounds); use a noise multiplier > 0`,
    );
  }
  return json
    ? JSON.stringify({ epsilon: r.epsilon, order: r.order, delta })
    : `ε = ${r.epsilon.toPrecision(6)} at δ = ${delta} (order ${r.order}, ${conversion} conversion, ` +
        `q = ${q}, noise multiplier ${sigma}, ${steps} rounds)`;
}

/** `flotilla privacy`: RDP accounting for the Poisson-subsampled Gaussian mechanism (DP-FedAvg / DP-SGD). */
export function registerPrivacyCommand(program: Command): Command {
  return program
    .command("privacy")
    .description(
      "RDP accountant for the subsampled Gaussian mechanism: ε for a noise multiplier, or the noise " +
        "multiplier for a target ε",
    )
    .option("--sampling-rate <q>", "per-round Poisson sampling rate q in [0, 1]")
    .option("--noise-multiplier <z>", "noise std / clipping norm")
    .option("--target-epsilon <e>", "solve for the smallest noise multiplier reaching this ε")
    .option("--rounds <r>", "number of rounds (compositions)")
    .option("--delta <d>", "target δ in (0, 1)")
    .option("--conversion <c>", "RDP → (ε, δ) conversion: tight or classic", "tight")
    .option("--json", "print one JSON object")
    .action((opts: RawOptions) => {
      console.log(runPrivacy(opts));
    });
}
