/**
 * A device's side of SecAgg+ (Bell et al. CCS 2020, Fig. 2-3, "SecAgg+"; the per-step checks follow Bonawitz et
 * al. CCS 2017, Fig. 4, "Secure aggregation protocol", User side of rounds 0-4 in the active-adversary variant, minus
 * the consistency-check round).
 *
 *   start       round 0 AdvertiseKeys: two fresh X25519 key pairs (encryption c, masking s) and a 32-byte self-mask
 *               seed b; the advertisement is signed with the device's long-term identity key.
 *   shareKeys   round 1 ShareKeys: check the request is for this session, recompute the masking graph, verify every
 *               neighbour's advertisement (session, signature under its identity key), then Shamir-share s_sk and
 *               b with threshold t among the neighbours, each share pair AES-GCM encrypted for its neighbour.
 *   maskInput   round 2 MaskedInputCollection: decrypt the shares addressed to this device (U2 ∩ N(i)), refuse if
 *               fewer than t neighbours shared, then y = enc(x) + PRG(b) + sum_j ±PRG(s_ij) mod 2^32.
 *   unmask      round 4 Unmasking: reveal b-shares of surviving neighbours and s_sk-shares of dropped ones, never
 *               both for one neighbour (across all calls), never for a neighbour that did not share with it.
 *
 * Failure policy: a request for another session is rejected (E_SECAGG_REPLAY) without touching the state (it is
 * not addressed to this round). Any other failure of a step (bad signature, wrong graph, failed decryption, a
 * refused unmask request) moves the client to "failed" for good: a device never answers a second, different
 * version of a step, so a server cannot collect two independent sharings of one secret or probe with retries.
 * A repeated unmask request (a retransmission) is answered if it is consistent with what was revealed before.
 * Secrets are dropped (and zeroed where the runtime allows) once they are no longer needed.
 */
import { randomBytes, type JsonWebKey, type KeyObject } from "node:crypto";
import { fail, isFlotillaError } from "../errors";
import {
  advertisementBytes,
  agree,
  decryptSharePair,
  deriveMaskSeed,
  deriveShareKey,
  encryptSharePair,
  fromB64u,
  generateX25519,
  toB64u,
  x25519PrivateKeyRaw,
} from "./crypto";
import { encodeFixedPoint, scaleFits } from "./fixed-point";
import { compareIds, neighbourGraph } from "./graph";
import { verifyIdentitySignature } from "./identity";
import { checkSession, effectiveNeighbours, isValidWeight, validateParams, validateSession } from "./params";
import { addMask, DEFAULT_PRG, type PrgName } from "./prg";
import { shareX, shareXOf, splitSecret } from "./shamir";
import type {
  EncryptedShare,
  IdentitySigner,
  KeyAdvertisement,
  MaskedInput,
  MaskInputRequest,
  RevealedShare,
  SecAggParams,
  SecAggSession,
  ShareKeysRequest,
  ShareKeysResponse,
  UnmaskRequest,
  UnmaskResponse,
} from "./types";

/** Verifies an identity signature (verifyIdentitySignature by default; Key Vault's /verify is async, so not here). */
export type IdentityVerifier = (jwk: JsonWebKey, data: Uint8Array, signature: Uint8Array) => boolean;

export interface SecAggClientOptions {
  /** The mask PRG; every party of the round must use the same one (default AES-128-CTR). */
  readonly prg?: PrgName;
  /** CSPRNG for the self-mask seed, Shamir coefficients, nonces and the rounding seed (default randomBytes). */
  readonly random?: (n: number) => Uint8Array;
  /**
   * Pinned identity keys (e.g. from a key directory the device trusts). When set, a neighbour's advertisement is
   * verified against this key, not the one the server relays, and an unknown neighbour is rejected: the server
   * then cannot substitute a device's identity. Without it the relayed key is trusted (server-relayed PKI).
   */
  readonly identityKey?: (deviceId: string) => JsonWebKey | undefined;
  /** Test hook: a copy of the fixed-point encoded update, before any mask is added. */
  readonly onEncoded?: (encoded: Uint32Array) => void;
}

/** Where the client is: the last step it completed, or "failed" (terminal). */
export type SecAggClientState = "advertised" | "shared" | "masked" | "unmasked" | "failed";

/** The ES256 signature size (r || s). */
const SIGNATURE_BYTES = 64;
/** Shares of a 32-byte secret: 2-byte x + 16 words. */
const SHARE_BYTES = 34;

