/**
 * A module's writable properties (IoT Plug and Play, DTDL v3 `Property` with `writable: true`): the operator sets
 * them in the module twin's desired properties, the module validates each one, applies it (at once, or at its next
 * round while one runs) and acknowledges it with the Plug and Play convention (modules/shared/pnp.ts):
 *
 *   200 applied  ·  202 accepted, applies when the running round ends  ·  400 refused (why in `ad`)  ·
 *   500 failed while applying
 *
 * - A refused value never replaces the last good one: the ack's `value` is the value in effect. After a restart the
 *   last good value is read back from the module's own reported ack (and given to the apply hook, as any change),
 *   so an invalid desired value set meanwhile does not reset the module to its defaults.
 * - `null` (the operator deleting the property) is "back to the default".
 * - A desired key that is neither one of the module's properties nor one the Function writes (`cloudKeys`: round
 *   orders, acknowledgements, ...) is acked 400 "unknown property".
 * - At a twin read (the whole desired document, after every reconnection), a property no longer present goes back to
 *   its default; one whose value and version were acked already is not acked again (ModuleHost.ackDesired).
 * - A next-round property set, reset (null) or removed while a round runs waits (202) unless it is the value in
 *   effect already.
 * - Nothing an operator sets can throw out of here: a parser or apply hook that throws is a 400 or a 500 ack, its
 *   reason one bounded line with a code (E_PROPERTY_INVALID for a parser's plain Error, E_INTERNAL for a hook's);
 *   Object.prototype's names (`constructor`, ...) are unknown properties; `__proto__` is logged, never acked.
 *
 * Each module declares its properties once (modules/<name>/src/model.ts): the specs here carry what the DTDL model
 * says of them (schema, unit, range, description), and test/dtdl checks the model files against them.
 */
import { FlotillaError, isFlotillaError } from "../../core/errors";
import { numberIn, show } from "../../core/fleet/policy";
import {
  ACK_APPLIED,
  ACK_FAILED,
  ACK_PENDING,
  ACK_REFUSED,
  desiredVersion,
  isWritableAck,
  type AckOutcome,
} from "./pnp";

/** When a new value takes effect. */
export type Applies = "now" | "next-round";

/** One writable property, as the module declares it and its DTDL model describes it. */
export interface PropertySpec<T = unknown> {
  /** The DTDL v3 schema: a primitive name ("boolean", "integer", "long", "double", "string") or a complex schema. */
  readonly schema: string | Readonly<Record<string, unknown>>;
  /** DTDL QuantitativeTypes extension: [semantic type, unit], e.g. ["TimeSpan", "minute"], ["DataSize", "byte"]. */
  readonly unit?: readonly [string, string];
  /** The allowed range (numbers), stated in the model's description. */
  readonly minimum?: number;
  readonly maximum?: number;
  /** One or two sentences: what it does (the model's description, docs/operations.md). */
  readonly description: string;
  readonly default: T;
  readonly applies: Applies;
  /** Parses a desired value (never null: the framework maps null to `default`); throws E_PROPERTY_INVALID. */
  parse(value: unknown): T;
}

export type PropertySpecs = Readonly<Record<string, PropertySpec<any>>>; // eslint-disable-line @typescript-eslint/no-explicit-any
export type ValuesOf<S extends PropertySpecs> = { -readonly [K in keyof S]: S[K]["default"] };

export interface WritableOptions<S extends PropertySpecs> {
  readonly specs: S;
  /** Desired keys the Function writes for its own protocol: handled elsewhere, never acked nor refused. */
  readonly cloudKeys: readonly string[];
  /** Sends acknowledgements (ModuleHost.ackDesired). */
  readonly ack: (outcomes: Readonly<Record<string, AckOutcome>>, version: number) => void;
  /** A value takes effect (after validation). Throwing acks 500 and keeps the previous value. */
  readonly apply?: <K extends keyof S & string>(
    name: K,
    value: ValuesOf<S>[K],
    previous: ValuesOf<S>[K],
  ) => void;
  /** A round is running: `next-round` properties wait (202) until applyPending(). */
  readonly busy?: () => boolean;
  /** Reported keys the module's state uses: a desired key among them is logged, never acked. */
  readonly reservedKeys?: readonly string[];
  readonly log?: (level: "info" | "warn", line: string) => void;
}

/** Equal values (JSON); a value JSON cannot write (nesting too deep for the stack) is never equal. */
function same(a: unknown, b: unknown): boolean {
  if (a === b) return true;
  try {
    return JSON.stringify(a) === JSON.stringify(b);
  } catch {
    return false;
  }
}

/** The longest `ad` (and reason in a log line): an ack is a reported property, and twins are small (32 KB). */
const MAX_REASON = 240;

