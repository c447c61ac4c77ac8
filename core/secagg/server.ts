/**
 * The server's side of SecAgg+ (Bell et al. CCS 2020, Fig. 2-3; Bonawitz et al. CCS 2017, Fig. 4, Server side of
 * rounds 0-4). The server relays keys and ciphertexts, streams the masked inputs into one ring accumulator (it
 * never stores an individual masked vector), and after the unmask step reconstructs exactly the secrets needed to
 * remove the masks: the self-mask seed b_i of every survivor (i in U3) and the mask key s_sk_j of every device that
 * shared keys but sent no input (j in U2 \ U3) and has surviving neighbours.
 *
 *   U1 = devices whose advertisement verified   (closeAdvertise: graph over sorted U1, scale, max weight)
 *   U2 = devices of U1 that sent their shares   (closeShares: each gets the shares addressed to it from U2)
 *   U3 = devices of U2 that sent a masked input (closeMasked: survivors/dropped per neighbourhood)
 *   U4 = devices of U3 that answered unmask     (finish: reconstruct, remove masks, decode)
 *
 * Every entry point validates its message completely before changing any state, and throws a FlotillaError with a
 * one-line message: E_SECAGG_STATE (wrong stage), E_SECAGG_REPLAY (another job/round), E_SECAGG_SIGNATURE,
 * E_SECAGG_KEY, E_SECAGG_MESSAGE (malformed, unknown sender, duplicate, wrong length). A close/finish that cannot
 * proceed safely aborts the round (E_SECAGG_ABORTED); after an abort every operation throws E_SECAGG_ABORTED and the
 * accumulator is zeroed: nothing is unmasked. The thresholds checked before each step make the abort happen before
 * any secret is reconstructed.
 */
import { randomBytes, type JsonWebKey } from "node:crypto";
import { FlotillaError, fail, isFlotillaError } from "../errors";
import { cleanAdvertisement, type IdentityVerifier } from "./client";
import {
  advertisementBytes,
  agree,
  deriveMaskSeed,
  fromB64u,
  sharePairCiphertextBytes,
  toB64u,
  x25519PrivateKeyFromRaw,
  generateX25519,
  x25519PublicKeyRaw,
  NONCE_BYTES,
} from "./crypto";
import { chooseScale, decodeFixedPoint } from "./fixed-point";
import { compareIds, neighbourGraph } from "./graph";
import { verifyIdentitySignature } from "./identity";
import { checkSession, effectiveNeighbours, isValidWeight, validateParams, validateSession } from "./params";
import { addMask, DEFAULT_PRG, type PrgName } from "./prg";
import { combineShares, shareX, shareXOf } from "./shamir";
import {
  SECAGG_STEPS,
  type EncryptedShare,
  type KeyAdvertisement,
  type MaskedInput,
  type MaskInputRequest,
  type SecAggParams,
  type SecAggResult,
  type SecAggSession,
  type SecAggStep,
  type ShareKeysRequest,
  type ShareKeysResponse,
  type UnmaskRequest,
  type UnmaskResponse,
} from "./types";

export interface SecAggServerOptions {
  /** Model values per update (the masked vector's length). */
  readonly length: number;
  /** A device's identity public key (Key Vault / key directory); undefined = unknown (its advertisement fails). */
  readonly identityKey: (deviceId: string) => JsonWebKey | undefined;
  /** Seed of the graph relabelling (default 32 random bytes). */
  readonly graphSeed?: Uint8Array;
  /** Signature check (default verifyIdentitySignature). */
  readonly verify?: IdentityVerifier;
  /** The mask PRG; must match the devices' (default AES-128-CTR). */
  readonly prg?: PrgName;
  /** CSPRNG for the graph seed (default randomBytes). */
  readonly random?: (n: number) => Uint8Array;
}

/** The step the server is collecting, or its end state. */
export type SecAggServerStage = SecAggStep | "done" | "aborted";