interface Neighbour {
  readonly advertisement: KeyAdvertisement;
  /** c_ij, until maskInput. */
  shareKey: Uint8Array;
  /** s_ij, until maskInput. */
  maskSeed: Uint8Array;
}

export class SecAggClient {
  private state: SecAggClientState = "advertised";
  private readonly prg: PrgName;
  private readonly random: (n: number) => Uint8Array;
  private encryptionKey: KeyObject | null;
  private maskingKey: KeyObject | null;
  private selfMaskSeed: Uint8Array | null;
  // Set by shareKeys.
  private params: SecAggParams | null = null;
  private participants: readonly string[] = [];
  private scale = 0;
  private maxWeight = 0;
  private myX = 0;
  private readonly neighbours = new Map<string, Neighbour>();
  // Set by maskInput: the shares neighbours sent (U2 ∩ N(i)).
  private readonly received = new Map<string, { selfMaskShare: Uint8Array; maskKeyShare: Uint8Array }>();
  // What unmask revealed, by owner.
  private readonly revealedSelfMask = new Set<string>();
  private readonly revealedMaskKey = new Set<string>();

  private constructor(
    readonly session: SecAggSession,
    readonly deviceId: string,
    readonly weight: number,
    private readonly advertisement: KeyAdvertisement,
    keys: { encryption: KeyObject; masking: KeyObject; selfMaskSeed: Uint8Array },
    private readonly options: SecAggClientOptions,
  ) {
    this.prg = options.prg ?? DEFAULT_PRG;
    this.random = options.random ?? randomBytes;
    this.encryptionKey = keys.encryption;
    this.maskingKey = keys.masking;
    this.selfMaskSeed = keys.selfMaskSeed;
  }

  /** Step 1 (advertise): fresh keys and self-mask seed; returns the client and its signed advertisement. */
  static async start(
    session: SecAggSession,
    deviceId: string,
    weight: number,
    signer: IdentitySigner,
    options: SecAggClientOptions = {},
  ): Promise<{ client: SecAggClient; advertisement: KeyAdvertisement }> {
    validateSession(session);
    if (typeof deviceId !== "string" || deviceId.length === 0)
      fail("E_SECAGG_PARAMS", "deviceId must be a non-empty string");
    if (!isValidWeight(weight)) fail("E_SECAGG_PARAMS", `weight must be a positive integer, got ${weight}`);
    if (signer.deviceId !== deviceId)
      fail("E_SECAGG_PARAMS", `signer is for '${signer.deviceId}', not '${deviceId}'`);
    const random = options.random ?? randomBytes;
    const enc = generateX25519();
    const mask = generateX25519();
    const selfMaskSeed = new Uint8Array(random(32));
    if (selfMaskSeed.byteLength !== 32) fail("E_SECAGG_PARAMS", "random source returned a short seed");
    const unsigned = {
      jobId: session.jobId,
      round: session.round,
      deviceId,
      encryptionKey: toB64u(enc.publicKey),
      maskingKey: toB64u(mask.publicKey),
      weight,
    };
    const signature = await signer.sign(advertisementBytes(unsigned));
    if (signature.byteLength !== SIGNATURE_BYTES)
      fail(
        "E_SECAGG_SIGNATURE",
        `identity signature must be ${SIGNATURE_BYTES} bytes, got ${signature.byteLength}`,
      );
    const advertisement: KeyAdvertisement = { ...unsigned, signature: toB64u(signature) };
    const client = new SecAggClient(
      { jobId: session.jobId, round: session.round },
      deviceId,
      weight,
      advertisement,
      { encryption: enc.privateKey, masking: mask.privateKey, selfMaskSeed },
      options,
    );
    return { client, advertisement };
  }

  get step(): SecAggClientState {
    return this.state;
  }

  /** Step 2 (share): verify the neighbourhood, then send encrypted Shamir shares of s_sk and b. */
  shareKeys(req: ShareKeysRequest, verify: IdentityVerifier = verifyIdentitySignature): ShareKeysResponse {
    this.expect("advertised", "shareKeys");
    checkSession(this.session, req, "share-keys request");
    return this.guard(() => this.doShareKeys(req, verify));
  }

