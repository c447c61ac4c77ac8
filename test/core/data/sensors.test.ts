import { test } from "@jest/globals";
import assert from "node:assert/strict";
import {
  generateSensors,
  SENSOR_CHANNELS,
  SENSOR_CLASSES,
  SENSOR_SAMPLE_RATE_HZ,
} from "../../../core/data/sensors";
import type { Dataset } from "../../../core/data/dataset";
import { errorCode as code } from "../../helpers/errors";

const SMALL = { devices: 6, samplesPerDevice: 100, seed: 7, testSamples: 250 };

function counts(ds: Dataset): number[] {
  const c = new Array<number>(ds.numClasses).fill(0);
  for (const v of ds.y) c[v]++;
  return c;
}

/** Per-window features: mean of each channel, RMS of each channel around its mean. */
function channelStats(ds: Dataset, i: number): { mean: number[]; rms: number[] } {
  const [T, C] = ds.inputShape;
  const w = ds.x.subarray(i * T * C, (i + 1) * T * C);
  const mean = new Array<number>(C).fill(0);
  const rms = new Array<number>(C).fill(0);
  for (let t = 0; t < T; t++) for (let c = 0; c < C; c++) mean[c] += w[t * C + c] / T;
  for (let t = 0; t < T; t++) for (let c = 0; c < C; c++) rms[c] += (w[t * C + c] - mean[c]) ** 2 / T;
  return { mean, rms: rms.map(Math.sqrt) };
}

/** Average of f over the windows of class k. */
function classAverage(ds: Dataset, k: number, f: (i: number) => number): number {
  let s = 0;
  let n = 0;
  for (let i = 0; i < ds.n; i++) {
    if (ds.y[i] === k) {
      s += f(i);
      n++;
    }
  }
  return s / n;
}

/** |DFT| of channel c of window i at `hz` (nearest evaluation, not binned), normalised by T. */
function amplitudeAt(ds: Dataset, i: number, c: number, hz: number): number {
  const [T, C] = ds.inputShape;
  let re = 0;
  let im = 0;
  for (let t = 0; t < T; t++) {
    const v = ds.x[i * T * C + t * C + c];
    re += v * Math.cos((2 * Math.PI * hz * t) / SENSOR_SAMPLE_RATE_HZ);
    im += v * Math.sin((2 * Math.PI * hz * t) / SENSOR_SAMPLE_RATE_HZ);
  }
  return Math.hypot(re, im) / T;
}

test("shapes, class count and names", () => {
  const s = generateSensors(SMALL);
  assert.equal(s.devices.length, 6);
  assert.equal(s.profiles.length, 6);
  assert.equal(SENSOR_CLASSES.length, 5);
  assert.equal(SENSOR_CLASSES[0], "normal"); // the autoencoder treats label 0 as normal
  for (const ds of [...s.devices, s.test]) {
    assert.deepEqual(ds.inputShape, [32, 6]);
    assert.equal(ds.numClasses, 5);
    assert.deepEqual(ds.classNames, [...SENSOR_CLASSES]);
    assert.equal(ds.x.length, ds.n * 32 * 6);
    for (const v of ds.x) assert.ok(Number.isFinite(v));
    for (const v of ds.y) assert.ok(v >= 0 && v < 5);
  }
  for (const d of s.devices) assert.equal(d.n, 100);
  assert.equal(s.test.n, 250);
  assert.deepEqual(counts(s.test), [50, 50, 50, 50, 50]);

  const other = generateSensors({ ...SMALL, windowLength: 64, channels: 3 });
  assert.deepEqual(other.devices[0].inputShape, [64, 3]);
  assert.equal(other.test.x.length, 250 * 64 * 3);
  const wide = generateSensors({ ...SMALL, devices: 1, channels: 8 });
  assert.deepEqual(wide.devices[0].inputShape, [32, 8]);
  assert.equal(SENSOR_CHANNELS.length, 6);
});

