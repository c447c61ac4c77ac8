/**
 * SecAgg+ cost (`benchSecAgg`): one in-memory round (driver.ts) with `clients` devices, `params` model values each
 * and a seeded fraction of devices vanishing, each at a uniformly random step. Reports
 *   clientMs        median over the devices that took part in every step of one device's total compute (keys,
 *                   signature, verification, sharing, encryption, encoding, masking, unmasking), ms;
 *   serverMs        the server's unmask compute (finish(): reconstruct secrets, remove masks, decode), ms;
 *   bytesPerClient  median over those devices of the JSON bytes up + down (masked vector at 4 bytes per value).
 * Identity keys are generated once per device id and cached outside the timed parts (a device has them anyway).
 */
import type { JsonWebKey } from "node:crypto";
import { Rng } from "../data/rng";
import { fail } from "../errors";
import { runSecAggRound, type SecAggDeviceInput } from "./driver";
import { LocalSigner } from "./identity";
import { defaultParams } from "./params";
import type { PrgName } from "./prg";
import { SECAGG_STEPS, type IdentitySigner, type SecAggParams, type SecAggStep } from "./types";

export interface SecAggBenchOptions {
  readonly clients: number;
  /** Model size d (values per update). */
  readonly params: number;
  /** Fraction of devices that vanish (each at a random step), in [0, 1). */
  readonly dropout: number;
  readonly neighbours?: number;
  readonly threshold?: number;
  readonly seed?: number;
  readonly prg?: PrgName;
}

export interface SecAggBench {
  readonly clients: number;
  readonly params: number;
  readonly dropout: number;
  readonly neighbours: number;
  readonly threshold: number;
  readonly prg: PrgName;
  readonly clientMs: number;
  readonly serverMs: number;
  readonly bytesPerClient: number;
  /** Devices whose update is in the sum. */
  readonly included: number;
}

const identities = new Map<string, { signer: IdentitySigner; publicKey: JsonWebKey }>();

function identity(id: string): { signer: IdentitySigner; publicKey: JsonWebKey } {
  let k = identities.get(id);
  if (!k) {
    k = LocalSigner.generate(id);
    identities.set(id, k);
  }
  return k;
}

function median(xs: number[]): number {
  if (xs.length === 0) return 0;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

export async function benchSecAgg(o: SecAggBenchOptions): Promise<SecAggBench> {
  if (!Number.isInteger(o.clients) || o.clients < 3)
    fail("E_CONFIG_BENCH", `clients must be an integer >= 3`);
  if (!Number.isInteger(o.params) || o.params < 1)
    fail("E_CONFIG_BENCH", `params must be a positive integer`);
  if (!(o.dropout >= 0 && o.dropout < 1)) fail("E_CONFIG_BENCH", `dropout must be in [0, 1)`);
  const n = o.clients;
  const d = defaultParams(n);
  const k = o.neighbours ?? d.neighbours;
  const params: SecAggParams = {
    ...d,
    neighbours: k,
    threshold:
      o.threshold ?? (o.neighbours !== undefined ? Math.floor(Math.min(k, n - 1) / 2) + 1 : d.threshold),
  };
  const rng = new Rng((o.seed ?? 1) >>> 0);
  const ids = Array.from({ length: n }, (_, i) => `dev-${String(i).padStart(5, "0")}`);
  const signers = new Map<string, IdentitySigner>();
  const identityKeys = new Map<string, JsonWebKey>();
  for (const id of ids) {
    const k = identity(id);
    signers.set(id, k.signer);
    identityKeys.set(id, k.publicKey);
  }
  // A few distinct update vectors, shared by the devices (memory stays O(d), not O(n d)).
  const vectors = Array.from({ length: 4 }, () => {
    const v = new Float32Array(o.params);
    for (let i = 0; i < v.length; i++) v[i] = rng.normal() * 0.05;
    return v;
  });
  const updates = new Map<string, SecAggDeviceInput>(
    ids.map((id, i) => [id, { update: vectors[i % vectors.length], weight: 10 + rng.int(90) }]),
  );
  const dropAt = new Map<string, SecAggStep>();
  for (const i of rng.sample(n, Math.round(o.dropout * n))) dropAt.set(ids[i], SECAGG_STEPS[rng.int(4)]);
  const graphSeed = new Uint8Array(32);
  for (let i = 0; i < 32; i++) graphSeed[i] = rng.int(256);

  const prg = o.prg ?? "aes-128-ctr";
  const report = await runSecAggRound({
    session: { jobId: "bench", round: 1 },
    params,
    updates,
    signers,
    identityKeys,
    dropAt,
    graphSeed,
    prg,
  });
  const full = ids.filter((id) => !dropAt.has(id) && !report.devices.get(id)!.clientError);
  return {
    clients: n,
    params: o.params,
    dropout: o.dropout,
    neighbours: Math.min(k, n - 1),
    threshold: params.threshold,
    prg,
    clientMs: median(full.map((id) => report.devices.get(id)!.computeMs)),
    serverMs: report.result.unmaskMs,
    bytesPerClient: median(
      full.map((id) => report.devices.get(id)!.bytesUp + report.devices.get(id)!.bytesDown),
    ),
    included: report.result.included.length,
  };
}