  /** Step 3 (mask): decrypt neighbours' shares, then the masked fixed-point update. */
  maskInput(req: MaskInputRequest, update: Float32Array): MaskedInput {
    this.expect("shared", "maskInput");
    checkSession(this.session, req, "mask-input request");
    return this.guard(() => this.doMaskInput(req, update));
  }

  /** Step 4 (unmask): reveal self-mask shares of survivors and mask-key shares of dropouts, never both. */
  unmask(req: UnmaskRequest): UnmaskResponse {
    if (this.state !== "masked" && this.state !== "unmasked")
      fail("E_SECAGG_STATE", `unmask called in state '${this.state}' (expected 'masked' or 'unmasked')`);
    checkSession(this.session, req, "unmask request");
    return this.guard(() => this.doUnmask(req));
  }

  private expect(state: SecAggClientState, op: string): void {
    if (this.state !== state)
      fail("E_SECAGG_STATE", `${op} called in state '${this.state}' (expected '${state}')`);
  }

  /** Runs a step; any failure is terminal (see the header) and is a FlotillaError. */
  private guard<T>(fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      this.wipe();
      for (const pair of this.received.values()) {
        pair.selfMaskShare.fill(0);
        pair.maskKeyShare.fill(0);
      }
      this.received.clear();
      this.state = "failed";
      if (isFlotillaError(e)) throw e;
      return fail("E_SECAGG_MESSAGE", `malformed request: ${e instanceof Error ? e.message : String(e)}`, {
        cause: e,
      });
    }
  }

  private doShareKeys(req: ShareKeysRequest, verify: IdentityVerifier): ShareKeysResponse {
    const me = this.deviceId;
    const participants = req.participants;
    if (!Array.isArray(participants) || participants.some((p) => typeof p !== "string"))
      fail("E_SECAGG_GRAPH", "participants must be an array of device ids");
    for (let i = 1; i < participants.length; i++)
      if (!(participants[i - 1] < participants[i]))
        fail("E_SECAGG_GRAPH", "participants must be sorted and unique");
    if (!participants.includes(me)) fail("E_SECAGG_GRAPH", `'${me}' is not among the participants`);
    const n = participants.length;
    validateParams(req.params, n);
    const params = req.params;
    const k = effectiveNeighbours(params, n);
    const t = params.threshold;
    if (!scaleFits(n, params.clipRange, req.scale))
      fail("E_SECAGG_PARAMS", `scale ${req.scale} would overflow the ring with ${n} participants`);
    if (!isValidWeight(req.maxWeight) || req.maxWeight < this.weight)
      fail("E_SECAGG_PARAMS", `maxWeight ${req.maxWeight} is below this device's weight ${this.weight}`);
    const seed = fromB64u(req.graphSeed, "graphSeed", 32, "E_SECAGG_GRAPH");
    const expected = neighbourGraph(participants, k, seed).get(me) ?? [];

    // The relayed neighbours must be exactly this device's neighbours in the graph.
    if (!Array.isArray(req.neighbours)) fail("E_SECAGG_GRAPH", "neighbours must be an array");
    const relayed = new Map<string, (typeof req.neighbours)[number]>();
    for (const nb of req.neighbours) {
      const id = nb?.advertisement?.deviceId;
      if (typeof id !== "string") fail("E_SECAGG_MESSAGE", "a relayed neighbour has no advertisement");
      if (relayed.has(id)) fail("E_SECAGG_GRAPH", `neighbour '${id}' is relayed twice`);
      relayed.set(id, nb);
    }
    if (relayed.size !== expected.length || expected.some((id) => !relayed.has(id)))
      fail(
        "E_SECAGG_GRAPH",
        `relayed neighbours [${[...relayed.keys()].sort(compareIds).join(",")}] are not this device's neighbours ` +
          `[${expected.join(",")}] in the graph`,
      );

    // Every neighbour's advertisement: this session, signed by that device's identity key, sane keys and weight.
    const keys = new Set<string>([this.advertisement.encryptionKey, this.advertisement.maskingKey]);
    for (const id of expected) {
      const { advertisement: ad, identityKey } = relayed.get(id)!;
      checkSession(this.session, ad, `advertisement of '${id}'`);
      const pinned = this.options.identityKey ? this.options.identityKey(id) : identityKey;
      if (!pinned || typeof pinned !== "object") fail("E_SECAGG_SIGNATURE", `no identity key for '${id}'`);
      const sig = fromB64u(ad.signature, `signature of '${id}'`, SIGNATURE_BYTES, "E_SECAGG_SIGNATURE");
      if (!verify(pinned, advertisementBytes(ad), sig))
        fail("E_SECAGG_SIGNATURE", `advertisement of '${id}' is not signed by its identity key`);
      if (!isValidWeight(ad.weight) || ad.weight > req.maxWeight)
        fail("E_SECAGG_MESSAGE", `advertisement of '${id}' has weight ${ad.weight} outside 1..maxWeight`);
      for (const key of [ad.encryptionKey, ad.maskingKey]) {
        fromB64u(key, `public key of '${id}'`, 32, "E_SECAGG_KEY");
        if (keys.has(key)) fail("E_SECAGG_KEY", `advertisement of '${id}' repeats a public key`);
        keys.add(key);
      }
    }

    // Pairwise share-encryption keys c_ij and mask seeds s_ij (agreement also rejects low-order points), so the
    // private keys can be dropped as soon as the shares are made.
    for (const id of expected) {
      const ad = relayed.get(id)!.advertisement;
      const encShared = agree(this.encryptionKey!, ad.encryptionKey);
      const maskShared = agree(this.maskingKey!, ad.maskingKey);
      this.neighbours.set(id, {
        advertisement: cleanAdvertisement(ad),
        shareKey: deriveShareKey(encShared, this.session),
        maskSeed: deriveMaskSeed(maskShared, this.session),
      });
      encShared.fill(0);
      maskShared.fill(0);
    }

    // Shamir-share s_sk and b among the neighbours, x = 1 + index in the sorted participants.
    const xs = expected.map((id) => shareX(participants, id));
    const skRaw = x25519PrivateKeyRaw(this.maskingKey!);
    const keyShares = splitSecret(skRaw, xs, t, this.random);
    skRaw.fill(0);
    const selfShares = splitSecret(this.selfMaskSeed!, xs, t, this.random);
    const shares: EncryptedShare[] = expected.map((id, i) => {
      const enc = encryptSharePair(
        this.neighbours.get(id)!.shareKey,
        this.session,
        me,
        id,
        selfShares[i],
        keyShares[i],
        this.random,
      );
      selfShares[i].fill(0);
      keyShares[i].fill(0);
      return enc;
    });
    this.encryptionKey = null; // all pairwise keys are derived and s_sk is shared: drop the private keys
    this.maskingKey = null;
    this.params = { ...params, neighbours: k };
    this.participants = [...participants];
    this.scale = req.scale;
    this.maxWeight = req.maxWeight;
    this.myX = shareX(participants, me);
    this.state = "shared";
    return { jobId: this.session.jobId, round: this.session.round, deviceId: me, shares };
  }

  private doMaskInput(req: MaskInputRequest, update: Float32Array): MaskedInput {
    const me = this.deviceId;
    const params = this.params!;
    if (!(update instanceof Float32Array) || update.length === 0)
      fail("E_SECAGG_INPUT", "update must be a non-empty Float32Array");
    if (!Array.isArray(req.shares)) fail("E_SECAGG_MESSAGE", "mask-input request has no share list");
    const received = new Map<string, { selfMaskShare: Uint8Array; maskKeyShare: Uint8Array }>();
    for (const enc of req.shares) {
      const from = enc?.from;
      if (enc?.to !== me)
        fail("E_SECAGG_MESSAGE", `a share addressed to '${String(enc?.to)}' was sent to '${me}'`);
      if (typeof from !== "string" || !this.neighbours.has(from))
        fail("E_SECAGG_GRAPH", `a share from '${String(from)}', which is not a neighbour of '${me}'`);
      if (received.has(from)) fail("E_SECAGG_MESSAGE", `two shares from '${from}'`);
      const pair = decryptSharePair(this.neighbours.get(from)!.shareKey, this.session, enc);
      for (const s of [pair.selfMaskShare, pair.maskKeyShare])
        if (s.byteLength !== SHARE_BYTES || shareXOf(s) !== this.myX)
          fail("E_SECAGG_DECRYPT", `share from '${from}' is not a share for '${me}'`);
      received.set(from, pair);
    }
    // Bonawitz et al. round 2 / Bell et al.: with fewer than t neighbours in U2 the input would be protected by
    // too few pairwise masks (and could not be unmasked anyway): refuse to send it.
    if (received.size < params.threshold)
      fail(
        "E_SECAGG_REFUSED",
        `only ${received.size} neighbours shared keys with '${me}', fewer than the threshold ${params.threshold}`,
      );

    const out = new Uint32Array(update.length);
    encodeFixedPoint(update, this.weight / this.maxWeight, params.clipRange, this.scale, out, this.random);
    if (this.options.onEncoded) this.options.onEncoded(out.slice());
    addMask(out, this.selfMaskSeed!, 1, this.prg);
    for (const id of received.keys())
      addMask(out, this.neighbours.get(id)!.maskSeed, me < id ? 1 : -1, this.prg);
    for (const [id, pair] of received) this.received.set(id, pair);
    this.wipe(); // b, the share keys and the mask seeds are no longer needed
    this.state = "masked";
    return { jobId: this.session.jobId, round: this.session.round, deviceId: me, masked: out };
  }

  private doUnmask(req: UnmaskRequest): UnmaskResponse {
    const me = this.deviceId;
    const t = this.params!.threshold;
    const survivors = idList(req.survivors, "survivors");
    const dropped = idList(req.dropped, "dropped");
    for (const id of survivors)
      if (dropped.has(id)) fail("E_SECAGG_REFUSED", `'${id}' is listed both as survivor and as dropped`);
    for (const id of [...survivors, ...dropped])
      if (!this.received.has(id))
        fail("E_SECAGG_REFUSED", `'${id}' is not a neighbour that shared keys with '${me}'`);
    if (survivors.size + dropped.size !== this.received.size)
      fail(
        "E_SECAGG_REFUSED",
        `the request does not account for every neighbour that shared keys with '${me}'`,
      );
    if (survivors.size < t)
      fail("E_SECAGG_REFUSED", `only ${survivors.size} surviving neighbours, fewer than the threshold ${t}`);
    for (const id of survivors)
      if (this.revealedMaskKey.has(id))
        fail(
          "E_SECAGG_REFUSED",
          `already revealed the mask-key share of '${id}': its self-mask share is withheld`,
        );
    for (const id of dropped)
      if (this.revealedSelfMask.has(id))
        fail(
          "E_SECAGG_REFUSED",
          `already revealed the self-mask share of '${id}': its mask-key share is withheld`,
        );

    const selfMaskShares: RevealedShare[] = [];
    const maskKeyShares: RevealedShare[] = [];
    for (const id of [...survivors].sort(compareIds)) {
      this.revealedSelfMask.add(id);
      selfMaskShares.push({ owner: id, share: toB64u(this.received.get(id)!.selfMaskShare) });
    }
    for (const id of [...dropped].sort(compareIds)) {
      this.revealedMaskKey.add(id);
      maskKeyShares.push({ owner: id, share: toB64u(this.received.get(id)!.maskKeyShare) });
    }
    this.state = "unmasked";
    return {
      jobId: this.session.jobId,
      round: this.session.round,
      deviceId: me,
      selfMaskShares,
      maskKeyShares,
    };
  }

  /** Drops the round's secrets: the self-mask seed, the private keys, the share keys and the mask seeds. */
  private wipe(): void {
    this.selfMaskSeed?.fill(0);
    this.selfMaskSeed = null;
    this.maskingKey = null;
    this.encryptionKey = null;
    for (const nb of this.neighbours.values()) {
      nb.shareKey.fill(0);
      nb.maskSeed.fill(0);
    }
  }
}

/** A set of device ids from an untrusted list (strings, no duplicates), else E_SECAGG_REFUSED. */
function idList(list: unknown, what: string): Set<string> {
  if (!Array.isArray(list)) fail("E_SECAGG_REFUSED", `unmask request: ${what} must be a list`);
  const s = new Set<string>();
  for (const id of list) {
    if (typeof id !== "string") fail("E_SECAGG_REFUSED", `unmask request: ${what} must be device ids`);
    if (s.has(id)) fail("E_SECAGG_REFUSED", `unmask request lists '${id}' twice`);
    s.add(id);
  }
  return s;
}

/** Only the contract fields of an advertisement (a relayed object may carry extra members). */
export function cleanAdvertisement(ad: KeyAdvertisement): KeyAdvertisement {
  return {
    jobId: ad.jobId,
    round: ad.round,
    deviceId: ad.deviceId,
    encryptionKey: ad.encryptionKey,
    maskingKey: ad.maskingKey,
    weight: ad.weight,
    signature: ad.signature,
  };
}
