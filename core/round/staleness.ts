/**
 * Staleness weights for asynchronous federated learning: an update trained from global model version v − τ and
 * applied at version v counts s(τ) times (τ ≥ 0 is its staleness; every s here has s(0) = 1 and 0 < s(τ) ≤ 1).
 *
 *   poly:a     s(τ) = (1 + τ)^−a                           polynomial (Xie et al. 2019, "Asynchronous Federated
 *                                                          Optimization", §5.2: s_a(t − τ) = (t − τ + 1)^−a)
 *   poly:0.5   s(τ) = 1/√(1 + τ)                           the default: FedBuff's weight (Nguyen et al., "Federated
 *                                                          Learning with Buffered Asynchronous Aggregation",
 *                                                          AISTATS 2022, §5: staleness scaled by 1/√(1 + τ))
 *   hinge:a,b  s(τ) = 1 if τ ≤ b, else 1/(a(τ − b) + 1)    hinge (Xie et al. 2019, §5.2)
 *   const      s(τ) = 1                                    constant (Xie et al. 2019, §5.2)
 *
 * A spec string names one of them: `poly`, `poly:A`, `hinge:A,B`, `const` (case-insensitive, spaces ignored); an
 * invalid one throws FlotillaError E_CONFIG_STALENESS in one line.
 */
import { fail } from "../errors";

export type StalenessFunction =
  | { readonly kind: "poly"; readonly a: number }
  | { readonly kind: "hinge"; readonly a: number; readonly b: number }
  | { readonly kind: "const" };

/** FedBuff's 1/√(1 + τ). */
export const DEFAULT_STALENESS: StalenessFunction = { kind: "poly", a: 0.5 };
export const DEFAULT_STALENESS_SPEC = "poly:0.5";

const NUMBER = /^(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?$/;

function num(spec: string, what: string, text: string | undefined): number {
  const t = (text ?? "").trim();
  if (!NUMBER.test(t))
    fail("E_CONFIG_STALENESS", `staleness '${spec}': ${what} must be a number ≥ 0, got '${text ?? ""}'`);
  const x = Number(t);
  if (!Number.isFinite(x)) fail("E_CONFIG_STALENESS", `staleness '${spec}': ${what} is not finite`);
  return x;
}

/** Parses `poly[:a]`, `hinge:a,b` or `const`. */
export function parseStaleness(spec: string): StalenessFunction {
  if (typeof spec !== "string")
    fail("E_CONFIG_STALENESS", `staleness must be a string such as '${DEFAULT_STALENESS_SPEC}'`);
  const s = spec.replace(/\s+/g, "").toLowerCase();
  const [name, args, ...rest] = s.split(":");
  if (rest.length > 0) fail("E_CONFIG_STALENESS", `staleness '${spec}' has more than one ':'`);
  switch (name) {
    case "const":
    case "constant":
      if (args !== undefined) fail("E_CONFIG_STALENESS", `staleness '${spec}': const takes no parameter`);
      return { kind: "const" };
    case "poly":
    case "polynomial": {
      if (args === undefined || args === "") return DEFAULT_STALENESS;
      if (args.includes(",")) fail("E_CONFIG_STALENESS", `staleness '${spec}': poly takes one parameter a`);
      return { kind: "poly", a: num(spec, "a", args) };
    }
    case "hinge": {
      const parts = (args ?? "").split(",");
      if (parts.length !== 2)
        fail("E_CONFIG_STALENESS", `staleness '${spec}': hinge takes two parameters a,b (e.g. hinge:10,4)`);
      return { kind: "hinge", a: num(spec, "a", parts[0]), b: num(spec, "b", parts[1]) };
    }
    default:
      return fail(
        "E_CONFIG_STALENESS",
        `unknown staleness function '${spec}' (expected poly[:a], hinge:a,b or const)`,
      );
  }
}

/** The spec string of a staleness function (parseStaleness(formatStaleness(f)) equals f). */
export function formatStaleness(f: StalenessFunction): string {
  switch (f.kind) {
    case "const":
      return "const";
    case "poly":
      return `poly:${f.a}`;
    case "hinge":
      return `hinge:${f.a},${f.b}`;
  }
}

/** s(τ) for a staleness τ ≥ 0 (a negative or non-finite τ throws E_CONFIG_STALENESS: it is a driver's bug). */
export function stalenessWeight(f: StalenessFunction, tau: number): number {
  if (!(tau >= 0) || !Number.isFinite(tau))
    fail("E_CONFIG_STALENESS", `staleness τ must be a finite number ≥ 0, got ${tau}`);
  switch (f.kind) {
    case "const":
      return 1;
    case "poly":
      return Math.pow(1 + tau, -f.a);
    case "hinge":
      return tau <= f.b ? 1 : 1 / (f.a * (tau - f.b) + 1);
  }
}
