/**
 * IoT Plug and Play writable-property acknowledgements (https://learn.microsoft.com/azure/iot/concepts-convention
 * "Writable properties"): for each desired property a module handles, it reports the same name with
 *
 *   { "value": <the value now in effect>, "ac": <HTTP-like status>, "av": <desired $version>, "ad": <description> }
 *
 * 200 applied; 202 accepted, takes effect later (e.g. at the next round); 400 refused (out of range, wrong type,
 * unknown key: `ad` says why, and `value` stays the last good value); 500 failed while applying. `av` is the
 * `$version` of the desired properties the acknowledgement answers, so the portal, IoT Explorer and `flotilla fleet`
 * can tell an old ack from a current one.
 *
 * One home for the convention: every module acks through `writableAck`/`ackPatch`, and the host sends the patch
 * (ModuleHost.reportPatch). Issue 17's property models build on this.
 */

export const ACK_APPLIED = 200;
export const ACK_PENDING = 202;
export const ACK_REFUSED = 400;
export const ACK_FAILED = 500;

export type AckStatus = typeof ACK_APPLIED | typeof ACK_PENDING | typeof ACK_REFUSED | typeof ACK_FAILED;

/** The reported value of one writable property, per the Plug and Play convention. */
export interface WritableAck<T = unknown> {
  readonly value: T;
  readonly ac: AckStatus;
  readonly av: number;
  /** Why; `null` in a patch as sent (ModuleHost.ackDesired: it clears an earlier refusal's description). */
  readonly ad?: string | null;
}

/** One property's outcome, as a module's handler decides it. */
export interface AckOutcome<T = unknown> {
  /** The value in effect after the change (the new one when applied or pending, the last good one when refused). */
  readonly value: T;
  readonly status: AckStatus;
  /** Why (required for 400/500; optional otherwise). */
  readonly description?: string;
}

export function writableAck<T>(outcome: AckOutcome<T>, version: number): WritableAck<T> {
  const ack: WritableAck<T> = { value: outcome.value, ac: outcome.status, av: version };
  return outcome.description === undefined ? ack : { ...ack, ad: outcome.description };
}

/** The `$version` of a desired document or patch (0 when absent or not a number). */
export function desiredVersion(desired: Record<string, unknown> | undefined): number {
  const v = desired?.["$version"];
  return typeof v === "number" && Number.isFinite(v) ? v : 0;
}

/** The reported patch acknowledging several properties at `version`. */
export function ackPatch(
  outcomes: Readonly<Record<string, AckOutcome>>,
  version: number,
): Record<string, WritableAck> {
  const patch: Record<string, WritableAck> = {};
  for (const [name, outcome] of Object.entries(outcomes)) patch[name] = writableAck(outcome, version);
  return patch;
}

/**
 * Is this a well-formed acknowledgement (a test helper, and `flotilla fleet`'s reader)? `value` may be absent: an
 * ack whose value in effect is null (an unknown property's refusal, a property back to a null default) loses that
 * member in the hub, because reported patches are JSON merge patches where null removes.
 */
export function isWritableAck(v: unknown): v is WritableAck {
  if (typeof v !== "object" || v === null) return false;
  const o = v as Record<string, unknown>;
  return (
    typeof o.ac === "number" &&
    typeof o.av === "number" &&
    (o.ad === undefined || o.ad === null || typeof o.ad === "string")
  );
}
