import { fail } from "../errors";
import { makeDataset, type Dataset } from "./dataset";
import { Rng } from "./rng";

/**
 * A seeded synthetic IoT condition-monitoring dataset: windows of a rotating machine (motor, pump, fan) as seen
 * by an edge device's sensors, labelled with the machine's condition.
 *
 * A window is [T, C] (T = windowLength time steps at SENSOR_SAMPLE_RATE_HZ, C channels, row-major: time step
 * after time step). The six standard channels are
 *   vib_x, vib_y  radial acceleration, vib_z axial acceleration (3-axis accelerometer on the bearing housing)
 *   temperature   housing temperature relative to nominal (one unit ~ 6 °C)
 *   current       motor current envelope relative to rated current (one unit ~ 15% of rated)
 *   acoustic      contact microphone / acoustic-emission sensor
 * Every channel has roughly unit standard deviation over the population and a mean near zero, except
 * temperature, which averages about +0.9 (faulty machines run warm).
 * Extra channels (channels > 6) are further accelerometers mounted at fixed random orientations; fewer channels
 * keep the first ones.
 *
 * Classes and their signatures (the textbook vibration-analysis rules of thumb):
 *   0 normal        small residual 1x (shaft speed) vibration, broadband noise, nominal temperature and current
 *   1 imbalance     strong radial 1x, x and y in quadrature (a rotating force), weaker on stiffer supports;
 *                   1x modulation of the motor current; little axial vibration
 *   2 misalignment  strong 2x (and 3x) radial harmonics, high axial 1x/2x vibration, slight heating, 2x hum
 *   3 bearing_wear  impulse train at the outer-race defect frequency (BPFO ~ 3-3.6x shaft speed) ringing the
 *                   housing's structural resonance (150-220 Hz), strongest along the load axis and on acoustic;
 *                   friction heating
 *   4 overheating   overload: raised current and temperature, temperature still rising within the window,
 *                   slightly raised 1x from thermal growth
 * Fault severity varies per window (60-100% of the full signature), so mild faults come close to normal
 * operation: the classes are learnable but not trivially separable.
 *
 * Every device has its own fixed profile (the "drift" between devices): shaft speed (22-28 Hz), support
 * stiffness, resonance frequency, bearing geometry, accelerometer mounting rotation (up to 15°), per-channel gains and
 * offsets, ambient temperature and typical load. Per window the speed, load and ambient vary a little and every
 * channel gets sensor noise.
 *
 * Label skew: device d's class mix is (1 - labelSkew) * uniform + labelSkew * (its two dominant classes, weighted
 * w and 1 - w with w ~ U(0.5, 0.85)); labelSkew 0 is iid, 1 gives every device just two classes. The class
 * counts are the mix times samplesPerDevice rounded by largest remainder.
 *
 * The shared test set is drawn from the device population: every test window comes from a freshly drawn device
 * profile (no training device), with classes balanced (counts differ by at most one).
 *
 * Deterministic for a given seed; device d's profile and windows depend only on (seed, d, samplesPerDevice and
 * the shape/skew options), not on the number of devices, and the test set only on (seed, testSamples, shape).
 */
export const SENSOR_CLASSES: readonly string[] = [
  "normal",
  "imbalance",
  "misalignment",
  "bearing_wear",
  "overheating",
];
export const SENSOR_CHANNELS: readonly string[] = [
  "vib_x",
  "vib_y",
  "vib_z",
  "temperature",
  "current",
  "acoustic",
];
export const SENSOR_SAMPLE_RATE_HZ = 512;

export interface SensorOptions {
  readonly devices: number;
  readonly samplesPerDevice: number;
  readonly seed: number;
  /** Time steps per window. Default 32 (62.5 ms at 512 Hz, about 1.5 shaft revolutions). */
  readonly windowLength?: number;
  /** Channels per time step. Default 6 (SENSOR_CHANNELS). */
  readonly channels?: number;
  /** Size of the shared test set. Default 1000. */
  readonly testSamples?: number;
  /** 0 (every device has the same uniform class mix) .. 1 (every device has two classes). Default 0.5. */
  readonly labelSkew?: number;
  /** Multiplier on all sensor noise. Default 1. */
  readonly noise?: number;
  /** Multiplier on how much device profiles differ from the nominal machine (0 = identical devices). Default 1. */
  readonly drift?: number;
  /**
   * Size of a clean server-side set drawn like the test set (fresh population profiles, balanced classes) but
   * from a seed stream of its own, so it shares no window with the devices or the test set: FLTrust's root dataset
   * (core/robust/root.ts). Default 0 (none); nothing else depends on it.
   */
  readonly rootSamples?: number;
}