test("deterministic for a seed; other seeds differ", () => {
  const a = generateSensors(SMALL);
  const b = generateSensors(SMALL);
  for (let d = 0; d < a.devices.length; d++) {
    assert.deepEqual(a.devices[d].x, b.devices[d].x);
    assert.deepEqual(a.devices[d].y, b.devices[d].y);
  }
  assert.deepEqual(a.test.x, b.test.x);
  assert.deepEqual(a.test.y, b.test.y);
  const c = generateSensors({ ...SMALL, seed: 8 });
  assert.notDeepEqual(a.devices[0].x, c.devices[0].x);
  assert.notDeepEqual(a.test.x, c.test.x);
  assert.notEqual(a.profiles[0].shaftHz, c.profiles[0].shaftHz);
  // Device d does not depend on how many devices are generated.
  const fewer = generateSensors({ ...SMALL, devices: 2 });
  assert.deepEqual(fewer.devices[1].x, a.devices[1].x);
  assert.deepEqual(fewer.test.x, a.test.x);
});

test("values are roughly unit scale", () => {
  const s = generateSensors({ ...SMALL, devices: 10 });
  const all = [...s.devices, s.test];
  for (let c = 0; c < 6; c++) {
    let sum = 0;
    let sq = 0;
    let n = 0;
    for (const ds of all) {
      for (let i = c; i < ds.x.length; i += 6) {
        sum += ds.x[i];
        sq += ds.x[i] * ds.x[i];
        n++;
      }
    }
    const mean = sum / n;
    const std = Math.sqrt(sq / n - mean * mean);
    assert.ok(Math.abs(mean) < 1.5, `${SENSOR_CHANNELS[c]} mean ${mean}`);
    assert.ok(std > 0.3 && std < 2, `${SENSOR_CHANNELS[c]} std ${std}`);
  }
});

test("class signatures: 1x for imbalance, axial for misalignment, heat and current for overheating", () => {
  const s = generateSensors({ devices: 1, samplesPerDevice: 10, seed: 3, testSamples: 1000, labelSkew: 0 });
  const ds = s.test;
  const [normal, imbalance, misalignment, bearing, overheating] = [0, 1, 2, 3, 4];
  const radial1x = (i: number) => amplitudeAt(ds, i, 0, 25) + amplitudeAt(ds, i, 1, 25);
  assert.ok(classAverage(ds, imbalance, radial1x) > 2.5 * classAverage(ds, normal, radial1x));
  const axial = (i: number) => channelStats(ds, i).rms[2];
  assert.ok(classAverage(ds, misalignment, axial) > 2 * classAverage(ds, normal, axial));
  assert.ok(classAverage(ds, misalignment, axial) > 2 * classAverage(ds, imbalance, axial));
  const acoustic = (i: number) => channelStats(ds, i).rms[5];
  assert.ok(classAverage(ds, bearing, acoustic) > 1.8 * classAverage(ds, normal, acoustic));
  const temp = (i: number) => channelStats(ds, i).mean[3];
  const current = (i: number) => channelStats(ds, i).mean[4];
  assert.ok(classAverage(ds, overheating, temp) - classAverage(ds, normal, temp) > 2);
  assert.ok(classAverage(ds, overheating, current) - classAverage(ds, normal, current) > 1);
  // Overheating windows are still warming up: the second half is warmer than the first.
  const slope = (i: number) => {
    let d = 0;
    for (let t = 0; t < 16; t++) d += ds.x[i * 192 + (t + 16) * 6 + 3] - ds.x[i * 192 + t * 6 + 3];
    return d / 16;
  };
  assert.ok(classAverage(ds, overheating, slope) > 0.2);
  assert.ok(Math.abs(classAverage(ds, normal, slope)) < 0.05);
});

test("label skew: measurable per-device class imbalance that grows with labelSkew", () => {
  // Mean total-variation distance of each device's class mix from uniform.
  const skewOf = (labelSkew: number) => {
    const s = generateSensors({ devices: 20, samplesPerDevice: 100, seed: 11, testSamples: 5, labelSkew });
    let tv = 0;
    for (const d of s.devices) tv += 0.5 * counts(d).reduce((a, c) => a + Math.abs(c / d.n - 0.2), 0);
    return { tv: tv / s.devices.length, s };
  };
  const none = skewOf(0);
  assert.equal(none.tv, 0); // 100 windows, 5 classes: exactly 20 each
  const mid = skewOf(0.5);
  // Two dominant classes take labelSkew of the mass on top of the uniform share: TV = 0.6 * labelSkew
  // (a little more when the second class gets under 20%).
  assert.ok(mid.tv > 0.28 && mid.tv < 0.36, `labelSkew 0.5 tv ${mid.tv}`);
  const full = skewOf(1);
  assert.ok(full.tv > 0.58 && full.tv < 0.65, `labelSkew 1 tv ${full.tv}`);
  for (const d of full.s.devices) assert.ok(counts(d).filter((c) => c > 0).length <= 2);
  // Different devices are dominated by different classes.
  const dominant = new Set(mid.s.devices.map((d) => counts(d).indexOf(Math.max(...counts(d)))));
  assert.ok(dominant.size >= 4);
  // The default is the moderate skew.
  assert.equal(skewOf(0.5).tv, mid.tv);
  const byDefault = generateSensors({ devices: 20, samplesPerDevice: 100, seed: 11, testSamples: 5 });
  assert.deepEqual(byDefault.devices[3].y, mid.s.devices[3].y);
});