const SECRET_SHARE_BYTES = 34;
const SHARE_CIPHERTEXT_BYTES = sharePairCiphertextBytes(SECRET_SHARE_BYTES, SECRET_SHARE_BYTES);

export class SecAggServer {
  private stageNow: SecAggServerStage = "advertise";
  private abortReason: string | undefined;
  private readonly session: SecAggSession;
  private readonly participantSet: Set<string>;
  private readonly participants: readonly string[];
  private readonly verify: IdentityVerifier;
  private readonly prg: PrgName;
  // advertise
  private readonly ads = new Map<string, KeyAdvertisement>();
  private readonly idKeys = new Map<string, JsonWebKey>();
  private readonly publicKeys = new Set<string>();
  private readonly probeKey = generateX25519().privateKey;
  // closeAdvertise
  private u1: string[] = [];
  private graph = new Map<string, string[]>();
  private roundParams: SecAggParams | null = null;
  private scale = 0;
  private maxWeight = 0;
  // share
  private readonly sharesFrom = new Map<string, EncryptedShare[]>();
  private u2 = new Set<string>();
  // mask
  private acc: Uint32Array | null = null;
  private readonly u3 = new Set<string>();
  private unmaskRequests = new Map<string, UnmaskRequest>();
  // unmask
  private readonly responses = new Map<
    string,
    { selfMask: Map<string, Uint8Array>; maskKey: Map<string, Uint8Array> }
  >();
  /** Steps closed so far (0..4): a step's dropouts are known once it closed, also after an abort. */
  private closedSteps = 0;

  constructor(
    session: SecAggSession,
    readonly params: SecAggParams,
    participants: readonly string[],
    private readonly opts: SecAggServerOptions,
  ) {
    validateSession(session);
    this.session = { jobId: session.jobId, round: session.round };
    if (!Array.isArray(participants) || participants.some((p) => typeof p !== "string" || p.length === 0))
      fail("E_SECAGG_PARAMS", "participants must be non-empty device ids");
    this.participantSet = new Set(participants);
    if (this.participantSet.size !== participants.length)
      fail("E_SECAGG_PARAMS", "participants must be unique");
    this.participants = [...participants].sort(compareIds);
    validateParams(params, participants.length);
    if (!Number.isSafeInteger(opts?.length) || opts.length < 1)
      fail("E_SECAGG_PARAMS", `length must be a positive integer, got ${String(opts?.length)}`);
    if (typeof opts.identityKey !== "function") fail("E_SECAGG_PARAMS", "identityKey must be a function");
    if (opts.graphSeed !== undefined && opts.graphSeed.byteLength !== 32)
      fail("E_SECAGG_PARAMS", `graphSeed must be 32 bytes, got ${opts.graphSeed.byteLength}`);
    this.verify = opts.verify ?? verifyIdentitySignature;
    this.prg = opts.prg ?? DEFAULT_PRG;
  }

  get stage(): SecAggServerStage {
    return this.stageNow;
  }

  /** Why the round aborted (undefined unless aborted). */
  get abortedBecause(): string | undefined {
    return this.abortReason;
  }

  /** The masking graph over U1 (empty before closeAdvertise). */
  get neighbours(): ReadonlyMap<string, readonly string[]> {
    return this.graph;
  }

  /** Devices lost at each step so far (a step's list is filled when the step closes). */
  get dropouts(): Readonly<Record<SecAggStep, readonly string[]>> {
    const closed = (s: SecAggStep) => this.closedSteps > SECAGG_STEPS.indexOf(s);
    const u1 = new Set(this.u1);
    return {
      advertise: closed("advertise") ? this.participants.filter((p) => !u1.has(p)) : [],
      share: closed("share") ? this.u1.filter((p) => !this.u2.has(p)) : [],
      mask: closed("mask") ? this.u1.filter((p) => this.u2.has(p) && !this.u3.has(p)) : [],
      unmask: closed("unmask") ? this.u1.filter((p) => this.u3.has(p) && !this.responses.has(p)) : [],
    };
  }