/** The fixed characteristics of one (simulated) device and its machine. */
export interface DeviceProfile {
  readonly shaftHz: number;
  /** Radial stiffness ratio: y-axis response relative to x (anisotropic supports). */
  readonly stiffnessRatio: number;
  readonly resonanceHz: number;
  /** Outer-race defect frequency as a multiple of shaft speed. */
  readonly bpfoRatio: number;
  /** Accelerometer mounting rotation (3x3, row-major). */
  readonly mounting: readonly number[];
  readonly gains: readonly number[];
  readonly offsets: readonly number[];
  readonly ambient: number;
  readonly load: number;
  /** Class probabilities of this device's windows (test profiles: uniform). */
  readonly classMix: readonly number[];
}

export interface SensorData {
  readonly devices: Dataset[];
  readonly test: Dataset;
  /** The server's root set, when `rootSamples` > 0. */
  readonly root?: Dataset;
  readonly profiles: DeviceProfile[];
}

const K = SENSOR_CLASSES.length;
/** Brings every channel to roughly unit standard deviation over the population. */
const OUTPUT_SCALE = 1.6;
const TAU = 2 * Math.PI;

function mixSeed(seed: number, stream: number, index: number): number {
  let h = Math.imul((seed >>> 0) ^ 0x85ebca6b, 0xcc9e2d51) ^ Math.imul(stream + 1, 0x1b873593);
  h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d) ^ Math.imul(index + 1, 0x297a2d39);
  h = Math.imul(h ^ (h >>> 12), 0x9e3779b1);
  return (h ^ (h >>> 16)) >>> 0;
}

function checkInt(name: string, v: unknown, min: number): number {
  if (typeof v !== "number" || !Number.isSafeInteger(v) || v < min) {
    fail("E_CONFIG_SENSORS", `sensors option ${name} must be an integer >= ${min}, got ${JSON.stringify(v)}`);
  }
  return v;
}

function checkReal(name: string, v: unknown, min: number, max: number): number {
  if (typeof v !== "number" || !(v >= min && v <= max)) {
    fail(
      "E_CONFIG_SENSORS",
      `sensors option ${name} must be a number in [${min}, ${max}], got ${JSON.stringify(v)}`,
    );
  }
  return v;
}

/** Rotation by `angle` about a random axis (Rodrigues), row-major 3x3. */
function randomRotation(rng: Rng, angle: number): number[] {
  let ax = rng.normal();
  let ay = rng.normal();
  let az = rng.normal();
  const norm = Math.hypot(ax, ay, az) || 1;
  ax /= norm;
  ay /= norm;
  az /= norm;
  const c = Math.cos(angle);
  const s = Math.sin(angle);
  const t = 1 - c;
  return [
    t * ax * ax + c,
    t * ax * ay - s * az,
    t * ax * az + s * ay,
    t * ax * ay + s * az,
    t * ay * ay + c,
    t * ay * az - s * ax,
    t * ax * az - s * ay,
    t * ay * az + s * ax,
    t * az * az + c,
  ];
}

function drawProfile(rng: Rng, drift: number, channels: number, classMix: readonly number[]): DeviceProfile {
  const lerp = (nominal: number, lo: number, hi: number) =>
    nominal + drift * (lo + (hi - lo) * rng.next() - nominal);
  const shaftHz = lerp(25, 22, 28);
  const stiffnessRatio = lerp(0.85, 0.6, 1.0);
  const resonanceHz = lerp(185, 150, 220);
  const bpfoRatio = lerp(3.3, 3.0, 3.6);
  const mounting = randomRotation(rng, drift * rng.next() * (Math.PI / 12));
  const gains: number[] = [];
  const offsets: number[] = [];
  for (let c = 0; c < channels; c++) {
    gains.push(Math.exp(drift * 0.1 * rng.normal()));
    // Accelerometer DC bias; temperature and current baselines come from ambient and load instead.
    offsets.push(c === 3 || c === 4 ? 0 : drift * 0.1 * rng.normal());
  }
  const ambient = drift * 0.35 * rng.normal();
  const load = drift * 0.3 * rng.normal();
  return {
    shaftHz,
    stiffnessRatio,
    resonanceHz,
    bpfoRatio,
    mounting,
    gains,
    offsets,
    ambient,
    load,
    classMix,
  };
}