test("devices drift: each has its own shaft speed and baselines", () => {
  const s = generateSensors({ devices: 8, samplesPerDevice: 60, seed: 5, labelSkew: 0, testSamples: 5 });
  const speeds = s.profiles.map((p) => p.shaftHz);
  assert.equal(new Set(speeds).size, 8);
  for (const hz of speeds) assert.ok(hz >= 22 && hz <= 28);
  // Normal windows of different devices have different mean temperatures (ambient) more often than not.
  const normalTemp = s.devices.map((d) => classAverage(d, 0, (i) => channelStats(d, i).mean[3]));
  assert.ok(Math.max(...normalTemp) - Math.min(...normalTemp) > 0.5, `normal temperatures ${normalTemp}`);
  const same = generateSensors({
    devices: 8,
    samplesPerDevice: 60,
    seed: 5,
    labelSkew: 0,
    testSamples: 5,
    drift: 0,
  });
  assert.equal(new Set(same.profiles.map((p) => p.shaftHz)).size, 1);
});

test("learnable but not trivial: nearest class centroid on simple window statistics", () => {
  // Features: per-channel mean and RMS (12 numbers). Far above chance (0.2), but not perfect.
  const s = generateSensors({ devices: 10, samplesPerDevice: 200, seed: 42, testSamples: 1000 });
  const feats = (ds: Dataset, i: number) => {
    const st = channelStats(ds, i);
    return [...st.mean, ...st.rms];
  };
  const centroids = Array.from({ length: 5 }, () => new Array<number>(12).fill(0));
  const n = new Array<number>(5).fill(0);
  for (const d of s.devices) {
    for (let i = 0; i < d.n; i++) {
      const f = feats(d, i);
      n[d.y[i]]++;
      f.forEach((v, j) => (centroids[d.y[i]][j] += v));
    }
  }
  centroids.forEach((c, k) => c.forEach((_, j) => (c[j] /= n[k])));
  let ok = 0;
  for (let i = 0; i < s.test.n; i++) {
    const f = feats(s.test, i);
    let best = 0;
    let bestD = Infinity;
    centroids.forEach((c, k) => {
      const dist = c.reduce((a, v, j) => a + (v - f[j]) ** 2, 0);
      if (dist < bestD) {
        bestD = dist;
        best = k;
      }
    });
    if (best === s.test.y[i]) ok++;
  }
  const acc = ok / s.test.n;
  assert.ok(acc > 0.8 && acc < 0.98, `nearest-centroid accuracy ${acc}`); // 0.92 when written
});

test("bad options are E_CONFIG_SENSORS", () => {
  const base = { devices: 2, samplesPerDevice: 5, seed: 1 };
  assert.equal(
    code(() => generateSensors({ ...base, devices: 0 })),
    "E_CONFIG_SENSORS",
  );
  assert.equal(
    code(() => generateSensors({ ...base, samplesPerDevice: 1.5 })),
    "E_CONFIG_SENSORS",
  );
  assert.equal(
    code(() => generateSensors({ ...base, labelSkew: 1.2 })),
    "E_CONFIG_SENSORS",
  );
  assert.equal(
    code(() => generateSensors({ ...base, labelSkew: -0.1 })),
    "E_CONFIG_SENSORS",
  );
  assert.equal(
    code(() => generateSensors({ ...base, channels: 0 })),
    "E_CONFIG_SENSORS",
  );
  assert.equal(
    code(() => generateSensors({ ...base, windowLength: 2 })),
    "E_CONFIG_SENSORS",
  );
  assert.equal(
    code(() => generateSensors({ ...base, seed: NaN })),
    "E_CONFIG_SENSORS",
  );
  assert.equal(
    code(() => generateSensors({ ...base, testSamples: 0 })),
    "E_CONFIG_SENSORS",
  );
});
