import { describe, test } from "@jest/globals";
import assert from "node:assert/strict";
import { isFlotillaError } from "../../../core/errors";
import { generateSynthetic, parseSyntheticSpec } from "../../../core/fleet/synthetic";
import { quantile } from "../../../core/fleet/trace";
import {
  SELECTION_KINDS,
  SelectionHistory,
  createSelector,
  estimateRoundS,
  explorationFactor,
  OORT_DEFAULTS,
  type DeviceProfile,
  type SelectionContext,
  type Selector,
} from "../../../core/selection";
import { FedAvg } from "../../../core/strategies/fedavg";

const ctx = (round: number, over: Partial<SelectionContext> = {}): SelectionContext => ({
  round,
  count: 10,
  seed: 7,
  deadlineS: 600,
  downloadBytes: 400_000,
  uploadBytes: 400_000,
  epochs: 1,
  ...over,
});

/** n devices d000.. with a 20x spread of speed (fast first). */
function fleet(n: number, over: (i: number) => Partial<DeviceProfile> = () => ({})): DeviceProfile[] {
  return Array.from({ length: n }, (_, i) => ({
    deviceId: `d${String(i).padStart(3, "0")}`,
    numSamples: 1000,
    samplesPerSecond: 200 / (1 + (19 * i) / Math.max(1, n - 1)),
    uplinkBytesPerSecond: 1_000_000,
    downlinkBytesPerSecond: 1_000_000,
    rttMs: 50,
    ...over(i),
  }));
}

function expectCode(f: () => unknown, code: string, re?: RegExp): void {
  assert.throws(f, (e: unknown) => {
    assert.ok(isFlotillaError(e), String(e));
    assert.equal(e.code, code);
    assert.ok(!e.message.includes("\n"), "one line");
    if (re) assert.match(e.message, re);
    return true;
  });
}

describe("createSelector", () => {
  test("builds every kind, with options; SELECTION_KINDS lists them", () => {
    assert.deepEqual([...SELECTION_KINDS], ["random", "deadline", "oort"]);
    for (const k of SELECTION_KINDS) assert.equal(createSelector(k).name, k);
    assert.equal(createSelector(" OORT ").name, "oort");
    assert.equal(createSelector("oort:floor=5,alpha=1.5").spec, "oort:alpha=1.5,floor=5");
    assert.equal(createSelector("deadline:margin=1.2").spec, "deadline:margin=1.2");
  });

  test("a bad spec is one E_CONFIG_SELECTION line naming the bad part and the valid ones", () => {
    expectCode(() => createSelector("fastest"), "E_CONFIG_SELECTION", /'fastest'.*random, deadline, oort/);
    expectCode(() => createSelector(""), "E_CONFIG_SELECTION", /valid: random/);
    expectCode(() => createSelector("oort:florr=3"), "E_CONFIG_SELECTION", /'florr'.*floor/);
    expectCode(() => createSelector("oort:floor=2.5"), "E_CONFIG_SELECTION", /floor='2.5'.*integer/);
    expectCode(() => createSelector("oort:alpha=-1"), "E_CONFIG_SELECTION", /alpha='-1'/);
    expectCode(() => createSelector("oort:epsilon=abc"), "E_CONFIG_SELECTION", /epsilon='abc'/);
    expectCode(() => createSelector("oort:T"), "E_CONFIG_SELECTION", /'T' needs a value/);
    expectCode(() => createSelector("oort:T=0"), "E_CONFIG_SELECTION", /T='0'/);
    expectCode(() => createSelector("oort:floor=1,floor=2"), "E_CONFIG_SELECTION", /twice/);
    expectCode(() => createSelector("oort:"), "E_CONFIG_SELECTION", /empty/);
    expectCode(() => createSelector("oort:epsilon=0.1,minEpsilon=0.5"), "E_CONFIG_SELECTION", /minEpsilon/);
    expectCode(() => createSelector("random:x=1"), "E_CONFIG_SELECTION", /takes no options/);
    expectCode(() => createSelector("deadline:margin=0.5"), "E_CONFIG_SELECTION", /margin='0.5'/);
    expectCode(() => createSelector(3 as unknown as string), "E_CONFIG_SELECTION", /string/);
  });
});

describe("random", () => {
  test("is FedAvg's configureFit draw (the unchanged baseline), whatever the candidates' order", () => {
    const devs = fleet(57);
    const fedavg = new FedAvg({ clientsPerRound: 10, seed: 7, fit: { epochs: 1, batchSize: 32, lr: 0.1 } });
    const sel = createSelector("random");
    for (let r = 1; r <= 20; r++) {
      const want = fedavg.configureFit(r, devs).map((x) => x.deviceId);
      assert.deepEqual(sel.select(devs, new Map(), ctx(r)), want);
      assert.deepEqual(sel.select([...devs].reverse(), new Map(), ctx(r)), want);
    }
    assert.equal(sel.select(devs.slice(0, 3), new Map(), ctx(1)).length, 3);
  });
});