/** Unit vectors of the extra accelerometers (channels 6, 7, ...), fixed per seed. */
function extraAxes(seed: number, channels: number): number[][] {
  const rng = new Rng(mixSeed(seed, 4, 0));
  const axes: number[][] = [];
  for (let c = 6; c < channels; c++) {
    const v = [rng.normal(), rng.normal(), rng.normal()];
    const n = Math.hypot(v[0], v[1], v[2]) || 1;
    axes.push(v.map((a) => a / n));
  }
  return axes;
}

/**
 * Write one window of class `label` for device `p` into out[offset .. offset + T*C).
 * Amplitudes are in units where the whole population has roughly unit spread per channel.
 */
function writeWindow(
  out: Float32Array,
  offset: number,
  p: DeviceProfile,
  label: number,
  rng: Rng,
  T: number,
  C: number,
  noise: number,
  axes: number[][],
): void {
  const dt = 1 / SENSOR_SAMPLE_RATE_HZ;
  const sev = 0.6 + 0.4 * rng.next();
  const on = (k: number) => (label === k ? sev : 0);
  const fr = p.shaftHz * (1 + 0.02 * rng.normal());
  const w = TAU * fr;
  const phi = TAU * rng.next();
  const phi2 = TAU * rng.next();
  const phiZ = TAU * rng.next();
  const phiI = TAU * rng.next();
  const load = p.load + 0.25 * rng.normal();
  const ambient = p.ambient + 0.1 * rng.normal();

  const a1 = 0.3 * (1 + 0.3 * rng.normal()) + 1.3 * on(1) + 0.2 * on(4) + 0.25 * on(2);
  const a2 = 0.08 + 1.1 * on(2);
  const a3 = 0.25 * on(2);
  const ax1 = 0.06 + 1.0 * on(2);
  const ax2 = 0.5 * on(2);
  const bearing = 2.4 * on(3) * (1 + 0.2 * rng.normal());
  const heat = 0.15 * on(1) + 0.4 * on(2) + 0.3 * on(3) + 2.5 * on(4);
  const ramp = 0.5 * on(4);
  const currentMod = 0.15 * on(1) + 0.15 * on(2);
  const current = load + 1.5 * on(4) + 0.1 * on(2) - 0.25;
  const hum = 0.25 * on(1) + 0.35 * on(2);

  // Bearing impulses: period 1 / (BPFO ratio * fr), first at a random time, 1% jitter (rolling-element slip).
  const impulses: number[] = [];
  if (bearing > 0) {
    const period = 1 / (p.bpfoRatio * fr);
    for (let t = -rng.next() * period; t < T * dt; t += period * (1 + 0.01 * rng.normal())) impulses.push(t);
  }
  const decay = 0.008; // s, ringing time constant of the housing resonance
  let firstImpulse = 0; // impulses that rang more than 10 time constants ago no longer matter (e^-10)
  const wr = TAU * p.resonanceHz;
  // Centred on the population mean (the faults' average heating and current draw).
  const temp0 = ambient + 0.3 * load + heat;
  const values = new Float64Array(6);

  for (let k = 0; k < T; k++) {
    const t = k * dt;
    let ring = 0;
    while (firstImpulse < impulses.length && t - impulses[firstImpulse] > 10 * decay) firstImpulse++;
    for (let i = firstImpulse; i < impulses.length && impulses[i] <= t; i++) {
      ring += Math.exp(-(t - impulses[i]) / decay) * Math.sin(wr * (t - impulses[i]));
    }
    ring *= bearing;
    const th = w * t + phi;
    // Machine frame: x, y radial (y is the load axis), z axial.
    const mx = a1 * Math.cos(th) + a2 * Math.cos(2 * th + phi2) + a3 * Math.cos(3 * th) + 0.45 * ring;
    const my =
      p.stiffnessRatio * (a1 * Math.sin(th) + a2 * Math.sin(2 * th + phi2) + a3 * Math.sin(3 * th)) + ring;
    const mz = ax1 * Math.cos(th + phiZ) + ax2 * Math.cos(2 * th + phiZ) + 0.2 * ring;
    const m = p.mounting;
    values[0] = m[0] * mx + m[1] * my + m[2] * mz + noise * 0.2 * rng.normal();
    values[1] = m[3] * mx + m[4] * my + m[5] * mz + noise * 0.2 * rng.normal();
    values[2] = m[6] * mx + m[7] * my + m[8] * mz + noise * 0.2 * rng.normal();
    values[3] = temp0 + ramp * (k / Math.max(1, T - 1) - 0.5) + noise * 0.05 * rng.normal();
    values[4] = current + currentMod * Math.cos(th + phiI) + noise * 0.05 * rng.normal();
    values[5] = 1.5 * ring + hum * Math.cos(2 * th + phi2) + noise * 0.25 * rng.normal();
    const row = offset + k * C;
    for (let c = 0; c < C; c++) {
      let v: number;
      if (c < 6) v = values[c];
      else {
        const u = axes[c - 6];
        v = u[0] * mx + u[1] * my + u[2] * mz + noise * 0.2 * rng.normal();
      }
      out[row + c] = OUTPUT_SCALE * (p.gains[c] * v + p.offsets[c]);
    }
  }
}