  /** Ends the round: nothing will be unmasked. Idempotent once aborted; not possible after finish(). */
  abort(reason: string): void {
    if (this.stageNow === "aborted") return;
    if (this.stageNow === "done") fail("E_SECAGG_STATE", "the round already finished");
    this.abortReason = String(reason).replace(/\s+/g, " ");
    this.stageNow = "aborted";
    this.acc?.fill(0);
    this.acc = null;
    this.responses.clear();
  }

  /** Step 1: a device's signed key advertisement. */
  addAdvertisement(ad: KeyAdvertisement): void {
    this.expect("advertise", "addAdvertisement");
    checkSession(this.session, ad, "advertisement");
    const id = ad.deviceId;
    if (typeof id !== "string" || !this.participantSet.has(id))
      fail("E_SECAGG_MESSAGE", `advertisement from '${String(id)}', which is not a participant`);
    if (this.ads.has(id)) fail("E_SECAGG_MESSAGE", `duplicate advertisement from '${id}'`);
    if (!isValidWeight(ad.weight))
      fail(
        "E_SECAGG_MESSAGE",
        `advertisement of '${id}' has weight ${String(ad.weight)}, not a positive integer`,
      );
    const keys = [ad.encryptionKey, ad.maskingKey];
    // A trial agreement rejects low-order points (X25519 output all zero) and malformed keys up front.
    for (const k of keys) agree(this.probeKey, fromB64u(k, `public key of '${id}'`, 32, "E_SECAGG_KEY"));
    if (keys[0] === keys[1] || keys.some((k) => this.publicKeys.has(k)))
      fail("E_SECAGG_KEY", `advertisement of '${id}' repeats a public key`);
    const jwk = this.opts.identityKey(id);
    if (!jwk) fail("E_SECAGG_SIGNATURE", `no identity key for '${id}'`);
    const sig = fromB64u(ad.signature, `signature of '${id}'`, 64, "E_SECAGG_SIGNATURE");
    if (!this.verify(jwk, advertisementBytes(ad), sig))
      fail("E_SECAGG_SIGNATURE", `advertisement of '${id}' is not signed by its identity key`);
    this.ads.set(id, cleanAdvertisement(ad));
    this.idKeys.set(id, jwk);
    for (const k of keys) this.publicKeys.add(k);
  }

  /** Closes step 1: U1, the graph, the scale; the share-keys request for each device of U1. */
  closeAdvertise(): Map<string, ShareKeysRequest> {
    this.expect("advertise", "closeAdvertise");
    return this.orAbort(() => {
      const u1 = [...this.ads.keys()].sort(compareIds);
      const t = this.params.threshold;
      const min = Math.max(3, t + 1);
      if (u1.length < min) fail("E_SECAGG_ABORTED", `only ${u1.length} devices advertised keys; need ${min}`);
      validateParams(this.params, u1.length);
      const k = effectiveNeighbours(this.params, u1.length);
      const seed = this.opts.graphSeed ?? (this.opts.random ?? randomBytes)(32);
      this.graph = neighbourGraph(u1, k, seed);
      this.u1 = Object.freeze(u1) as string[];
      this.roundParams = Object.freeze({ ...this.params, neighbours: k });
      this.scale = chooseScale(u1.length, this.params.clipRange);
      this.maxWeight = Math.max(...u1.map((id) => this.ads.get(id)!.weight));
      const graphSeed = toB64u(seed);
      this.closedSteps = 1;
      const out = new Map<string, ShareKeysRequest>();
      for (const id of u1) {
        out.set(id, {
          jobId: this.session.jobId,
          round: this.session.round,
          params: this.roundParams,
          participants: u1,
          graphSeed,
          scale: this.scale,
          maxWeight: this.maxWeight,
          neighbours: this.graph
            .get(id)!
            .map((j) => ({ advertisement: this.ads.get(j)!, identityKey: this.idKeys.get(j)! })),
        });
      }
      this.stageNow = "share";
      return out;
    });
  }

