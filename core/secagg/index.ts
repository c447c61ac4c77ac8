/**
 * Secure aggregation (SecAgg+: Bell et al. CCS 2020, on Bonawitz et al. CCS 2017): the server learns only the sum
 * of the devices' fixed-point updates. The message contract is types.ts; client.ts and server.ts run the protocol;
 * driver.ts runs a round in memory (tests, bench).
 *
 * Error codes (FlotillaError.code):
 *   E_SECAGG_PARAMS     invalid parameters (k, t, clip, modulus, n), session, weight or scale
 *   E_SECAGG_SHARES     Shamir: too few shares, inconsistent lengths, duplicate or zero x
 *   E_SECAGG_PRG        PRG: bad seed or unknown PRG
 *   E_SECAGG_GRAPH      masking graph: duplicates, bad seed, neighbours that are not the graph's
 *   E_SECAGG_KEY        an invalid, low-order or repeated X25519 public key
 *   E_SECAGG_SIGNATURE  an advertisement not signed by its device's identity key
 *   E_SECAGG_REPLAY     a message (or relayed advertisement) of another job or round
 *   E_SECAGG_DECRYPT    a share ciphertext that fails authentication or is malformed
 *   E_SECAGG_REFUSED    a client refuses to reveal (or to send its input) because the request is unsafe
 *   E_SECAGG_INPUT      an update that cannot be encoded (NaN, wrong type or length)
 *   E_SECAGG_MESSAGE    a malformed or unexpected message (unknown sender, duplicate, wrong length)
 *   E_SECAGG_STATE      a method called out of order
 *   E_SECAGG_ABORTED    the round was aborted: nothing is (or will be) unmasked
 */
export * from "./types";
export * from "./identity";
export * from "./shamir";
export * from "./prg";
export * from "./graph";
export * from "./fixed-point";
export * from "./crypto";
export * from "./params";
export * from "./client";
export * from "./server";
export * from "./driver";
export * from "./bench";
