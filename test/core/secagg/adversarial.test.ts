import { test } from "@jest/globals";
import assert from "node:assert/strict";
import type { JsonWebKey } from "node:crypto";
import { SecAggClient } from "../../../core/secagg/client";
import { advertisementBytes, generateX25519, toB64u } from "../../../core/secagg/crypto";
import { runSecAggRound, type SecAggRoundOptions } from "../../../core/secagg/driver";
import { LocalSigner } from "../../../core/secagg/identity";
import { defaultParams } from "../../../core/secagg/params";
import { SecAggServer } from "../../../core/secagg/server";
import type {
  IdentitySigner,
  KeyAdvertisement,
  MaskInputRequest,
  SecAggSession,
  ShareKeysRequest,
  UnmaskRequest,
} from "../../../core/secagg/types";
import { errorCode } from "../../helpers/errors";

const ids = (n: number) => Array.from({ length: n }, (_, i) => `dev-${String(i).padStart(2, "0")}`);
const SEED = new Uint8Array(32).fill(9);
const SESSION: SecAggSession = { jobId: "job-a", round: 7 };
const D = 64;

const idCache = new Map<string, { signer: IdentitySigner; publicKey: JsonWebKey }>();
const identity = (id: string) => {
  if (!idCache.has(id)) idCache.set(id, LocalSigner.generate(id));
  return idCache.get(id)!;
};

/** Clients that advertised and a server (not yet fed) for n devices. */
async function setup(n: number, opts: { verify?: () => boolean } = {}) {
  const all = ids(n);
  const clients = new Map<string, SecAggClient>();
  const ads = new Map<string, KeyAdvertisement>();
  for (const [i, id] of all.entries()) {
    const { client, advertisement } = await SecAggClient.start(SESSION, id, 10 + i, identity(id).signer);
    clients.set(id, client);
    ads.set(id, advertisement);
  }
  const server = new SecAggServer(SESSION, defaultParams(n), all, {
    length: D,
    identityKey: (id) => idCache.get(id)?.publicKey,
    graphSeed: SEED,
    verify: opts.verify,
  });
  return { all, clients, ads, server };
}

async function driverRound(n: number, opts: Partial<SecAggRoundOptions> = {}) {
  const all = ids(n);
  const encoded = new Map<string, Uint32Array>();
  const report = await runSecAggRound({
    session: SESSION,
    params: defaultParams(n),
    updates: new Map(all.map((id, i) => [id, { update: new Float32Array(D).fill(i / 10), weight: 1 + i }])),
    signers: new Map(all.map((id) => [id, identity(id).signer])),
    identityKeys: new Map(all.map((id) => [id, identity(id).publicKey])),
    graphSeed: SEED,
    onEncoded: (id, e) => encoded.set(id, e),
    ...opts,
  });
  const expected = new Uint32Array(D);
  for (const id of report.result.included) for (let i = 0; i < D; i++) expected[i] += encoded.get(id)![i];
  return { report, expected };
}