describe("deadline (FedCS)", () => {
  test("keeps the devices that finish in time, fastest first, and drops slow, leaving and low-memory ones", () => {
    const devs = fleet(30, (i) => ({
      ...(i === 0 ? { onlineForS: 5 } : {}), // the fastest, but leaving in 5 s
      ...(i === 1 ? { memoryBytes: 100 } : {}), // too little memory
      ...(i === 2 ? { memoryBytes: 4e9 } : {}),
    }));
    const c = ctx(3, { deadlineS: 60, count: 50, minMemoryBytes: 1e9 });
    const picks = createSelector("deadline").select(devs, new Map(), c);
    assert.ok(!picks.includes("d000") && !picks.includes("d001"));
    assert.ok(picks.includes("d002"));
    for (const id of picks)
      assert.ok(
        estimateRoundS(
          devs.find((d) => d.deviceId === id)!,
          c,
        ) <= 60,
      );
    const tooSlow = devs.filter((d) => estimateRoundS(d, c) > 60).map((d) => d.deviceId);
    assert.ok(tooSlow.length > 5, "the fleet has devices too slow for the deadline");
    for (const id of tooSlow) assert.ok(!picks.includes(id));
    // sorted by estimate, and count limits it to the fastest
    const times = picks.map((id) =>
      estimateRoundS(
        devs.find((d) => d.deviceId === id)!,
        c,
      ),
    );
    assert.deepEqual(
      times,
      [...times].sort((a, b) => a - b),
    );
    assert.deepEqual(
      createSelector("deadline").select(devs, new Map(), { ...c, count: 3 }),
      picks.slice(0, 3),
    );
    // margin tightens it
    const strict = createSelector("deadline:margin=2").select(devs, new Map(), c);
    assert.ok(strict.length < picks.length && strict.every((id) => picks.includes(id)));
  });

  test("unknown figures take the conservative defaults; equal estimates are ordered by the seed", () => {
    const same = Array.from({ length: 20 }, (_, i) => ({ deviceId: `s${i}` }));
    const sel = createSelector("deadline");
    const a = sel.select(same, new Map(), ctx(1, { count: 5 }));
    assert.equal(a.length, 5);
    assert.deepEqual(sel.select([...same].reverse(), new Map(), ctx(1, { count: 5 })), a);
    assert.notDeepEqual(sel.select(same, new Map(), ctx(2, { count: 5 })), a);
    // 1000 samples at the default 10 samples/s do not fit a 60 s deadline
    assert.deepEqual(sel.select(same, new Map(), ctx(1, { deadlineS: 60 })), []);
  });
});

/** Runs `rounds` rounds of `sel`, each pick completing with its estimated duration and its device's loss. */
function simulate(
  sel: Selector,
  devs: DeviceProfile[],
  rounds: number,
  loss: (id: string) => number,
  c: (r: number) => SelectionContext,
): { picks: string[][]; history: SelectionHistory } {
  const history = new SelectionHistory();
  const picks: string[][] = [];
  const byId = new Map(devs.map((d) => [d.deviceId, d]));
  for (let r = 1; r <= rounds; r++) {
    const p = sel.select(devs, history, c(r));
    assert.equal(new Set(p).size, p.length, "distinct picks");
    picks.push(p);
    history.recordSelected(r, p);
    for (const id of p)
      history.recordCompleted(id, {
        loss: loss(id),
        samples: byId.get(id)!.numSamples,
        durationS: estimateRoundS(byId.get(id)!, c(r)),
      });
  }
  return { picks, history };
}

