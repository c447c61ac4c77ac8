/**
 * The Flotilla modules an operator configures through their module twins (docs/operations.md): each module's
 * IoT Plug and Play model ID, the desired keys the Function writes (never an operator's), and its writable property
 * specs — the same declarations the modules validate and ack with (modules/<m>/src/model.ts), so `flotilla fleet`
 * refuses a value exactly when the module would, before anything is written.
 */
import { FlotillaError, isFlotillaError } from "../../core/errors";
import { POLICY_PROPERTIES } from "../../core/fleet/policy";
import { moduleContracts } from "../pnp/contracts";
import type { PropertySpecs } from "../../modules/shared/writable";

export interface FleetModule {
  readonly modelId: string;
  readonly cloudKeys: readonly string[];
  readonly specs: PropertySpecs;
}

/**
 * Each module's model ID, Function keys and property specs with the modules' own defaults: the code's side of the
 * Plug and Play models (local/pnp/contracts.ts, the one list the model-vs-code test reads too).
 */
export const FLEET_MODULES: Readonly<Record<string, FleetModule>> = Object.fromEntries(
  Object.entries(moduleContracts()).map(([name, c]) => [
    name,
    { modelId: c.modelId, cloudKeys: c.cloudDesiredKeys, specs: c.specs },
  ]),
);

/** The device policy's properties per module (core/fleet/policy.ts POLICY_PROPERTIES). */
export const POLICY_MODULES = POLICY_PROPERTIES as Readonly<Record<string, readonly string[]>>;

export function fleetModule(name: string): FleetModule {
  const m = Object.hasOwn(FLEET_MODULES, name) ? FLEET_MODULES[name] : undefined;
  if (!m)
    throw new FlotillaError(
      "E_FLEET_MODULE",
      `unknown module '${name}' (expected one of ${Object.keys(FLEET_MODULES).join(", ")})`,
    );
  return m;
}

/**
 * `name=<json>` assignments -> a desired patch, each value checked with the module's own spec parser: the first bad
 * one is E_PROPERTY_UNKNOWN / E_PROPERTY_INVALID and nothing is written. `null` (back to the default) is allowed.
 */
export function parseAssignments(
  moduleName: string,
  assignments: readonly string[],
): Record<string, unknown> {
  const m = fleetModule(moduleName);
  if (assignments.length === 0)
    throw new FlotillaError("E_PROPERTY_INVALID", "give at least one <name>=<json value>");
  const patch: Record<string, unknown> = {};
  for (const a of assignments) {
    const eq = a.indexOf("=");
    if (eq <= 0) throw new FlotillaError("E_PROPERTY_INVALID", `'${a}': expected <name>=<json value>`);
    const name = a.slice(0, eq);
    const text = a.slice(eq + 1);
    if (m.cloudKeys.includes(name))
      throw new FlotillaError(
        "E_PROPERTY_UNKNOWN",
        `${moduleName}: '${name}' is written by the aggregation Function, not an operator property`,
      );
    const spec = Object.hasOwn(m.specs, name) ? m.specs[name] : undefined;
    if (!spec) {
      const known = Object.keys(m.specs);
      throw new FlotillaError(
        "E_PROPERTY_UNKNOWN",
        `${moduleName} has no writable property '${name}' (known: ${known.length ? known.join(", ") : "none"})`,
      );
    }
    if (Object.hasOwn(patch, name))
      throw new FlotillaError("E_PROPERTY_INVALID", `${name} is given more than once`);
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      throw new FlotillaError(
        "E_PROPERTY_INVALID",
        `${name}=${text.length > 40 ? text.slice(0, 37) + "..." : text}: not a JSON value (strings need quotes: ${name}='"text"')`,
      );
    }
    if (value !== null) {
      try {
        spec.parse(value);
      } catch (e) {
        const why = isFlotillaError(e) ? e.message : e instanceof Error ? e.message : String(e);
        throw new FlotillaError("E_PROPERTY_INVALID", `${moduleName} ${name}: ${why}`, { cause: e });
      }
    }
    patch[name] = value;
  }
  return patch;
}