  /** Step 2: a device's encrypted shares, one per neighbour. */
  addShares(resp: ShareKeysResponse): void {
    this.expect("share", "addShares");
    checkSession(this.session, resp, "share-keys response");
    const id = resp.deviceId;
    const nbs = typeof id === "string" ? this.graph.get(id) : undefined;
    if (!nbs) fail("E_SECAGG_MESSAGE", `shares from '${String(id)}', which did not advertise keys`);
    if (this.sharesFrom.has(id)) fail("E_SECAGG_MESSAGE", `duplicate shares from '${id}'`);
    if (!Array.isArray(resp.shares) || resp.shares.length !== nbs.length)
      fail("E_SECAGG_MESSAGE", `'${id}' must send exactly ${nbs.length} shares`);
    const want = new Set(nbs);
    const clean: EncryptedShare[] = [];
    for (const s of resp.shares) {
      if (s?.from !== id) fail("E_SECAGG_MESSAGE", `'${id}' sent a share marked from '${String(s?.from)}'`);
      if (typeof s.to !== "string" || !want.has(s.to))
        fail("E_SECAGG_MESSAGE", `'${id}' sent a share to '${String(s.to)}', not a neighbour (or twice)`);
      want.delete(s.to);
      fromB64u(s.nonce, `nonce of a share from '${id}'`, NONCE_BYTES);
      fromB64u(s.ciphertext, `ciphertext of a share from '${id}'`, SHARE_CIPHERTEXT_BYTES);
      clean.push({ from: s.from, to: s.to, nonce: s.nonce, ciphertext: s.ciphertext });
    }
    this.sharesFrom.set(id, clean);
  }

  /** Closes step 2: U2; each device of U2 gets the shares addressed to it by other devices of U2. */
  closeShares(): Map<string, MaskInputRequest> {
    this.expect("share", "closeShares");
    return this.orAbort(() => {
      const u2 = new Set(this.u1.filter((id) => this.sharesFrom.has(id)));
      const t = this.params.threshold;
      if (u2.size === 0) fail("E_SECAGG_ABORTED", "no device sent its shares");
      for (const id of u2) {
        const c = this.graph.get(id)!.filter((j) => u2.has(j)).length;
        if (c < t)
          fail("E_SECAGG_ABORTED", `'${id}' has ${c} neighbours left after the share step; need ${t}`);
      }
      const out = new Map<string, MaskInputRequest>();
      for (const id of u2) {
        const shares = this.graph
          .get(id)!
          .filter((j) => u2.has(j))
          .map((j) => this.sharesFrom.get(j)!.find((s) => s.to === id)!);
        out.set(id, { jobId: this.session.jobId, round: this.session.round, shares });
      }
      this.u2 = u2;
      this.closedSteps = 2;
      this.acc = new Uint32Array(this.opts.length);
      this.stageNow = "mask";
      return out;
    });
  }

  /** Step 3: a masked input, added into the ring sum at once (the vector is not kept). */
  addMaskedInput(mi: MaskedInput): void {
    this.expect("mask", "addMaskedInput");
    checkSession(this.session, mi, "masked input");
    const id = mi.deviceId;
    if (typeof id !== "string" || !this.u2.has(id))
      fail("E_SECAGG_MESSAGE", `masked input from '${String(id)}', which did not share keys`);
    if (this.u3.has(id)) fail("E_SECAGG_MESSAGE", `duplicate masked input from '${id}'`);
    const m = mi.masked;
    if (!(m instanceof Uint32Array) || m.length !== this.opts.length)
      fail(
        "E_SECAGG_MESSAGE",
        `masked input from '${id}' must be a Uint32Array of ${this.opts.length} values, got ${m instanceof Uint32Array ? m.length : typeof m}`,
      );
    const acc = this.acc!;
    const a = new Int32Array(acc.buffer, acc.byteOffset, acc.length);
    const v = new Int32Array(m.buffer, m.byteOffset, m.length);
    for (let i = 0; i < a.length; i++) a[i] = (a[i] + v[i]) | 0;
    this.u3.add(id);
  }

