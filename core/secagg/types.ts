/**
 * Secure aggregation messages and parameters (SecAgg+: Bell et al., "Secure Single-Server Aggregation with
 * (Poly)Logarithmic Overhead", CCS 2020, on Bonawitz et al., "Practical Secure Aggregation for Privacy-Preserving
 * Machine Learning", CCS 2017).
 *
 * A round runs four steps between the server and the round's participants:
 *   1. advertise  device -> server  KeyAdvertisement: two X25519 public keys, signed with the device's identity key
 *   2. share      server -> device  ShareKeysRequest: its neighbours' advertisements and identity public keys
 *                 device -> server  ShareKeysResponse: Shamir shares of its mask key and self-mask seed, one per
 *                                   neighbour, each AES-256-GCM encrypted under the pairwise key (server can't read)
 *   3. mask       server -> device  MaskInputRequest: the encrypted shares addressed to it
 *                 device -> server  MaskedInput: its fixed-point update + self mask + pairwise masks, mod 2^32
 *   4. unmask     server -> device  UnmaskRequest: which neighbours survived and which dropped
 *                 device -> server  UnmaskResponse: self-mask shares of survivors, mask-key shares of dropouts
 *
 * Every binary field is base64url text so the messages can cross JSON transports (direct methods, twins) as is;
 * only the masked vector is binary.
 */

import type { JsonWebKey } from "node:crypto";

export type SecAggStep = "advertise" | "share" | "mask" | "unmask";
export const SECAGG_STEPS: readonly SecAggStep[] = ["advertise", "share", "mask", "unmask"];

export interface SecAggParams {
  /** k: neighbours of each participant in the masking graph (even, or n-1 for classic SecAgg). */
  readonly neighbours: number;
  /** t: shares needed to rebuild a secret; k/2 < t <= k, so no two disjoint sets of t neighbours exist. */
  readonly threshold: number;
  /** Update values are clipped to [-clipRange, clipRange] before fixed-point encoding. */
  readonly clipRange: number;
  /** The ring is Z_2^modulusBits. */
  readonly modulusBits: 32;
}

/** Which job and round a message belongs to: part of every signature and AAD (replays of another round fail). */
export interface SecAggSession {
  readonly jobId: string;
  readonly round: number;
}

/** Step 1, device -> server. */
export interface KeyAdvertisement extends SecAggSession {
  readonly deviceId: string;
  /** X25519 public key (raw 32 bytes, base64url) for encrypting shares between neighbours. */
  readonly encryptionKey: string;
  /** X25519 public key (raw 32 bytes, base64url) for the pairwise masks. */
  readonly maskingKey: string;
  /** The device's aggregation weight (its training samples), a positive integer. */
  readonly weight: number;
  /** ES256 signature (IEEE P1363 r||s, 64 bytes, base64url) over advertisementBytes(): see crypto.ts. */
  readonly signature: string;
}

/** A neighbour as relayed by the server: its advertisement and its identity public key (from Key Vault). */
export interface RelayedNeighbour {
  readonly advertisement: KeyAdvertisement;
  /** EC P-256 public JWK ({kty:"EC", crv:"P-256", x, y}, base64url coordinates). */
  readonly identityKey: JsonWebKey;
}

/** Step 2, server -> device. */
export interface ShareKeysRequest extends SecAggSession {
  readonly params: SecAggParams;
  /** Every device that advertised (U1), sorted: the masking graph is built over these. */
  readonly participants: readonly string[];
  /** Seed (base64url, 32 bytes) of the graph's random relabelling: see graph.ts. */
  readonly graphSeed: string;
  /** Fixed-point scale the server chose so the sum of |participants| clipped values cannot overflow. */
  readonly scale: number;
  /** The largest advertised weight W: devices encode (weight / W) * clip(update). */
  readonly maxWeight: number;
  /** This device's neighbours in the graph (all of them advertised). */
  readonly neighbours: readonly RelayedNeighbour[];
}

/** One Shamir share pair, encrypted for one neighbour. */
export interface EncryptedShare {
  readonly from: string;
  readonly to: string;
  /** 12-byte AES-GCM nonce, base64url. */
  readonly nonce: string;
  /** AES-256-GCM ciphertext with its 16-byte tag appended, base64url. */
  readonly ciphertext: string;
}

/** Step 2, device -> server. */
export interface ShareKeysResponse extends SecAggSession {
  readonly deviceId: string;
  readonly shares: readonly EncryptedShare[];
}

/** Step 3, server -> device: the shares other survivors of step 2 encrypted for this device. */
export interface MaskInputRequest extends SecAggSession {
  readonly shares: readonly EncryptedShare[];
}

/** Step 3, device -> server. */
export interface MaskedInput extends SecAggSession {
  readonly deviceId: string;
  /** The masked fixed-point update, one ring element per model value. */
  readonly masked: Uint32Array;
}

/** Step 4, server -> device. */
export interface UnmaskRequest extends SecAggSession {
  /** Neighbours whose masked input arrived: reveal the share of their self-mask seed. */
  readonly survivors: readonly string[];
  /** Neighbours that shared keys but sent no masked input: reveal the share of their mask key. */
  readonly dropped: readonly string[];
}

/** A revealed Shamir share (base64url) of `owner`'s secret. */
export interface RevealedShare {
  readonly owner: string;
  readonly share: string;
}

/** Step 4, device -> server. */
export interface UnmaskResponse extends SecAggSession {
  readonly deviceId: string;
  readonly selfMaskShares: readonly RevealedShare[];
  readonly maskKeyShares: readonly RevealedShare[];
}

/** What the server learns from a round: the sum, and who took part in which step. */
export interface SecAggResult {
  /** Σ over included devices of their fixed-point encoded, weighted updates, mod 2^32 (the exact ring sum). */
  readonly quantizedSum: Uint32Array;
  /** The sample-weighted mean update Σ w_i x_i / Σ w_i decoded from the ring sum. */
  readonly mean: Float32Array;
  /** Σ w_i over included devices. */
  readonly totalWeight: number;
  /** Devices whose update is in the sum (the survivors of step 3). */
  readonly included: readonly string[];
  /** Devices lost at each step (did not answer it). */
  readonly dropouts: Readonly<Record<SecAggStep, readonly string[]>>;
  /** Server compute to unmask (reconstruct secrets, remove masks, decode), ms. */
  readonly unmaskMs: number;
}

/** Signs with a device's long-term identity key: ES256 over SHA-256(data), IEEE P1363 r||s (64 bytes). */
export interface IdentitySigner {
  readonly deviceId: string;
  sign(data: Uint8Array): Promise<Uint8Array>;
}
