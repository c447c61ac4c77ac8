import { test } from "@jest/globals";
import assert from "node:assert/strict";
import type { JsonWebKey } from "node:crypto";
import { runSecAggRound, type SecAggRoundOptions } from "../../../core/secagg/driver";
import { neighbourGraph } from "../../../core/secagg/graph";
import { LocalSigner } from "../../../core/secagg/identity";
import { defaultParams } from "../../../core/secagg/params";
import type { SecAggServer } from "../../../core/secagg/server";
import type { IdentitySigner, SecAggParams, SecAggStep } from "../../../core/secagg/types";
import { isFlotillaError } from "../../../core/errors";

const ids = (n: number) => Array.from({ length: n }, (_, i) => `dev-${String(i).padStart(2, "0")}`);
const SEED = new Uint8Array(32).fill(42);

/** Identity keys, generated once per id for the whole file. */
const idCache = new Map<string, { signer: IdentitySigner; publicKey: JsonWebKey }>();
function identities(all: string[]): Pick<SecAggRoundOptions, "signers" | "identityKeys"> {
  for (const id of all) if (!idCache.has(id)) idCache.set(id, LocalSigner.generate(id));
  return {
    signers: new Map(all.map((id) => [id, idCache.get(id)!.signer])),
    identityKeys: new Map(all.map((id) => [id, idCache.get(id)!.publicKey])),
  };
}

function updatesFor(all: string[], d: number) {
  return new Map(
    all.map((id, k) => {
      const u = new Float32Array(d);
      for (let i = 0; i < d; i++) u[i] = Math.sin(i * 0.37 + k * 1.3) * (1 + k / 4) + (i % 7 === 0 ? 12 : 0); // some clipped
      return [id, { update: u, weight: 5 + 3 * k }];
    }),
  );
}

/** Runs a round, capturing each device's encoded vector; returns the result and the exact expected ring sum. */
async function round(
  n: number,
  opts: Partial<SecAggRoundOptions> & { params?: SecAggParams; d?: number } = {},
) {
  const all = ids(n);
  const d = opts.d ?? 257;
  const encoded = new Map<string, Uint32Array>();
  let server: SecAggServer | undefined;
  const report = await runSecAggRound({
    session: { jobId: "job-1", round: 7 },
    params: opts.params ?? defaultParams(n),
    updates: updatesFor(all, d),
    graphSeed: SEED,
    ...identities(all),
    ...opts,
    onEncoded: (id, e) => encoded.set(id, e),
    onServerAction: (step, ctx) => {
      server = ctx.server;
      opts.onServerAction?.(step, ctx);
    },
  });
  const expected = new Uint32Array(d);
  for (const id of report.result.included) {
    const e = encoded.get(id)!;
    for (let i = 0; i < d; i++) expected[i] += e[i];
  }
  return { report, expected, encoded, server, all };
}

async function abortCode(p: Promise<unknown>): Promise<string> {
  try {
    await p;
  } catch (e) {
    assert.ok(isFlotillaError(e), String(e));
    return e.code;
  }
  return assert.fail("expected the round to abort");
}

test("no dropout: the ring sum equals the sum of the encoded updates exactly; the mean matches", async () => {
  const n = 8;
  const d = 1001;
  const { report, expected, all } = await round(n, { d });
  const r = report.result;
  assert.deepEqual(r.quantizedSum, expected);
  assert.deepEqual(r.included, all);
  assert.deepEqual(r.dropouts, { advertise: [], share: [], mask: [], unmask: [] });
  const ups = updatesFor(all, d);
  const W = [...ups.values()].reduce((s, u) => s + u.weight, 0);
  assert.equal(r.totalWeight, W);
  let maxErr = 0;
  for (let i = 0; i < d; i++) {
    let m = 0;
    for (const u of ups.values()) m += (u.weight * Math.max(-8, Math.min(8, u.update[i]))) / W;
    maxErr = Math.max(maxErr, Math.abs(r.mean[i] - m));
  }
  assert.ok(maxErr < 1e-5, `max |mean - weighted mean| = ${maxErr}`);
  assert.ok(r.unmaskMs >= 0);
  for (const [id, dev] of report.devices) {
    assert.ok(dev.bytesUp > 4 * d && dev.bytesDown > 0 && dev.computeMs > 0, id);
    assert.equal(dev.clientError, undefined);
  }
});