/**
 * Why, as one bounded line with a stable code: a FlotillaError's own code; anything else a parser throws is
 * `fallback` (E_PROPERTY_INVALID: the value did not parse), anything an apply hook throws E_INTERNAL.
 */
function reason(e: unknown, fallback: "E_PROPERTY_INVALID" | "E_INTERNAL"): string {
  let text: string;
  if (isFlotillaError(e)) text = `${e.code}: ${e.message}`;
  else {
    let m: string;
    try {
      m = e instanceof Error ? e.message : String(e);
    } catch {
      m = "an unprintable error";
    }
    text = `${fallback}: ${m}`;
  }
  // eslint-disable-next-line no-control-regex -- control characters would break the one-line reason
  text = text.replace(/[\u0000-\u001f\u007f]+/g, " ").trim();
  return text.length > MAX_REASON ? `${text.slice(0, MAX_REASON - 3)}...` : text;
}

/** A desired document or patch as an object (anything else: an empty one). */
function documentOf(v: unknown): Record<string, unknown> {
  return typeof v === "object" && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : {};
}

/**
 * Desired names that can never be acknowledged: `__proto__` cannot be written back as a reported property through
 * plain objects (assigning it replaces an object's prototype), so it is logged and ignored.
 */
const UNREPORTABLE = new Set(["__proto__"]);

const NOT_SET = "not set: the default";
const WAITING = "applies when the running round ends";

export class WritableProperties<S extends PropertySpecs> {
  private readonly current: ValuesOf<S>;
  private readonly pending = new Map<keyof S & string, { value: unknown; version: number }>();
  private restored = false;

  constructor(private readonly opts: WritableOptions<S>) {
    const v: Record<string, unknown> = {};
    for (const [k, spec] of Object.entries(opts.specs)) v[k] = spec.default;
    this.current = v as ValuesOf<S>;
  }

  /** The values in effect. */
  values(): Readonly<ValuesOf<S>> {
    return this.current;
  }
  get<K extends keyof S & string>(name: K): ValuesOf<S>[K] {
    return this.current[name];
  }
  /** The properties waiting for the running round to end (202). */
  pendingNames(): string[] {
    return [...this.pending.keys()];
  }

  /**
   * A twin read: the whole desired document (and the module's reported properties, read once for the last good
   * values: each restored value goes through the apply hook, as any change). Properties absent from `desired` go
   * back to their defaults (a next-round one at the end of the running round).
   */
  onTwin(desired: Record<string, unknown>, reported?: Record<string, unknown>): void {
    desired = documentOf(desired);
    if (!this.restored) {
      this.restored = true;
      this.restore(documentOf(reported));
    }
    const version = desiredVersion(desired);
    const outcomes: Record<string, AckOutcome> = {};
    for (const name of Object.keys(this.opts.specs) as (keyof S & string)[]) {
      if (Object.hasOwn(desired, name)) continue;
      const def = this.opts.specs[name].default;
      if (same(this.current[name], def) && !this.pending.has(name)) continue;
      outcomes[name] = this.offer(name, def, version, NOT_SET);
    }
    Object.assign(outcomes, this.handle(desired, version));
    this.opts.ack(outcomes, version);
  }

  /** A desired-properties patch (only the names it carries). */
  onPatch(delta: Record<string, unknown>): void {
    delta = documentOf(delta);
    const version = desiredVersion(delta);
    this.opts.ack(this.handle(delta, version), version);
  }

  /** The running round ended: the values that waited (202) take effect and are acked 200 (at their own `av`). */
  applyPending(): void {
    if (this.pending.size === 0) return;
    const byVersion = new Map<number, Record<string, AckOutcome>>();
    for (const [name, p] of [...this.pending]) {
      this.pending.delete(name);
      const o = byVersion.get(p.version) ?? {};
      o[name] = this.change(name, p.value as ValuesOf<S>[typeof name], { status: ACK_APPLIED });
      byVersion.set(p.version, o);
    }
    for (const [version, outcomes] of byVersion) this.opts.ack(outcomes, version);
  }

  /** The last good values from the module's own acks (a restart): applied like changes, never acked here. */
  private restore(reported: Record<string, unknown>): void {
    for (const [name, spec] of Object.entries(this.opts.specs)) {
      if (!Object.hasOwn(reported, name)) continue;
      const ack = reported[name];
      if (!isWritableAck(ack) || ack.value === null || ack.value === undefined) continue;
      let v: unknown;
      try {
        v = spec.parse(ack.value);
      } catch {
        continue; // a reported value that no longer parses is ignored: the default stands
      }
      this.change(name as keyof S & string, v as ValuesOf<S>[keyof S & string], { status: ACK_APPLIED });
    }
  }