  /** Closes step 3: U3; asks each survivor for its neighbours' shares (survivors: b, dropped: mask key). */
  closeMasked(): Map<string, UnmaskRequest> {
    this.expect("mask", "closeMasked");
    return this.orAbort(() => {
      const t = this.params.threshold;
      const u3 = this.u3;
      if (u3.size === 0) fail("E_SECAGG_ABORTED", "no masked input arrived");
      for (const id of u3) {
        const c = this.graph.get(id)!.filter((j) => u3.has(j)).length;
        if (c < t) fail("E_SECAGG_ABORTED", `'${id}' has ${c} surviving neighbours; need ${t} to unmask it`);
      }
      for (const j of this.u2) {
        if (u3.has(j)) continue;
        const c = this.graph.get(j)!.filter((x) => u3.has(x)).length;
        if (c > 0 && c < t)
          fail(
            "E_SECAGG_ABORTED",
            `dropped '${j}' has ${c} surviving neighbours; need ${t} to cancel its masks`,
          );
      }
      const out = new Map<string, UnmaskRequest>();
      for (const id of [...u3].sort(compareIds)) {
        const nbs = this.graph.get(id)!;
        out.set(id, {
          jobId: this.session.jobId,
          round: this.session.round,
          survivors: nbs.filter((j) => u3.has(j)),
          dropped: nbs.filter((j) => this.u2.has(j) && !u3.has(j)),
        });
      }
      this.unmaskRequests = out;
      this.closedSteps = 3;
      this.stageNow = "unmask";
      return out;
    });
  }

  /** Step 4: a device's revealed shares, exactly the ones it was asked for. */
  addUnmaskResponse(r: UnmaskResponse): void {
    this.expect("unmask", "addUnmaskResponse");
    checkSession(this.session, r, "unmask response");
    const id = r.deviceId;
    const req = typeof id === "string" ? this.unmaskRequests.get(id) : undefined;
    if (!req) fail("E_SECAGG_MESSAGE", `unmask response from '${String(id)}', which was not asked`);
    if (this.responses.has(id)) fail("E_SECAGG_MESSAGE", `duplicate unmask response from '${id}'`);
    const x = shareX(this.u1, id);
    const read = (list: unknown, owners: readonly string[], what: string): Map<string, Uint8Array> => {
      if (!Array.isArray(list) || list.length !== owners.length)
        fail("E_SECAGG_MESSAGE", `'${id}' must reveal ${owners.length} ${what} shares`);
      const want = new Set(owners);
      const out = new Map<string, Uint8Array>();
      for (const s of list as { owner?: unknown; share?: unknown }[]) {
        const owner = s?.owner;
        if (typeof owner !== "string" || !want.has(owner) || out.has(owner))
          fail(
            "E_SECAGG_MESSAGE",
            `'${id}' revealed a ${what} share of '${String(owner)}' it was not asked for`,
          );
        const share = fromB64u(s.share, `${what} share of '${owner}' from '${id}'`, SECRET_SHARE_BYTES);
        if (shareXOf(share) !== x)
          fail("E_SECAGG_MESSAGE", `'${id}' revealed a share with another device's x`);
        out.set(owner, share);
      }
      return out;
    };
    const selfMask = read(r.selfMaskShares, req.survivors, "self-mask");
    const maskKey = read(r.maskKeyShares, req.dropped, "mask-key");
    this.responses.set(id, { selfMask, maskKey });
  }

