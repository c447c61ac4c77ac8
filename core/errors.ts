/**
 * Typed errors with stable codes. Callers branch on `code`, never on message text
 * (the Azure SDK's RestError pattern). Each component owns a code prefix:
 *   E_CONFIG_*  configuration and CLI input      E_DATA_*    datasets and loaders
 *   E_MODEL_*   model specs and weight layouts   E_PROTO_*   round protocol messages
 *   E_STRATEGY_* strategies                      E_TRANSPORT_* transports
 */
export class FlotillaError extends Error {
  override readonly name = "FlotillaError";
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** Works across package copies: checks the name, not the prototype. */
export function isFlotillaError(e: unknown): e is FlotillaError {
  return typeof e === "object" && e !== null && (e as { name?: unknown }).name === "FlotillaError";
}

export function fail(code: string, message: string): never {
  throw new FlotillaError(code, message);
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