test("the server rejects forged, replayed and malformed advertisements, its state unchanged", async () => {
  const { ads, server } = await setup(6);
  const ad = ads.get("dev-01")!;
  const other = toB64u(generateX25519().publicKey);
  // altered after signing
  assert.equal(
    errorCode(() => server.addAdvertisement({ ...ad, maskingKey: other })),
    "E_SECAGG_SIGNATURE",
  );
  assert.equal(
    errorCode(() => server.addAdvertisement({ ...ad, weight: ad.weight + 1 })),
    "E_SECAGG_SIGNATURE",
  );
  // signed by another key
  const forger = LocalSigner.generate("dev-01").signer;
  const forged = (await SecAggClient.start(SESSION, "dev-01", 11, forger)).advertisement;
  assert.equal(
    errorCode(() => server.addAdvertisement(forged)),
    "E_SECAGG_SIGNATURE",
  );
  // a genuine advertisement from another round or another job
  const s = identity("dev-01").signer;
  const old = (await SecAggClient.start({ jobId: "job-a", round: 6 }, "dev-01", 11, s)).advertisement;
  const otherJob = (await SecAggClient.start({ jobId: "job-b", round: 7 }, "dev-01", 11, s)).advertisement;
  assert.equal(
    errorCode(() => server.addAdvertisement(old)),
    "E_SECAGG_REPLAY",
  );
  assert.equal(
    errorCode(() => server.addAdvertisement(otherJob)),
    "E_SECAGG_REPLAY",
  );
  // a non-participant, a bad weight (validly signed), a copied key, an unknown identity
  const stranger = identity("stranger");
  const sAd = (await SecAggClient.start(SESSION, "stranger", 3, stranger.signer)).advertisement;
  assert.equal(
    errorCode(() => server.addAdvertisement(sAd)),
    "E_SECAGG_MESSAGE",
  );
  const signed = async (u: Omit<KeyAdvertisement, "signature">) => ({
    ...u,
    signature: toB64u(await s.sign(advertisementBytes(u))),
  });
  const { signature: _sig, ...unsigned } = ad;
  assert.equal(
    errorCode(() => server.addAdvertisement(null as never)),
    "E_SECAGG_MESSAGE",
  );
  const zeroWeight = await signed({ ...unsigned, weight: 0 });
  assert.equal(
    errorCode(() => server.addAdvertisement(zeroWeight)),
    "E_SECAGG_MESSAGE",
  );
  const copied = await signed({ ...unsigned, maskingKey: ads.get("dev-02")!.maskingKey });
  server.addAdvertisement(ads.get("dev-02")!);
  assert.equal(
    errorCode(() => server.addAdvertisement(copied)),
    "E_SECAGG_KEY",
  );
  const lowOrder = await signed({ ...unsigned, maskingKey: toB64u(new Uint8Array(32)) });
  assert.ok(["E_SECAGG_KEY"].includes(errorCode(() => server.addAdvertisement(lowOrder))));
  // the genuine one still goes in once, then is a duplicate
  server.addAdvertisement(ad);
  assert.equal(
    errorCode(() => server.addAdvertisement(ad)),
    "E_SECAGG_MESSAGE",
  );
  const noKey = new SecAggServer(SESSION, defaultParams(6), ids(6), {
    length: D,
    identityKey: () => undefined,
  });
  assert.equal(
    errorCode(() => noKey.addAdvertisement(ad)),
    "E_SECAGG_SIGNATURE",
  );
  assert.equal(server.stage, "advertise");
});

test("a client rejects relayed advertisements that are forged, replayed or not its graph neighbours", async () => {
  // A server that verifies nothing relays a forged advertisement of dev-01: every neighbour of dev-01 refuses.
  const { all, clients, ads, server } = await setup(8, { verify: () => true });
  const forged = { ...ads.get("dev-01")!, maskingKey: toB64u(generateX25519().publicKey) };
  for (const id of all) server.addAdvertisement(id === "dev-01" ? forged : ads.get(id)!);
  const reqs = server.closeAdvertise();
  const nbs = server.neighbours.get("dev-01")!;
  for (const id of all) {
    if (id === "dev-01") continue;
    const req = JSON.parse(JSON.stringify(reqs.get(id))) as ShareKeysRequest;
    if (nbs.includes(id)) {
      assert.equal(
        errorCode(() => clients.get(id)!.shareKeys(req)),
        "E_SECAGG_SIGNATURE",
        id,
      );
      assert.equal(clients.get(id)!.step, "failed");
    } else {
      clients.get(id)!.shareKeys(req);
      assert.equal(clients.get(id)!.step, "shared");
    }
  }
});