  /** Closes step 4: reconstructs the secrets, removes every mask, decodes the weighted mean. */
  finish(): SecAggResult {
    this.expect("unmask", "finish");
    return this.orAbort(() => {
      const start = performance.now();
      const t = this.params.threshold;
      const u3 = [...this.u3].sort(compareIds);
      const droppedWithSurvivors = this.u1.filter(
        (j) => this.u2.has(j) && !this.u3.has(j) && this.graph.get(j)!.some((x) => this.u3.has(x)),
      );
      // Collect first, so a shortfall aborts before any secret is reconstructed.
      const collect = (owner: string, kind: "selfMask" | "maskKey"): Uint8Array[] => {
        const shares: Uint8Array[] = [];
        for (const h of this.graph.get(owner)!) {
          const s = this.responses.get(h)?.[kind].get(owner);
          if (s) shares.push(s);
        }
        if (shares.length < t)
          fail(
            "E_SECAGG_ABORTED",
            `only ${shares.length} ${kind === "selfMask" ? "self-mask" : "mask-key"} shares of '${owner}' arrived; ` +
              `need ${t} (nothing is unmasked)`,
          );
        return shares;
      };
      const selfShares = u3.map((i) => collect(i, "selfMask"));
      const keyShares = droppedWithSurvivors.map((j) => collect(j, "maskKey"));

      // Reconstruct; a dropped device's mask key must match the public key it advertised.
      const seeds = selfShares.map((s) => combineShares(s, t));
      const droppedKeys = droppedWithSurvivors.map((j, n) => {
        const raw = combineShares(keyShares[n], t);
        const key = x25519PrivateKeyFromRaw(raw);
        raw.fill(0);
        if (toB64u(x25519PublicKeyRaw(key)) !== this.ads.get(j)!.maskingKey)
          fail("E_SECAGG_ABORTED", `the reconstructed mask key of '${j}' does not match its advertisement`);
        return key;
      });

      const acc = this.acc!;
      for (const seed of seeds) {
        addMask(acc, seed, -1, this.prg);
        seed.fill(0);
      }
      droppedWithSurvivors.forEach((j, n) => {
        for (const k of this.graph.get(j)!) {
          if (!this.u3.has(k)) continue;
          const shared = agree(droppedKeys[n], this.ads.get(k)!.maskingKey);
          const s = deriveMaskSeed(shared, this.session);
          // Survivor k added +PRG(s_kj) if k < j, else -PRG(s_kj): remove it.
          addMask(acc, s, k < j ? -1 : 1, this.prg);
          shared.fill(0);
          s.fill(0);
        }
      });
      const totalWeight = u3.reduce((w, i) => w + this.ads.get(i)!.weight, 0);
      const mean = decodeFixedPoint(acc, (this.scale * totalWeight) / this.maxWeight);
      this.closedSteps = 4;
      const dropouts = this.dropouts;
      const result: SecAggResult = {
        quantizedSum: acc,
        mean,
        totalWeight,
        included: u3,
        dropouts,
        unmaskMs: performance.now() - start,
      };
      this.acc = null;
      this.stageNow = "done";
      return result;
    });
  }

  /** The scale and max weight the round uses (after closeAdvertise). */
  get encoding(): { scale: number; maxWeight: number } {
    return { scale: this.scale, maxWeight: this.maxWeight };
  }

  private expect(stage: SecAggStep, op: string): void {
    if (this.stageNow === "aborted")
      fail("E_SECAGG_ABORTED", `${op}: the round was aborted (${this.abortReason ?? "no reason"})`);
    if (this.stageNow !== stage)
      fail("E_SECAGG_STATE", `${op} called in stage '${this.stageNow}' (expected '${stage}')`);
  }

  /** Runs a close step; any failure aborts the round and surfaces as E_SECAGG_ABORTED. */
  private orAbort<T>(fn: () => T): T {
    try {
      return fn();
    } catch (e) {
      const reason = isFlotillaError(e) ? e.message : e instanceof Error ? e.message : String(e);
      this.abort(reason);
      if (isFlotillaError(e) && e.code === "E_SECAGG_ABORTED") throw e;
      throw new FlotillaError("E_SECAGG_ABORTED", `round aborted: ${this.abortReason}`);
    }
  }
}