test("a dropout at each single step still gives the exact sum of the included devices", async () => {
  for (const step of ["advertise", "share", "mask", "unmask"] as SecAggStep[]) {
    const { report, expected } = await round(10, { dropAt: new Map([["dev-03", step]]) });
    assert.deepEqual(report.result.quantizedSum, expected, step);
    assert.deepEqual(report.result.dropouts[step], ["dev-03"], step);
    assert.equal(report.result.included.includes("dev-03"), step === "unmask", step);
  }
});

test("dropouts at every step up to the tolerable limit give the exact sum; one more aborts with nothing unmasked", async () => {
  // n = 12, k = 8, t = 5: a device survives losing 3 of its 8 neighbours. dev-11 vanishes before the graph is
  // drawn (advertise); then three neighbours of one device X vanish at share, mask and unmask.
  const params: SecAggParams = { neighbours: 8, threshold: 5, clipRange: 8, modulusBits: 32 };
  const all = ids(12);
  const u1 = all.filter((id) => id !== "dev-11");
  const g = neighbourGraph(u1, 8, SEED);
  const x = u1[0];
  const [a, b, c, extra] = g.get(x)!;
  const dropAt = new Map<string, SecAggStep>([
    ["dev-11", "advertise"],
    [a, "share"],
    [b, "mask"],
    [c, "unmask"],
  ]);
  const { report, expected } = await round(12, { params, dropAt });
  const r = report.result;
  assert.deepEqual(r.quantizedSum, expected);
  assert.deepEqual(r.dropouts, { advertise: ["dev-11"], share: [a], mask: [b], unmask: [c] });
  assert.deepEqual(
    r.included,
    u1.filter((id) => id !== a && id !== b),
  );

  // One more of X's neighbours gone at unmask: only 4 < t self-mask shares of X can arrive. The server aborts
  // before reconstructing anything, and refuses everything afterwards.
  let server: SecAggServer | undefined;
  const code = await abortCode(
    round(12, {
      params,
      dropAt: new Map([...dropAt, [extra, "unmask"]]),
      onServerAction: (_s, ctx) => (server = ctx.server),
    }),
  );
  assert.equal(code, "E_SECAGG_ABORTED");
  assert.equal(server!.stage, "aborted");
  assert.match(server!.abortedBecause!, /nothing is unmasked/);
  assert.equal(
    (() => {
      try {
        server!.finish();
      } catch (e) {
        return (e as { code?: string }).code;
      }
    })(),
    "E_SECAGG_ABORTED",
  );

  // Four of X's neighbours gone by the mask step: abort before any unmask request goes out.
  let unmaskAsked = false;
  const code2 = await abortCode(
    round(12, {
      params,
      dropAt: new Map([...dropAt, [c, "mask"], [extra, "mask"]]),
      onServerAction: (s) => (unmaskAsked ||= s === "unmask"),
    }),
  );
  assert.equal(code2, "E_SECAGG_ABORTED");
  assert.equal(unmaskAsked, false, "no device was asked to reveal anything");

  // Too few advertisers: abort at once.
  const few = new Map(all.slice(0, 10).map((id) => [id, "advertise" as SecAggStep]));
  assert.equal(await abortCode(round(12, { params, dropAt: few })), "E_SECAGG_ABORTED");
});

test("classic SecAgg (k = n-1) with dropouts, and the ChaCha20 PRG, give exact sums", async () => {
  const params: SecAggParams = { neighbours: 5, threshold: 3, clipRange: 8, modulusBits: 32 };
  const dropAt = new Map<string, SecAggStep>([
    ["dev-01", "mask"],
    ["dev-04", "unmask"],
  ]);
  const classic = await round(6, { params, dropAt });
  assert.deepEqual(classic.report.result.quantizedSum, classic.expected);
  assert.equal(classic.report.result.included.length, 5);
  for (const nbs of classic.report.server.neighbours.values()) assert.equal(nbs.length, 5);

  const chacha = await round(9, { prg: "chacha20", dropAt: new Map([["dev-02", "mask"]]) });
  assert.deepEqual(chacha.report.result.quantizedSum, chacha.expected);
});