/** Class counts for `n` windows with mix `p`: floor of the expectation, then the largest remainders. */
function apportion(p: readonly number[], n: number): number[] {
  const raw = p.map((q) => q * n);
  const counts = raw.map(Math.floor);
  let left = n - counts.reduce((a, b) => a + b, 0);
  const order = raw.map((r, k) => [r - Math.floor(r), k]).sort((a, b) => b[0] - a[0] || a[1] - b[1]);
  for (let i = 0; left > 0; i = (i + 1) % K, left--) counts[order[i][1]]++;
  return counts;
}

function deviceMix(rng: Rng, skew: number): number[] {
  const first = rng.int(K);
  let second = rng.int(K - 1);
  if (second >= first) second++;
  const w = 0.5 + 0.35 * rng.next();
  const mix = new Array<number>(K).fill((1 - skew) / K);
  mix[first] += skew * w;
  mix[second] += skew * (1 - w);
  return mix;
}

/** Generate `devices` local datasets and a shared population test set (see the module comment). */
export function generateSensors(opts: SensorOptions): SensorData {
  const numDevices = checkInt("devices", opts.devices, 1);
  const perDevice = checkInt("samplesPerDevice", opts.samplesPerDevice, 1);
  if (typeof opts.seed !== "number" || !Number.isFinite(opts.seed)) {
    fail("E_CONFIG_SENSORS", `sensors option seed must be a number, got ${JSON.stringify(opts.seed)}`);
  }
  const seed = opts.seed;
  const T = checkInt("windowLength", opts.windowLength ?? 32, 4);
  const C = checkInt("channels", opts.channels ?? 6, 1);
  const testSamples = checkInt("testSamples", opts.testSamples ?? 1000, 1);
  const skew = checkReal("labelSkew", opts.labelSkew ?? 0.5, 0, 1);
  const noise = checkReal("noise", opts.noise ?? 1, 0, 100);
  const drift = checkReal("drift", opts.drift ?? 1, 0, 10);
  if (T * C * Math.max(perDevice, testSamples) > 2 ** 30) {
    fail(
      "E_CONFIG_SENSORS",
      `sensors windows of ${T} x ${C} x ${Math.max(perDevice, testSamples)} values are too large`,
    );
  }
  const axes = extraAxes(seed, C);
  const size = T * C;
  const shape = [T, C];
  const names = [...SENSOR_CLASSES];

  const devices: Dataset[] = [];
  const profiles: DeviceProfile[] = [];
  for (let d = 0; d < numDevices; d++) {
    const prng = new Rng(mixSeed(seed, 1, d));
    const mix = deviceMix(prng, skew);
    const profile = drawProfile(prng, drift, C, mix);
    profiles.push(profile);
    const srng = new Rng(mixSeed(seed, 2, d));
    const y = new Int32Array(perDevice);
    let i = 0;
    apportion(mix, perDevice).forEach((count, k) => y.fill(k, i, (i += count)));
    srng.shuffle(y);
    const x = new Float32Array(perDevice * size);
    for (let j = 0; j < perDevice; j++) writeWindow(x, j * size, profile, y[j], srng, T, C, noise, axes);
    devices.push(makeDataset(x, y, shape, K, names));
  }

  /** `count` windows from fresh population profiles, balanced classes, from seed stream `stream`. */
  const population = (stream: number, count: number): Dataset => {
    const trng = new Rng(mixSeed(seed, stream, 0));
    const uniform = new Array<number>(K).fill(1 / K);
    const ty = new Int32Array(count);
    for (let j = 0; j < count; j++) ty[j] = j % K;
    trng.shuffle(ty);
    const tx = new Float32Array(count * size);
    for (let j = 0; j < count; j++) {
      writeWindow(tx, j * size, drawProfile(trng, drift, C, uniform), ty[j], trng, T, C, noise, axes);
    }
    return makeDataset(tx, ty, shape, K, names);
  };
  const test = population(3, testSamples);
  const rootSamples = opts.rootSamples === undefined ? 0 : checkInt("rootSamples", opts.rootSamples, 0);
  return { devices, test, profiles, ...(rootSamples > 0 ? { root: population(4, rootSamples) } : {}) };
}