test("a client rejects a replayed advertisement or request, a wrong graph and a substituted identity", async () => {
  const { all, clients, ads, server } = await setup(8);
  for (const id of all) server.addAdvertisement(ads.get(id)!);
  const reqs = server.closeAdvertise();
  const y = server.neighbours.get("dev-01")![0];
  const base = JSON.parse(JSON.stringify(reqs.get(y))) as ShareKeysRequest;
  const withAd = (ad: KeyAdvertisement, identityKey?: JsonWebKey): ShareKeysRequest => ({
    ...base,
    neighbours: base.neighbours.map((n) =>
      n.advertisement.deviceId === "dev-01"
        ? { advertisement: ad, identityKey: identityKey ?? n.identityKey }
        : n,
    ),
  });
  const s = identity("dev-01").signer;
  const old = (await SecAggClient.start({ jobId: "job-a", round: 6 }, "dev-01", 11, s)).advertisement;
  const otherJob = (await SecAggClient.start({ jobId: "job-b", round: 7 }, "dev-01", 11, s)).advertisement;

  // Each check on a fresh client (a failed step is terminal).
  const w = 10 + all.indexOf(y);
  const fresh = async () => (await SecAggClient.start(SESSION, y, w, identity(y).signer)).client;
  let c = await fresh();
  assert.equal(
    errorCode(() => c.shareKeys(withAd(old))),
    "E_SECAGG_REPLAY",
  );
  c = await fresh();
  assert.equal(
    errorCode(() => c.shareKeys(withAd(otherJob))),
    "E_SECAGG_REPLAY",
  );
  // a request for another round is not for this client: rejected without changing its state
  const real = clients.get(y)!;
  assert.equal(
    errorCode(() => real.shareKeys({ ...base, round: 8 })),
    "E_SECAGG_REPLAY",
  );
  assert.equal(real.step, "advertised");
  // a neighbour missing / an extra one
  c = await fresh();
  assert.equal(
    errorCode(() => c.shareKeys({ ...base, neighbours: base.neighbours.slice(1) })),
    "E_SECAGG_GRAPH",
  );
  // an attacker's identity key relayed with an advertisement it signed: accepted unless identities are pinned
  const mallory = LocalSigner.generate("dev-01");
  const fake = (await SecAggClient.start(SESSION, "dev-01", 11, mallory.signer)).advertisement;
  const pinned = (
    await SecAggClient.start(SESSION, y, w, identity(y).signer, {
      identityKey: (id) => idCache.get(id)?.publicKey,
    })
  ).client;
  assert.equal(
    errorCode(() => pinned.shareKeys(withAd(fake, mallory.publicKey))),
    "E_SECAGG_SIGNATURE",
  );
  // the genuine request still works on the real client
  real.shareKeys(base);
  assert.equal(real.step, "shared");
});

test("a curious server asking one device for both shares of a neighbour is refused (one request or two)", async () => {
  const A = "dev-00";
  const cases: ((r: UnmaskRequest, ctx: { unmask: (r: UnmaskRequest) => unknown }) => UnmaskRequest)[] = [
    // one request: B both survivor and dropped
    (r) => ({ ...r, dropped: [...r.dropped, r.survivors[0]] }),
    // first ask for B's mask-key share (B "dropped"), then the genuine request (B survivor)
    (r, ctx) => {
      ctx.unmask({ ...r, survivors: r.survivors.slice(1), dropped: [...r.dropped, r.survivors[0]] });
      return r;
    },
    // first the genuine request, then B as dropped
    (r, ctx) => {
      ctx.unmask(r);
      return { ...r, survivors: r.survivors.slice(1), dropped: [...r.dropped, r.survivors[0]] };
    },
    // a device that is not a neighbour / fewer than t survivors
    (r) => ({ ...r, survivors: [...r.survivors, "dev-99"] }),
    (r) => ({ ...r, survivors: r.survivors.slice(0, 4), dropped: [...r.dropped, ...r.survivors.slice(4)] }),
  ];
  for (const [i, tamper] of cases.entries()) {
    const { report, expected } = await driverRound(10, {
      onServerAction: (step, ctx) => {
        if (step !== "unmask") return;
        const client = ctx.clients.get(A)!;
        const r = ctx.requests.get(A) as UnmaskRequest;
        ctx.requests.set(A, tamper(r, { unmask: (q) => client.unmask(q) }));
      },
    });
    const err = report.devices.get(A)!.clientError;
    assert.equal(err?.code, "E_SECAGG_REFUSED", `case ${i}: ${JSON.stringify(err)}`);
    assert.equal(err?.step, "unmask");
    // A's input is still in the sum (its neighbours unmask it); the round completes.
    assert.deepEqual(report.result.quantizedSum, expected);
  }
});