  private handle(desired: Record<string, unknown>, version: number): Record<string, AckOutcome> {
    const outcomes: Record<string, AckOutcome> = {};
    const cloud = new Set(this.opts.cloudKeys);
    const reserved = new Set(this.opts.reservedKeys ?? []);
    for (const [name, raw] of Object.entries(desired)) {
      if (name.startsWith("$") || cloud.has(name)) continue;
      if (reserved.has(name) || UNREPORTABLE.has(name)) {
        this.opts.log?.(
          "warn",
          `desired '${name}' is ignored: ${UNREPORTABLE.has(name) ? "it cannot be acknowledged" : "the module reports its own state under that name"}`,
        );
        continue;
      }
      // Own names only: `constructor`, `toString`, ... are unknown properties, not Object.prototype's members.
      const spec = Object.hasOwn(this.opts.specs, name) ? this.opts.specs[name] : undefined;
      if (spec === undefined) {
        const known = Object.keys(this.opts.specs).join(", ");
        outcomes[name] = {
          value: null,
          status: ACK_REFUSED,
          description: reason(
            new FlotillaError("E_PROPERTY_UNKNOWN", `unknown property '${name}' (known: ${known})`),
            "E_PROPERTY_INVALID",
          ),
        };
        this.opts.log?.("warn", `desired ${show(name)} refused: not a writable property of this module`);
        continue;
      }
      const key = name as keyof S & string;
      let value: unknown;
      try {
        value = raw === null ? spec.default : spec.parse(raw);
      } catch (e) {
        const why = reason(e, "E_PROPERTY_INVALID");
        outcomes[name] = { value: this.current[key], status: ACK_REFUSED, description: why };
        this.opts.log?.("warn", `desired ${name} = ${show(raw)} refused: ${why}`);
        continue;
      }
      outcomes[name] = this.offer(key, value as ValuesOf<S>[typeof key], version);
    }
    return outcomes;
  }

  /**
   * A valid value: applied now (200), or, for a next-round property while a round runs and the value is not the one
   * in effect, kept until applyPending (202).
   */
  private offer<K extends keyof S & string>(
    name: K,
    value: ValuesOf<S>[K],
    version: number,
    description?: string,
  ): AckOutcome {
    if (this.opts.specs[name].applies === "next-round" && this.isBusy() && !same(this.current[name], value)) {
      this.pending.set(name, { value, version });
      return { value, status: ACK_PENDING, description: WAITING };
    }
    this.pending.delete(name);
    return this.change(name, value, {
      status: ACK_APPLIED,
      ...(description === undefined ? {} : { description }),
    });
  }

  private isBusy(): boolean {
    try {
      return this.opts.busy?.() ?? false;
    } catch {
      return true; // unknown: a next-round value waits rather than change a round that may be running
    }
  }

  /** Applies `value` (the apply hook first; a throw keeps the previous value and is a 500). */
  private change<K extends keyof S & string>(
    name: K,
    value: ValuesOf<S>[K],
    ok: Omit<AckOutcome, "value">,
  ): AckOutcome {
    const previous = this.current[name];
    const changed = !same(previous, value);
    try {
      if (changed) this.opts.apply?.(name, value, previous);
    } catch (e) {
      const why = reason(e, "E_INTERNAL");
      this.opts.log?.("warn", `applying ${name} = ${show(value)} failed: ${why}`);
      return { value: previous, status: ACK_FAILED, description: why };
    }
    this.current[name] = value;
    if (changed) this.opts.log?.("info", `${name} = ${show(value)}`);
    return { value, ...ok };
  }
}

// --- spec helpers ------------------------------------------------------------------------------------------------

export function booleanProperty(o: {
  name: string;
  description: string;
  default: boolean;
  applies?: Applies;
}): PropertySpec<boolean> {
  return {
    schema: "boolean",
    description: o.description,
    default: o.default,
    applies: o.applies ?? "now",
    parse(v) {
      if (typeof v !== "boolean") throw invalidValue(`${o.name} must be true or false, not ${show(v)}`);
      return v;
    },
  };
}

export function numberProperty(o: {
  name: string;
  schema: "integer" | "long" | "double";
  minimum: number;
  maximum: number;
  unit?: readonly [string, string];
  description: string;
  default: number;
  applies?: Applies;
}): PropertySpec<number> {
  return {
    schema: o.schema,
    ...(o.unit ? { unit: o.unit } : {}),
    minimum: o.minimum,
    maximum: o.maximum,
    description: o.description,
    default: o.default,
    applies: o.applies ?? "now",
    parse: (v) => numberIn(o.name, v, o.minimum, o.maximum, o.schema !== "double"),
  };
}

/** A property whose parser is the core's (e.g. core/fleet/policy.ts parsePolicyValue). */
export function customProperty<T>(
  o: Omit<PropertySpec<T>, "applies"> & { applies?: Applies },
): PropertySpec<T> {
  return { ...o, applies: o.applies ?? "now" };
}

function invalidValue(message: string): FlotillaError {
  return new FlotillaError("E_PROPERTY_INVALID", message);
}