describe("oort", () => {
  test("is deterministic: the same inputs give the same picks", () => {
    const devs = fleet(80);
    const loss = (id: string) => 1 + (Number(id.slice(1)) % 7);
    const a = simulate(createSelector("oort"), devs, 15, loss, (r) => ctx(r));
    const b = simulate(createSelector("oort"), [...devs].reverse(), 15, loss, (r) => ctx(r));
    assert.deepEqual(a.picks, b.picks);
  });

  test("explores never-picked devices first (ε decays), then prefers fast devices with a high loss", () => {
    // loss high for even devices; speed falls with the index (d000 fastest); T = 30 s penalises the slow half.
    const devs = fleet(100);
    const loss = (id: string) => (Number(id.slice(1)) % 2 === 0 ? 4 : 0.5);
    const c = (r: number) => ctx(r, { deadlineS: 60 });
    const sel = createSelector("oort:floor=0");
    const { picks } = simulate(sel, devs, 40, loss, c);
    // exploration: round 1 is all new devices, and by round 10 most of the fleet has been tried
    assert.equal(picks[0].length, 10);
    const seen = new Set(picks.slice(0, 10).flat());
    assert.ok(seen.size >= 60, `explored ${seen.size}`);
    assert.ok(explorationFactor(OORT_DEFAULTS, 1) === 0.9 && explorationFactor(OORT_DEFAULTS, 200) === 0.2);
    // exploitation: in late rounds, picks are mostly fast, high-loss devices
    const late = picks.slice(30).flat();
    const good = late.filter((id) => Number(id.slice(1)) % 2 === 0 && Number(id.slice(1)) < 50).length;
    assert.ok(good / late.length > 0.6, `fast high-loss share ${good / late.length}`);
    const random = simulate(createSelector("random"), devs, 40, loss, c).picks.slice(30).flat();
    const goodRandom = random.filter(
      (id) => Number(id.slice(1)) % 2 === 0 && Number(id.slice(1)) < 50,
    ).length;
    assert.ok(good > 2 * goodRandom, `oort ${good} vs random ${goodRandom}`);
  });

  test("timeouts lower a device's utility; maxTimeouts leaves it out", () => {
    const devs = fleet(12);
    const h = new SelectionHistory();
    h.recordSelected(
      1,
      devs.map((d) => d.deviceId),
    );
    for (const d of devs) h.recordCompleted(d.deviceId, { loss: 1, samples: 1000, durationS: 10 });
    h.recordTimeout("d000");
    h.recordTimeout("d000");
    const c = ctx(2, { count: 11 });
    assert.ok(!createSelector("oort:maxTimeouts=2,floor=0").select(devs, h, c).includes("d000"));
    assert.ok(
      createSelector("oort:maxTimeouts=3,floor=0")
        .select(devs, h, { ...c, count: 12 })
        .includes("d000"),
    );
    // penalised: with 11 of 12 slots, the device that timed out (the fastest, otherwise equal) is the one left out
    for (let seed = 0; seed < 20; seed++) {
      const p = createSelector("oort:floor=0").select(devs, h, { ...c, seed });
      assert.equal(p.length, 11);
      assert.ok(!p.includes("d000"), `seed ${seed}`);
    }
  });

  test("the floor: every eligible device is picked in every window of floor + 1 rounds (200 skewed devices)", () => {
    // lognormal-like skew: speeds over 100x, losses over 20x; oort alone would starve the slow, low-loss devices
    const devs = fleet(200, (i) => ({ samplesPerSecond: 500 / Math.pow(1.025, i) }));
    const loss = (id: string) => 20 / (1 + (Number(id.slice(1)) % 20));
    for (const [floor, count] of [
      [20, 10],
      [9, 25],
      [30, 20],
    ]) {
      const c = (r: number) => ctx(r, { count, deadlineS: 120 });
      const { picks } = simulate(createSelector(`oort:floor=${floor}`), devs, 150, loss, c);
      const last = new Map<string, number>(devs.map((d) => [d.deviceId, 0]));
      picks.forEach((p, i) => {
        const r = i + 1;
        assert.equal(p.length, count);
        for (const id of p) last.set(id, r);
        for (const [id, l] of last)
          assert.ok(r - l <= floor, `floor ${floor}: ${id} not picked in rounds ${l + 1}..${r}`);
      });
      // without the floor the slowest devices starve
      const { history } = simulate(createSelector("oort:floor=0"), devs, 150, loss, c);
      const never = devs.filter((d) => (history.get(d.deviceId)?.selected ?? 0) <= 1).length;
      assert.ok(never > 0, "oort without a floor leaves some device picked at most once");
    }
  });

  test("a device that is not eligible for a while is picked as soon as it is eligible again, when overdue", () => {
    const devs = fleet(40);
    const h = new SelectionHistory();
    const sel = createSelector("oort:floor=5");
    for (let r = 1; r <= 30; r++) {
      const cands = r < 20 ? devs.filter((d) => d.deviceId !== "d039") : devs;
      const p = sel.select(cands, h, ctx(r, { count: 8 }));
      if (r === 20) assert.ok(p.includes("d039"), "d039 is overdue and picked on its return");
      h.recordSelected(r, p);
      for (const id of p) h.recordCompleted(id, { loss: 1, samples: 1000, durationS: 5 });
    }
  });
});

describe("over a heterogeneous synthetic fleet", () => {
  test("deadline and oort pick devices with a lower median estimated round time than random", () => {
    const trace = generateSynthetic(parseSyntheticSpec("synthetic"), 300, 11);
    const devs: DeviceProfile[] = trace.devices.map((d) => ({
      deviceId: d.deviceId,
      numSamples: 600,
      samplesPerSecond: d.samplesPerSecond,
      uplinkBytesPerSecond: d.uplinkBytesPerSecond,
      downlinkBytesPerSecond: d.downlinkBytesPerSecond,
      rttMs: d.rttMs,
    }));
    const c = (r: number) =>
      ctx(r, { count: 20, deadlineS: 120, downloadBytes: 800_000, uploadBytes: 200_000 });
    const loss = () => 1;
    const median = (sel: string) => {
      const { picks } = simulate(createSelector(sel), devs, 30, loss, c);
      const byId = new Map(devs.map((d) => [d.deviceId, d]));
      return quantile(
        picks.flat().map((id) => estimateRoundS(byId.get(id)!, c(1))),
        0.5,
      );
    };
    const random = median("random");
    const deadline = median("deadline");
    const oort = median("oort");
    assert.ok(deadline < random, `deadline ${deadline} vs random ${random}`);
    assert.ok(oort < random, `oort ${oort} vs random ${random}`);
  });
});