test("tampered or withheld shares: the device refuses to mask (E_SECAGG_DECRYPT, E_SECAGG_REFUSED)", async () => {
  const A = "dev-03";
  const flip = (t: string) => {
    const b = Buffer.from(t, "base64url");
    b[7] ^= 0x80;
    return b.toString("base64url");
  };
  const tampered = await driverRound(10, {
    onServerAction: (step, ctx) => {
      if (step !== "mask") return;
      const r = ctx.requests.get(A) as MaskInputRequest;
      const shares = r.shares.map((s, i) => (i === 0 ? { ...s, ciphertext: flip(s.ciphertext) } : s));
      ctx.requests.set(A, { ...r, shares });
    },
  });
  assert.equal(tampered.report.devices.get(A)!.clientError?.code, "E_SECAGG_DECRYPT");
  assert.deepEqual(tampered.report.result.dropouts.mask, [A]);
  assert.deepEqual(tampered.report.result.quantizedSum, tampered.expected);

  const withheld = await driverRound(10, {
    onServerAction: (step, ctx) => {
      if (step !== "mask") return;
      const r = ctx.requests.get(A) as MaskInputRequest;
      ctx.requests.set(A, { ...r, shares: r.shares.slice(0, 4) }); // t = 5
    },
  });
  assert.deepEqual(
    { ...withheld.report.devices.get(A)!.clientError, message: "" },
    { step: "mask", code: "E_SECAGG_REFUSED", message: "" },
  );
  // a share redirected from another device's request fails too (AAD and key bind sender and recipient)
  const redirected = await driverRound(10, {
    onServerAction: (step, ctx) => {
      if (step !== "mask") return;
      const r = ctx.requests.get(A) as MaskInputRequest;
      const b = ctx.requests.get("dev-04") as MaskInputRequest;
      const foreign = b.shares.find((s) => s.from !== A && r.shares.some((x) => x.from === s.from))!;
      ctx.requests.set(A, {
        ...r,
        shares: r.shares.map((s) => (s.from === foreign.from ? { ...foreign, to: A } : s)),
      });
    },
  });
  assert.equal(redirected.report.devices.get(A)!.clientError?.code, "E_SECAGG_DECRYPT");
});

test("misuse throws E_SECAGG_STATE; malformed messages E_SECAGG_MESSAGE; after an abort everything E_SECAGG_ABORTED", async () => {
  const { all, clients, ads, server } = await setup(6);
  const c = clients.get("dev-00")!;
  assert.equal(
    errorCode(() => c.maskInput({ ...SESSION, shares: [] }, new Float32Array(D))),
    "E_SECAGG_STATE",
  );
  assert.equal(
    errorCode(() => c.unmask({ ...SESSION, survivors: [], dropped: [] })),
    "E_SECAGG_STATE",
  );
  assert.equal(
    errorCode(() => server.closeShares()),
    "E_SECAGG_STATE",
  );
  assert.equal(
    errorCode(() => server.finish()),
    "E_SECAGG_STATE",
  );
  for (const id of all) server.addAdvertisement(ads.get(id)!);
  const shareReqs = server.closeAdvertise();
  assert.equal(
    errorCode(() => server.addAdvertisement(ads.get("dev-00")!)),
    "E_SECAGG_STATE",
  );
  const resp = new Map(all.map((id) => [id, clients.get(id)!.shareKeys(shareReqs.get(id)!)]));
  assert.equal(
    errorCode(() => c.shareKeys(shareReqs.get("dev-00")!)),
    "E_SECAGG_STATE",
  );
  const r0 = resp.get("dev-00")!;
  assert.equal(
    errorCode(() => server.addShares({ ...r0, shares: r0.shares.slice(1) })),
    "E_SECAGG_MESSAGE",
  );
  assert.equal(
    errorCode(() => server.addShares({ ...r0, deviceId: "dev-01" })),
    "E_SECAGG_MESSAGE",
  );
  assert.equal(
    errorCode(() => server.addShares({ ...r0, round: 6 })),
    "E_SECAGG_REPLAY",
  );
  for (const id of all) if (id !== "dev-05") server.addShares(resp.get(id)!);
  const maskReqs = server.closeShares();
  assert.equal(maskReqs.has("dev-05"), false);
  const mi = clients.get("dev-00")!.maskInput(maskReqs.get("dev-00")!, new Float32Array(D).fill(0.5));
  assert.equal(
    errorCode(() => server.addMaskedInput({ ...mi, masked: mi.masked.subarray(1) })),
    "E_SECAGG_MESSAGE",
  );
  assert.equal(
    errorCode(() => server.addMaskedInput({ ...mi, deviceId: "dev-05" })),
    "E_SECAGG_MESSAGE",
  );
  assert.equal(
    errorCode(() => server.addMaskedInput({ ...mi, masked: [...mi.masked] as never })),
    "E_SECAGG_MESSAGE",
  );
  server.addMaskedInput(mi);
  assert.equal(
    errorCode(() => server.addMaskedInput(mi)),
    "E_SECAGG_MESSAGE",
  );
  server.abort("operator stop");
  assert.equal(server.stage, "aborted");
  for (const op of [
    () => server.addMaskedInput(mi),
    () => server.closeMasked(),
    () => server.closeAdvertise(),
    () => server.addAdvertisement(ads.get("dev-00")!),
    () => server.finish(),
  ])
    assert.equal(errorCode(op), "E_SECAGG_ABORTED");
  assert.deepEqual(server.dropouts.share, ["dev-05"]);
});
